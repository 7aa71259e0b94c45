"""Bi-encoder encoding benchmark: irflow's batching against ``SentenceTransformer.encode``, on CPU.

What it measures
    Passages per second of encoding the same ``--docs`` passages of TREC DL 2019
    (``../shared/data/dl19-bm25-top100``: the distinct documents of the BM25 top-100 run,
    shuffled with a fixed seed, the first ``--docs``; title and text as the workflow joins them)
    with all-MiniLM-L6-v2 (``max_seq_length`` 256, as in the demo config) on ``--threads`` CPU
    threads:

    library   ``SentenceTransformer.encode(texts, normalize_embeddings=True)`` with the default
              batch size (32; the library sorts by characters within the call).
    irflow    :func:`irflow.batching.encode_texts`, what ``encode_corpus``, ``dense_retrieve``
              and ``rerank_bi_encoder`` run: token-length sort, batches by a token budget
              (``batch_tokens``, default :data:`irflow.batching.DEFAULT_BATCH_TOKENS`),
              ``torch.inference_mode()``.

    The two alternate, ``--repeats`` times each after one warm-up; figures are medians. The
    embeddings of irflow must equal the library's within 1e-5 (the maximum absolute difference
    is reported). Achieved model FLOP/s is ``2 x non-embedding parameters x real tokens`` per
    second (attention's score and mix products left out, padding counted as waste), compared
    with the machine's fp32 ``torch.matmul`` rate. ``--sweep`` also times irflow at several
    token budgets (one run each, after the comparison).

How to run (from the repository root, with the project's virtual environment)
    . .venv/bin/activate
    HF_HUB_OFFLINE=1 python benchmarks/encoding.py              # a few minutes on 2 cores
    HF_HUB_OFFLINE=1 python benchmarks/encoding.py --sweep      # + batch_tokens sweep

    Other processes competing for the CPU distort wall times: the report records the load
    average around every measurement and the CPU time next to the wall time.

Where results go
    benchmarks/results/encoding.json   every figure, per run, machine and command line
    benchmarks/results/encoding.md     a short summary
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import resource
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DATA = ROOT.parent / "shared" / "data" / "dl19-bm25-top100"
MODEL = ROOT / "resources" / "models" / "all-MiniLM-L6-v2"
LIBRARY_BATCH_SIZE = 32  # SentenceTransformer.encode's default

sys.path.insert(0, str(Path(__file__).resolve().parent))
# The machine description, matmul peak and timing helper are the teacher benchmark's own.
from teacher_scoring import machine, matmul_flops, non_embedding_params, timed  # noqa: E402


def load_passages(n: int, seed: int) -> list[str]:
    """``n`` distinct DL19 candidate passages, shuffled, as ``irflow.data.doc_texts`` joins them."""
    docs: dict[str, str] = {}
    with open(DATA / "corpus.jsonl", encoding="utf-8") as handle:
        for line in handle:
            r = json.loads(line)
            docs[r["_id"]] = f"{r['title']} {r['text']}".strip() if r.get("title") else r["text"]
    ids: dict[str, None] = {}
    with open(DATA / "runs" / "bm25.trec", encoding="utf-8") as handle:
        for line in handle:
            ids[line.split()[2]] = None
    order = sorted(ids)
    random.Random(seed).shuffle(order)
    return [docs[d] for d in order[:n]]


def compare(
    texts: list[str], repeats: int, threads: int, max_length: int, budgets: list[int]
) -> dict[str, Any]:
    import torch
    from sentence_transformers import SentenceTransformer

    from irflow.batching import Counters, default_batch_tokens, encode_texts, token_lengths

    torch.set_num_threads(threads)
    model = SentenceTransformer(str(MODEL), device="cpu")
    model.max_seq_length = max_length
    tokens = sum(token_lengths(model, texts))
    params = non_embedding_params(model[0].auto_model)

    def library():
        return model.encode(
            texts,
            batch_size=LIBRARY_BATCH_SIZE,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )

    def ours(budget=None):
        return encode_texts(model, texts, batch_tokens=budget)

    # Warm-up (allocator, oneDNN kernels) on a slice, not timed.
    library_warm = model.encode(texts[:64], show_progress_bar=False)
    del library_warm
    encode_texts(model, texts[:64])
    runs: dict[str, list[dict[str, float]]] = {"library": [], "irflow": []}
    outputs: dict[str, np.ndarray] = {}
    for repeat in range(repeats):
        order = (("library", library), ("irflow", ours))
        for name, fn in order if repeat % 2 == 0 else order[::-1]:
            out, timing = timed(fn)
            outputs[name] = np.asarray(out, dtype=np.float32)
            timing["docs_per_s"] = len(texts) / timing["wall_s"]
            runs[name].append(timing)
            print(f"  {name} repeat {repeat}: {timing}", flush=True)
    counters = Counters()
    encode_texts(model, texts, counters=counters)
    result: dict[str, Any] = {
        "docs": len(texts),
        "max_seq_length": max_length,
        "non_embedding_params": params,
        "model_tokens": tokens,
        "max_abs_embedding_difference": float(np.abs(outputs["library"] - outputs["irflow"]).max()),
        "irflow_counters": counters.as_dict(),
        "irflow_batch_tokens": default_batch_tokens("cpu"),
        "library_batch_size": LIBRARY_BATCH_SIZE,
        "runs": runs,
    }
    for name in ("library", "irflow"):
        wall = statistics.median(r["wall_s"] for r in runs[name])
        cpu = statistics.median(r["cpu_s"] for r in runs[name])
        result[name] = {
            "median_wall_s": wall,
            "median_cpu_s": cpu,
            "median_docs_per_s": len(texts) / wall,
            "model_flop_per_s": 2 * params * tokens / wall,
        }
    result["speedup"] = result["library"]["median_wall_s"] / result["irflow"]["median_wall_s"]
    result["speedup_cpu_time"] = (
        result["library"]["median_cpu_s"] / result["irflow"]["median_cpu_s"]
    )
    result["sweep"] = []
    for budget in budgets:
        counters = Counters()
        _, timing = timed(
            lambda b=budget, c=counters: encode_texts(model, texts, batch_tokens=b, counters=c)
        )
        timing.update(
            batch_tokens=budget,
            docs_per_s=len(texts) / timing["wall_s"],
            batches=counters.batches,
            padded_tokens=counters.padded_tokens,
        )
        print(f"  sweep {timing}", flush=True)
        result["sweep"].append(timing)
    return result


def write_markdown(report: dict[str, Any], path: Path) -> None:
    m = report["machine"]
    peak = report["matmul"]["median_flop_per_s"]
    res = report["compare"]
    c = res["irflow_counters"]
    lines = [
        "# Encoding benchmark: irflow batching vs `SentenceTransformer.encode` (CPU)",
        "",
        f"Generated {report['generated']} by `benchmarks/encoding.py` "
        f"(`{' '.join(report['argv'])}`).",
        "",
        "## Machine",
        "",
        f"- CPU: {m['cpu_model']}, {m['logical_cpus']} logical CPUs ({m['usable_cpus']} usable), "
        f"AVX-512: {'yes' if m['avx512'] else 'no'}; memory {m['memory_gb']} GB",
        f"- torch {m['torch']} ({m['torch_threads']} threads), transformers "
        f"{m['transformers']}, sentence-transformers {m['sentence_transformers']}, "
        f"Python {m['python']}",
        f"- fp32 `torch.matmul` 2048x2048 on {m['torch_threads']} threads: "
        f"{peak / 1e9:.1f} GFLOP/s (median of 10; best "
        f"{report['matmul']['best_flop_per_s'] / 1e9:.1f})",
        f"- Load average (1, 5, 15 min) before / after: {report['load_before']} / "
        f"{report['load_after']} (other work sharing the CPUs inflates wall times)",
        "",
        "## Throughput",
        "",
        f"{res['docs']} distinct TREC DL 2019 BM25-candidate passages, shuffled with seed "
        f"{report['seed']}; all-MiniLM-L6-v2 (max_seq_length {res['max_seq_length']}), "
        f"{res['model_tokens']} real tokens; median of {report['repeats']} alternating runs "
        f"after a warm-up. Library: `encode(batch_size={res['library_batch_size']}, "
        "normalize_embeddings=True)`. irflow: `irflow.batching.encode_texts` (token-length "
        f"sort, batch_tokens {res['irflow_batch_tokens']}, inference mode).",
        "",
        "| method | docs/s | wall s | CPU s | model GFLOP/s | share of matmul peak | "
        "max abs embedding diff | speedup (wall) | speedup (CPU time) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in ("library", "irflow"):
        r = res[name]
        lines.append(
            f"| {name} | {r['median_docs_per_s']:.1f} | {r['median_wall_s']:.2f} | "
            f"{r['median_cpu_s']:.2f} | {r['model_flop_per_s'] / 1e9:.1f} | "
            f"{r['model_flop_per_s'] / peak:.0%} | "
            + (
                f"{res['max_abs_embedding_difference']:.2e} | **{res['speedup']:.2f}x** | "
                f"{res['speedup_cpu_time']:.2f}x |"
                if name == "irflow"
                else " | | |"
            )
        )
    lines += [
        "",
        f"irflow ran {c['model_inputs']} inputs in {c['batches']} batches, {c['tokens']} real / "
        f"{c['padded_tokens']} padded tokens.",
    ]
    if res["sweep"]:
        lines += [
            "",
            "## batch_tokens sweep (irflow, one run each)",
            "",
            "| batch_tokens | docs/s | wall s | batches | padded tokens | load before |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {s['batch_tokens']} | {s['docs_per_s']:.1f} | {s['wall_s']:.2f} | "
            f"{s['batches']} | {s['padded_tokens']} | {s['load_1min_before']:.2f} |"
            for s in res["sweep"]
        ]
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--sweep", action="store_true", help="also sweep batch_tokens")
    parser.add_argument("--budgets", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(ROOT / "src"))
    if not MODEL.is_dir():
        sys.exit(f"{MODEL} is missing: run scripts/setup.sh")
    texts = load_passages(args.docs, args.seed)
    report: dict[str, Any] = {
        "generated": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "argv": [Path(sys.argv[0]).as_posix(), *sys.argv[1:]],
        "seed": args.seed,
        "repeats": args.repeats,
        "load_before": [round(x, 2) for x in os.getloadavg()],
        "machine": machine(args.threads),
    }
    print("matmul", flush=True)
    report["matmul"] = matmul_flops(args.threads)
    print("compare", flush=True)
    report["compare"] = compare(
        texts, args.repeats, args.threads, args.max_length, args.budgets if args.sweep else []
    )
    report["load_after"] = [round(x, 2) for x in os.getloadavg()]
    report["peak_rss_mb_benchmark_process"] = (
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "encoding.json").write_text(json.dumps(report, indent=2) + "\n")
    write_markdown(report, args.out / "encoding.md")
    res = report["compare"]
    print(
        f"library {res['library']['median_docs_per_s']:.1f} docs/s, irflow "
        f"{res['irflow']['median_docs_per_s']:.1f} docs/s, speedup {res['speedup']:.2f}x, "
        f"max diff {res['max_abs_embedding_difference']:.1e}"
    )


if __name__ == "__main__":
    main()
