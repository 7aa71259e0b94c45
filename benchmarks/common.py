"""What the benchmark scripts share: where things are, the description of the machine, timing
(in this process and in a fresh one), the DL19 files they read, and how results are written.

Imported by the scripts beside it (``python benchmarks/<name>.py`` puts this folder first on
``sys.path``) and by their child processes (:func:`run_child` puts it on ``PYTHONPATH``). Only
the standard library is imported at module level, so a child or ``dag.py`` pays for torch only
where it uses it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DATA = ROOT.parent / "shared" / "data" / "dl19-bm25-top100"
MODEL = ROOT / "resources" / "models" / "all-MiniLM-L6-v2"


# ---------------------------------------------------------------------------------------------
# Setup and the report's frame
# ---------------------------------------------------------------------------------------------
def prepare() -> None:
    """Hub offline, irflow importable from ``src/``, and the benchmark model present (else
    exit naming it)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(ROOT / "src"))
    if not MODEL.is_dir():
        sys.exit(f"{MODEL} is missing: run scripts/setup.sh")


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages: other work on the CPUs inflates wall times."""
    return [round(x, 2) for x in os.getloadavg()]


def new_report(**fields: Any) -> dict[str, Any]:
    """A report that starts with when and how (command line) it was made, then ``fields``."""
    return {"generated": now(), "argv": [Path(sys.argv[0]).as_posix(), *sys.argv[1:]], **fields}


def write_results(out: Path, name: str, report: dict[str, Any], markdown: str) -> None:
    """``<out>/<name>.json`` (every figure) and ``<out>/<name>.md`` (the summary), each written
    to a temporary name and renamed, so an interrupted run leaves the previous results whole."""
    out.mkdir(parents=True, exist_ok=True)
    for path, text in (
        (out / f"{name}.json", json.dumps(report, indent=2) + "\n"),
        (out / f"{name}.md", markdown),
    ):
        partial = path.with_name(f".{path.name}.partial")
        partial.write_text(text)
        os.replace(partial, path)


# ---------------------------------------------------------------------------------------------
# The machine
# ---------------------------------------------------------------------------------------------
def _cpuinfo() -> tuple[str, str]:
    """The CPU's model name and its flags line (empty where /proc/cpuinfo is not readable)."""
    model, flags = platform.processor() or "unknown", ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            info = handle.read().splitlines()
    except OSError:
        return model, flags
    model = next((ln.split(":", 1)[1].strip() for ln in info if ln.startswith("model name")), model)
    flags = next((ln for ln in info if ln.startswith("flags")), "")
    return model, flags


def machine(threads: int | None = None, device: str | None = None) -> dict[str, Any]:
    """CPU, memory and Python; with ``device`` the GPU and the device the benchmark ran on; with
    ``threads`` the torch thread count and the versions of the model libraries."""
    cpu_model, flags = _cpuinfo()
    info: dict[str, Any] = {
        "cpu_model": cpu_model,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "avx512": "avx512f" in flags,
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1),
    }
    if device is not None:
        import torch

        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        info["device"] = device
    info.update(os=platform.platform(), python=platform.python_version())
    if threads is not None:
        import numpy
        import sentence_transformers
        import torch
        import transformers

        info.update(
            torch=torch.__version__,
            torch_threads=threads,
            transformers=transformers.__version__,
            sentence_transformers=sentence_transformers.__version__,
            numpy=numpy.__version__,
        )
    return info


def machine_markdown(report: dict[str, Any], device_label: str = "device") -> list[str]:
    """The report's '## Machine' section (for the benchmarks that ran torch), as lines."""
    m = report["machine"]
    cpu = (
        f"- CPU: {m['cpu_model']}, {m['logical_cpus']} logical CPUs ({m['usable_cpus']} usable), "
        f"AVX-512: {'yes' if m['avx512'] else 'no'}; memory {m['memory_gb']} GB"
    )
    if "device" in m:
        cpu += f"; GPU: {m['gpu'] or 'none'}; {device_label}: {m['device']}"
    lines = [
        "## Machine",
        "",
        cpu,
        f"- torch {m['torch']} ({m['torch_threads']} threads), transformers "
        f"{m['transformers']}, sentence-transformers {m['sentence_transformers']}, "
        f"Python {m['python']}",
    ]
    if "matmul" in report:
        matmul = report["matmul"]
        lines.append(
            f"- fp32 `torch.matmul` 2048x2048 on {m['torch_threads']} threads: "
            f"{matmul['median_flop_per_s'] / 1e9:.1f} GFLOP/s (median of 10; best "
            f"{matmul['best_flop_per_s'] / 1e9:.1f})"
        )
    lines.append(
        f"- Load average (1, 5, 15 min) before / after: {report['load_before']} / "
        f"{report['load_after']} (other work sharing the CPUs inflates wall times)"
    )
    return lines


def title_markdown(title: str, script: str, report: dict[str, Any]) -> list[str]:
    """The report's title and the line saying when and by which command it was made."""
    return [
        f"# {title}",
        "",
        f"Generated {report['generated']} by `benchmarks/{script}` (`{' '.join(report['argv'])}`).",
        "",
    ]


def matmul_flops(threads: int, size: int = 2048, repeats: int = 10) -> dict[str, float]:
    """The machine's fp32 ``torch.matmul`` rate on ``threads`` threads: what the models'
    achieved FLOP/s are compared with."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    flop = 2 * size**3
    return {
        "size": size,
        "median_flop_per_s": flop / statistics.median(times),
        "best_flop_per_s": flop / min(times),
    }


def non_embedding_params(model) -> int:
    """Parameters outside the embedding tables: those every token's forward pass multiplies."""
    return sum(
        param.numel() for name, param in model.named_parameters() if "embeddings" not in name
    )


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------
def timed(fn: Callable[[], Any]) -> tuple[Any, dict[str, float]]:
    """``fn()`` and its wall time, this process's CPU time and the 1-minute load before it."""
    load_before = os.getloadavg()[0]
    cpu0, wall0 = time.process_time(), time.perf_counter()
    out = fn()
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return out, {"wall_s": wall, "cpu_s": cpu, "load_1min_before": load_before}


def alternating_runs(
    arms: dict[str, Callable[[], Any]], repeats: int, count: int, rate: str, label: str = ""
) -> tuple[dict[str, list[dict[str, float]]], dict[str, Any]]:
    """Time every arm ``repeats`` times, reversing their order every other repeat (a change in
    the machine's load then falls on all of them). Each run's timing also gets ``rate``:
    ``count`` items per wall second. Returns the runs of every arm and its last output."""
    names = list(arms)
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    outputs: dict[str, Any] = {}
    for repeat in range(repeats):
        for name in names if repeat % 2 == 0 else names[::-1]:
            outputs[name], timing = timed(arms[name])
            timing[rate] = count / timing["wall_s"]
            runs[name].append(timing)
            print(f"  {label}{name} repeat {repeat}: {timing}", flush=True)
    return runs, outputs


def library_vs_irflow(
    runs: dict[str, list[dict[str, float]]], count: int, rate: str, flop: dict[str, float]
) -> dict[str, Any]:
    """Median wall and CPU seconds, items per second and achieved model FLOP/s (``flop``: the
    model FLOP of one run) of the 'library' and 'irflow' arms, and irflow's speedups."""
    result: dict[str, Any] = {}
    for name in ("library", "irflow"):
        wall = statistics.median(r["wall_s"] for r in runs[name])
        result[name] = {
            "median_wall_s": wall,
            "median_cpu_s": statistics.median(r["cpu_s"] for r in runs[name]),
            f"median_{rate}": count / wall,
            "model_flop_per_s": flop[name] / wall,
        }
    library, irflow = result["library"], result["irflow"]
    result["speedup"] = library["median_wall_s"] / irflow["median_wall_s"]
    result["speedup_cpu_time"] = library["median_cpu_s"] / irflow["median_cpu_s"]
    return result


def vm_hwm_mb() -> float:
    """This process's own peak resident memory (``VmHWM``; ``ru_maxrss`` of a child would
    include its parent's RSS at fork time)."""
    with open("/proc/self/status", encoding="utf-8") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1024


def run_child(code: str, *args: str, what: str) -> dict[str, Any]:
    """Run ``code`` in a fresh Python process (hub offline; irflow from ``src/`` and this module
    importable) with ``args``; its last line of output is a JSON object, returned."""
    pythonpath = [str(ROOT / "src"), str(Path(__file__).resolve().parent)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(pythonpath)}
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------
# DL19 (BEIR layout, with the BM25 top-100 run)
# ---------------------------------------------------------------------------------------------
def _jsonl(path: Path):
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            yield json.loads(line)


def read_corpus() -> list[tuple[str, str, str]]:
    """(doc id, title or '', text) of every document."""
    return [(r["_id"], r.get("title") or "", r["text"]) for r in _jsonl(DATA / "corpus.jsonl")]


def doc_text(title: str, text: str) -> str:
    """Title and text joined as ``irflow.data.doc_texts`` joins them."""
    return f"{title} {text}".strip() if title else text


def read_queries() -> dict[str, str]:
    return {r["_id"]: r["text"] for r in _jsonl(DATA / "queries.jsonl")}


def read_qrels() -> dict[str, dict[str, int]]:
    """{query id: {doc id: label}} of the test split."""
    qrels: dict[str, dict[str, int]] = {}
    with open(DATA / "qrels" / "test.tsv", encoding="utf-8") as handle:
        next(handle)  # the header
        for line in handle:
            qid, docid, label = line.split()
            qrels.setdefault(qid, {})[docid] = int(label)
    return qrels


def read_run() -> list[tuple[str, str, float]]:
    """(query id, doc id, score) of the BM25 run, in the file's order."""
    with open(DATA / "runs" / "bm25.trec", encoding="utf-8") as handle:
        return [(qid, docid, float(score)) for qid, _, docid, _, score, _ in map(str.split, handle)]


def write_corpus_and_queries(
    folder: Path, docs: list[tuple[str, str, str]], queries: dict[str, str]
) -> None:
    """``corpus.parquet`` and ``queries.parquet`` (irflow's schemas; queries sorted by id)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from irflow.data import CORPUS_SCHEMA, QUERIES_SCHEMA

    pq.write_table(
        pa.table({k: [d[i] for d in docs] for i, k in enumerate(CORPUS_SCHEMA.names)},
                 schema=CORPUS_SCHEMA),
        folder / "corpus.parquet",
    )  # fmt: skip
    ids = sorted(queries)
    pq.write_table(
        pa.table({"query_id": ids, "text": [queries[q] for q in ids]}, schema=QUERIES_SCHEMA),
        folder / "queries.parquet",
    )
