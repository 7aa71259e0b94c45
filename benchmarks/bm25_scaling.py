"""BM25 first stage at scale: indexing time and peak memory, and query-sharded retrieval.

What it measures
    A synthetic BEIR-like corpus, seeded: a vocabulary of ``--vocab`` pseudo-words (lower-case
    letter strings, numbered by rank) with Zipf frequencies (exponent ``--zipf``), documents of
    30 to 90 words (uniform), no titles, written as ``corpus.parquet`` in irflow's corpus schema
    (``irflow.data.CORPUS_SCHEMA``) for every size in ``--sizes``; ``--queries`` queries of 2 to
    6 words from the same distribution with the 100 most frequent words left out (they act as
    stop words), in the queries schema.

    Indexing: ``irflow.bm25.build_index`` (streams the Parquet in record batches; the workflow's
    implementation) and ``irflow.bm25.build_index_reference`` (bm25s's in-memory ``BM25.index``
    on token-id lists; what the workflow ran before) for the sizes in ``--reference-sizes``,
    each in a fresh Python process: wall time, CPU time and the process's peak RSS (VmHWM).
    Where both ran, their index folders are compared file by file (they must be
    byte-identical).

    Retrieval at the largest size: ``--queries`` queries at depth ``--depth`` in one job
    (``irflow.bm25.retrieve`` and ``write_trec_run``, as rule bm25_retrieve) and in
    ``--shards`` query shards (``retrieve_shard``; the shard processes run concurrently, as
    Snakemake would schedule them on one node, then ``merge_runs``), one thread each; every
    process's wall time (index loading included) and peak RSS, the whole sharded wall time
    including the merge, and whether the merged run is byte-identical to the one-job run.

How to run (from the repository root, with the project's virtual environment)
    . .venv/bin/activate
    python benchmarks/bm25_scaling.py          # ~10 min on 2 loaded cores
    python benchmarks/bm25_scaling.py --sizes 100000 --reference-sizes 100000   # ~1 min

    Wall times depend on what else runs on the machine: the report records the load average
    around every measurement and the CPU time next to the wall time.

Where results go
    benchmarks/results/bm25_scaling.json   every figure, machine and command line
    benchmarks/results/bm25_scaling.md     a short summary
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import (
    RESULTS,
    ROOT,
    load_average,
    machine,
    new_report,
    run_child,
    title_markdown,
    write_results,
)

sys.path.insert(0, str(ROOT / "src"))

LETTERS = np.array(list("abcdefghijklmnopqrstuvwxyz"))


# ---------------------------------------------------------------------------------------------
# The synthetic collection
# ---------------------------------------------------------------------------------------------
def pseudo_words(count: int) -> list[str]:
    """``count`` distinct lower-case letter strings, short ones for frequent ranks: rank r is
    r + 26 + 26**2 written in base 26 with letters (three letters and up)."""
    words = []
    for rank in range(count):
        n, letters = rank + 26 + 26 * 26, []
        while n:
            n, digit = divmod(n, 26)
            letters.append(LETTERS[digit])
        words.append("".join(reversed(letters)))
    return words


def zipf_cdf(vocab: int, exponent: float) -> np.ndarray:
    weights = 1.0 / np.arange(1, vocab + 1, dtype=np.float64) ** exponent
    cdf = np.cumsum(weights)
    return cdf / cdf[-1]


def write_collection(
    folder: Path, docs: int, queries: int, vocab: int, exponent: float, seed: int
) -> dict[str, Any]:
    """``corpus.parquet`` and ``queries.parquet`` of one size (the first ``docs`` documents of
    one seeded stream, so a smaller corpus is a prefix of a larger one)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from irflow.data import CORPUS_SCHEMA, QUERIES_SCHEMA

    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    words = pseudo_words(vocab)
    cdf = zipf_cdf(vocab, exponent)
    rng = np.random.default_rng(seed)
    batch, tokens, width = 100_000, 0, len(str(docs - 1))
    with pq.ParquetWriter(folder / "corpus.parquet", CORPUS_SCHEMA, compression="zstd") as out:
        for start in range(0, docs, batch):
            n = min(batch, docs - start)
            lengths = rng.integers(30, 91, size=n)
            ranks = np.searchsorted(cdf, rng.random(int(lengths.sum())), side="right").tolist()
            bounds = np.concatenate([[0], np.cumsum(lengths)]).tolist()
            spans = zip(bounds[:-1], bounds[1:], strict=True)
            texts = [" ".join(map(words.__getitem__, ranks[a:b])) for a, b in spans]
            ids = [f"doc{i:0{width}d}" for i in range(start, start + n)]
            table = pa.table(
                {"doc_id": ids, "title": [""] * n, "text": texts}, schema=CORPUS_SCHEMA
            )
            out.write_table(table)
            tokens += int(lengths.sum())
    qrng = np.random.default_rng(seed + 1)
    qids, qtexts = [], []
    head = cdf[99]  # leave the 100 most frequent words out of the queries
    for i in range(queries):
        draws = head + (1 - head) * qrng.random(int(qrng.integers(2, 7)))
        qids.append(f"q{i:03d}")
        qtexts.append(" ".join(words[r] for r in np.searchsorted(cdf, draws, side="right")))
    pq.write_table(
        pa.table({"query_id": qids, "text": qtexts}, schema=QUERIES_SCHEMA),
        folder / "queries.parquet",
    )
    return {
        "docs": docs,
        "words": tokens,
        "corpus_parquet_mb": (folder / "corpus.parquet").stat().st_size / 1e6,
        "generate_s": time.perf_counter() - started,
    }


def cached_collection(cache: Path | None, folder: Path, size: int, args) -> dict[str, Any]:
    """The collection of ``size`` in ``folder``: generated, or linked from ``cache`` where one
    with the same settings was generated before (generation is seeded, so it is the same)."""
    settings = {"docs": size, "queries": args.queries, "vocab": args.vocab, "zipf": args.zipf,
                "seed": args.seed}  # fmt: skip
    if cache is None:
        return write_collection(folder, size, args.queries, args.vocab, args.zipf, args.seed)
    kept = cache / "-".join(f"{k}{v}" for k, v in settings.items())
    meta = kept / "collection.json"
    if not meta.is_file():
        stats = write_collection(kept, size, args.queries, args.vocab, args.zipf, args.seed)
        meta.write_text(json.dumps({"settings": settings, "stats": stats}, indent=2) + "\n")
    stats = {**json.loads(meta.read_text())["stats"], "reused_from": str(kept)}
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("corpus.parquet", "queries.parquet"):
        os.symlink(kept / name, folder / name)
    return stats


# ---------------------------------------------------------------------------------------------
# Measurements, each in a fresh process
# ---------------------------------------------------------------------------------------------
INDEX_CHILD = """
import json, sys, time
from common import vm_hwm_mb
from irflow import bm25
build = {"streaming": bm25.build_index, "reference": bm25.build_index_reference}[sys.argv[1]]
t0, c0 = time.perf_counter(), time.process_time()
build(sys.argv[2], sys.argv[3], {})
print(json.dumps({"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
                  "peak_rss_mb": vm_hwm_mb()}))
"""

RETRIEVE_CHILD = """
import json, sys, time
from common import vm_hwm_mb
from irflow import bm25
from irflow.data import read_queries
from irflow.io import write_trec_run
index, queries, out, depth, shard, shards = sys.argv[1:]
t0, c0 = time.perf_counter(), time.process_time()
queries = read_queries(queries)
if shard == "-":
    run = bm25.retrieve(index, queries, int(depth))
else:
    run = bm25.retrieve_shard(index, queries, int(depth), int(shard), int(shards))
write_trec_run(out, run, tag="bm25")
print(json.dumps({"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
                  "peak_rss_mb": vm_hwm_mb(), "queries": len(run)}))
"""


def child_env() -> dict[str, str]:
    pythonpath = os.pathsep.join([str(ROOT / "src"), str(Path(__file__).resolve().parent)])
    return {**os.environ, "PYTHONPATH": pythonpath}


def index_once(kind: str, corpus: Path, out: Path) -> dict[str, Any]:
    load = load_average()
    result = run_child(INDEX_CHILD, kind, str(corpus), str(out), what=f"{kind} index")
    result.update(load_before=load, load_after=load_average())
    result["index_mb"] = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 1e6
    print(f"  {kind}: {result}", flush=True)
    return result


def same_files(a: Path, b: Path) -> bool:
    files = sorted(str(p.relative_to(a)) for p in a.rglob("*") if p.is_file())
    other = sorted(str(p.relative_to(b)) for p in b.rglob("*") if p.is_file())
    _, mismatch, errors = filecmp.cmpfiles(a, b, files, shallow=False)
    return files == other and not mismatch and not errors


def retrieval(index: Path, queries: Path, work: Path, depth: int, shards: int) -> dict[str, Any]:
    from irflow import bm25

    load = load_average()
    one = work / "one.trec"
    single = run_child(RETRIEVE_CHILD, str(index), str(queries), str(one), str(depth), "-", "1",
                       what="one-job retrieval")  # fmt: skip
    print(f"  1 job: {single}", flush=True)
    started = time.perf_counter()
    procs = []
    for i in range(shards):
        out = work / f"shard-{i}-of-{shards}.trec"
        args = [str(index), str(queries), str(out), str(depth), str(i), str(shards)]
        procs.append((out, subprocess.Popen(
            [sys.executable, "-c", RETRIEVE_CHILD, *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env(),
        )))  # fmt: skip
    per_shard = []
    for _out, proc in procs:
        stdout, stderr = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"shard retrieval failed:\n{stderr[-4000:]}")
        per_shard.append(json.loads(stdout.strip().splitlines()[-1]))
    merge_started = time.perf_counter()
    bm25.merge_runs([str(out) for out, _ in procs], str(work / "merged.trec"))
    finished = time.perf_counter()
    sharded = {
        "shards": shards,
        "wall_s": finished - started,
        "merge_s": finished - merge_started,
        "cpu_s": sum(s["cpu_s"] for s in per_shard),
        "per_shard": per_shard,
        "merged_identical_to_one_job": (work / "merged.trec").read_bytes() == one.read_bytes(),
    }
    print(f"  {shards} shards: {sharded}", flush=True)
    return {
        "depth": depth,
        "run_lines": sum(1 for _ in open(one, encoding="utf-8")),
        "one_job": single,
        "sharded": sharded,
        "load_before": load,
        "load_after": load_average(),
    }


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------
USER_BASELINE = {  # the figures the user measured with the in-memory implementation
    100_000: {"wall_s": 9.9, "peak_rss_mb": 668},
    1_000_000: {"wall_s": 111, "peak_rss_mb": 4678},
}


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = title_markdown("BM25 indexing and query-sharded retrieval at scale",
                           "bm25_scaling.py", report)  # fmt: skip
    lines += [
        "## Machine",
        "",
        f"- CPU: {m['cpu_model']}, {m['logical_cpus']} logical CPUs ({m['usable_cpus']} usable); "
        f"memory {m['memory_gb']} GB; Python {m['python']}, bm25s {report['bm25s']}, "
        f"numpy {report['numpy']}, pyarrow {report['pyarrow']}",
        f"- Load average (1, 5, 15 min) before / after: {report['load_before']} / "
        f"{report['load_after']}. The machine is shared with other work: wall times are "
        "inflated where the load exceeds the cores; CPU times are given beside them.",
        "",
        "## Collection",
        "",
        f"Synthetic, seed {report['seed']}: {report['vocab']:,} pseudo-words with Zipf "
        f"frequencies (exponent {report['zipf']}), 30 to 90 words a document, no titles; "
        f"{report['queries']} queries of 2 to 6 words (the 100 most frequent words left out).",
        "",
        "## Indexing (fresh process each; default settings: Lucene BM25, k1 0.9, b 0.4, "
        "English stop words, Snowball stemmer)",
        "",
        "| documents | implementation | wall s | CPU s | peak RSS MB | MB / M docs "
        "| index MB | byte-identical |",
        "|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for size in report["sizes"]:
        entry = report["indexing"][str(size)]
        for kind, label in (("streaming", "streaming (new)"), ("reference", "in-memory (old)")):
            if kind not in entry:
                continue
            r = entry[kind]
            same = entry.get("identical")
            lines.append(
                f"| {size:,} | {label} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | "
                f"{r['peak_rss_mb']:,.0f} | {r['peak_rss_mb'] / (size / 1e6):,.0f} | "
                f"{r['index_mb']:,.0f} | {'—' if same is None else ('yes' if same else 'NO')} |"
            )
        base = USER_BASELINE.get(size)
        if base:
            lines.append(
                f"| {size:,} | in-memory (old), user's figures | {base['wall_s']} | | "
                f"{base['peak_rss_mb']:,} | {base['peak_rss_mb'] / (size / 1e6):,.0f} | | |"
            )
    r = report["retrieval"]
    one, sharded = r["one_job"], r["sharded"]
    shard_walls = [s["wall_s"] for s in sharded["per_shard"]]
    lines += [
        "",
        f"## Retrieval ({report['queries']} queries, depth {r['depth']}, "
        f"{report['sizes'][-1]:,} documents, 1 thread a job)",
        "",
        "| jobs | wall s | CPU s (all jobs) | peak RSS MB a job | merged = one job |",
        "|---:|---:|---:|---:|---|",
        f"| 1 | {one['wall_s']:.1f} | {one['cpu_s']:.1f} | {one['peak_rss_mb']:,.0f} | |",
        f"| {sharded['shards']} shards, concurrent | {sharded['wall_s']:.1f} "
        f"(shards {min(shard_walls):.1f}–{max(shard_walls):.1f}, merge "
        f"{sharded['merge_s']:.2f}) | {sharded['cpu_s']:.1f} | "
        f"{max(s['peak_rss_mb'] for s in sharded['per_shard']):,.0f} | "
        f"{'byte-identical' if sharded['merged_identical_to_one_job'] else 'DIFFERENT'} |",
        "",
        f"The run has {r['run_lines']:,} lines. Every job loads the whole index (its load time "
        "is in each job's wall time), so shards divide the scoring, not the memory; on "
        f"{m['usable_cpus']} usable cores at most {m['usable_cpus']} shards run at once.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument(
        "--reference-sizes",
        type=int,
        nargs="*",
        default=[100_000, 1_000_000],
        help="sizes at which the old in-memory implementation also runs",
    )
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--depth", type=int, default=1000)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=500_000)
    parser.add_argument("--zipf", type=float, default=1.1)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: temp)")
    parser.add_argument(
        "--collections",
        type=Path,
        default=None,
        help="keep the generated collections here and reuse them when their settings match",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    import bm25s
    import pyarrow

    sizes = sorted(args.sizes)
    report = new_report(
        machine=machine(), bm25s=bm25s.__version__, numpy=np.__version__,
        pyarrow=pyarrow.__version__, sizes=sizes, queries=args.queries, vocab=args.vocab,
        zipf=args.zipf, seed=args.seed, load_before=load_average(), collections={},
        indexing={},
    )  # fmt: skip
    with tempfile.TemporaryDirectory(dir=args.work) as scratch:
        work = Path(scratch)
        for size in sizes:
            folder = work / str(size)
            print(f"{size:,} documents", flush=True)
            report["collections"][str(size)] = collection = cached_collection(
                args.collections, folder, size, args
            )
            print(f"  collection: {collection}", flush=True)
            corpus = folder / "corpus.parquet"
            entry = report["indexing"][str(size)] = {}
            entry["streaming"] = index_once("streaming", corpus, folder / "new")
            if size in args.reference_sizes:
                entry["reference"] = index_once("reference", corpus, folder / "old")
                entry["identical"] = same_files(folder / "old", folder / "new")
                print(f"  byte-identical: {entry['identical']}", flush=True)
                shutil.rmtree(folder / "old")
            if size != sizes[-1]:
                continue
            report["retrieval"] = retrieval(
                folder / "new", folder / "queries.parquet", folder, args.depth, args.shards
            )
    report["load_after"] = load_average()
    write_results(args.out, "bm25_scaling", report, markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
