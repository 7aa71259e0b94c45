"""Teacher-scoring benchmark: irflow's scorer against the plain library call, on CPU.

What it measures
    Pairs per second of scoring the same ~1,000 (query, BM25 candidate) pairs of TREC DL 2019
    (``../shared/data/dl19-bm25-top100``: every (query, document) of the BM25 run, shuffled with
    a fixed seed, the first ``--pairs``) with all-MiniLM-L6-v2 on ``--threads`` CPU threads:

    bi-encoder     (a) the library default: ``SentenceTransformer.encode(queries)`` and
                   ``encode(documents)`` (batch size 32, normalised), then the row-wise dot
                   product; (b) ``irflow.training_data.teacher.BiEncoderTeacher.score``.
    cross-encoder  ``CrossEncoder(<MiniLM path>)``: a MiniLM body with a *randomly initialised*
                   one-label head (fine for throughput, meaningless scores); (a)
                   ``CrossEncoder.predict(pairs, activation_fn=Identity())`` (batch size 32);
                   (b) ``CrossEncoderTeacher.score``.

    (a) and (b) alternate, ``--repeats`` times each after one warm-up; the figures are medians.
    Scores of (b) must equal (a)'s within 1e-4 (the maximum difference is reported).

    Achieved model FLOP/s: ``2 x non-embedding parameters x tokens`` per second, where tokens
    are the real (unpadded) tokens of the texts the method runs through the model; the
    approximation leaves out attention's score and mix products (``4 x layers x hidden x
    sequence length`` per token, a few percent at these lengths) and counts padding as waste.
    It is compared with the machine's fp32 ``torch.matmul`` rate (2048 x 2048, same threads).

    Peak memory: the whole scoring stage (``score_shard`` on a samples Parquet, streaming in
    chunks) in a fresh subprocess for 1k and 4k pairs; peak RSS of that process.

How to run (from the repository root, with the project's virtual environment)
    . .venv/bin/activate
    HF_HUB_OFFLINE=1 python benchmarks/teacher_scoring.py            # ~10 min on 2 cores
    HF_HUB_OFFLINE=1 python benchmarks/teacher_scoring.py --sweep    # + batch_tokens sweep

    Other processes competing for the CPU distort wall times: the report records the load
    average around every measurement and the process CPU time next to the wall time. Run it
    when ``uptime`` shows a load well below the number of cores.

Where results go
    benchmarks/results/teacher_scoring.json   every figure, per run, machine and command line
    benchmarks/results/teacher_scoring.md     a short summary
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from common import (
    MODEL,
    RESULTS,
    alternating_runs,
    doc_text,
    library_vs_irflow,
    load_average,
    machine,
    machine_markdown,
    matmul_flops,
    new_report,
    non_embedding_params,
    prepare,
    read_corpus,
    read_queries,
    read_run,
    run_child,
    timed,
    title_markdown,
    write_corpus_and_queries,
    write_results,
)


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------
def load_pairs(n: int, seed: int) -> tuple[list[str], list[str], list[tuple[str, str]]]:
    docs = {doc_id: doc_text(title, text) for doc_id, title, text in read_corpus()}
    queries = read_queries()
    ids = [(qid, docid) for qid, docid, _ in read_run()]
    random.Random(seed).shuffle(ids)
    ids = ids[:n]
    return [queries[q] for q, _ in ids], [docs[d] for _, d in ids], ids


def real_tokens(tokenizer, texts, max_length, pairs_with=None) -> int:
    if pairs_with is None:
        enc = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    else:
        enc = tokenizer(texts, pairs_with, truncation="longest_first", max_length=max_length)[
            "input_ids"
        ]
    return sum(len(x) for x in enc)


# ---------------------------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------------------------
def compare(kind: str, queries, docs, repeats: int, threads: int) -> dict[str, Any]:
    import torch

    from irflow.models import ModelRef
    from irflow.training_data.teacher import (
        BiEncoderTeacher,
        CrossEncoderTeacher,
        TeacherSpec,
        _unique,
    )

    torch.set_num_threads(threads)
    ref = ModelRef("minilm-l6", path=str(MODEL))
    spec = TeacherSpec(name="minilm-l6", kind=kind, model=ref)
    if kind == "bi-encoder":
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(str(MODEL), device="cpu")
        teacher = BiEncoderTeacher(spec, model, "cpu")
        tok, limit = model.tokenizer, model.max_seq_length

        def library():
            q = model.encode(queries, normalize_embeddings=True, show_progress_bar=False)
            d = model.encode(docs, normalize_embeddings=True, show_progress_bar=False)
            return (q * d).sum(axis=1)

        lib_tokens = real_tokens(tok, queries, limit) + real_tokens(tok, docs, limit)
        ours_tokens = real_tokens(tok, _unique(queries)[0], limit) + real_tokens(
            tok, _unique(docs)[0], limit
        )
        body = model[0].auto_model
    else:
        from sentence_transformers import CrossEncoder

        torch.manual_seed(0)
        model = CrossEncoder(str(MODEL), num_labels=1, device="cpu")
        teacher = CrossEncoderTeacher(spec, model, "cpu")
        tok, limit = model.tokenizer, model.max_seq_length
        pairs = list(zip(queries, docs, strict=True))

        def library():
            return model.predict(pairs, activation_fn=torch.nn.Identity(), show_progress_bar=False)

        lib_tokens = real_tokens(tok, queries, limit, docs)
        unique = _unique(pairs)[0]
        ours_tokens = real_tokens(tok, [q for q, _ in unique], limit, [d for _, d in unique])
        body = model[0].auto_model

    def ours():
        return teacher.score(queries, docs)

    params = non_embedding_params(body)
    # Warm-up (allocator, oneDNN kernels) on a slice, not timed.
    model_warm = queries[:64], docs[:64]
    teacher.score(*model_warm)
    arms = {"library": library, "irflow": ours}
    runs, outputs = alternating_runs(arms, repeats, len(queries), "pairs_per_s", f"{kind} ")
    library_out, irflow_out = (
        np.asarray(outputs[name], dtype=np.float32) for name in ("library", "irflow")
    )
    teacher.counters.__init__()
    teacher.score(queries, docs)
    counters = teacher.counters.as_dict()
    result: dict[str, Any] = {
        "pairs": len(queries),
        "non_embedding_params": params,
        "max_abs_score_difference": float(np.abs(library_out - irflow_out).max()),
        "irflow_counters": counters,
        "irflow_batch_tokens": teacher.batch_tokens,
        "irflow_max_batch": spec.max_batch,
        "runs": runs,
    }
    tokens = {"library": lib_tokens, "irflow": ours_tokens}
    flop = {name: 2 * params * count for name, count in tokens.items()}
    result.update(library_vs_irflow(runs, len(queries), "pairs_per_s", flop))
    for name, count in tokens.items():
        result[name]["model_tokens"] = count
    return result


def sweep(queries, docs, threads: int, budgets: list[int]) -> list[dict[str, Any]]:
    import torch
    from sentence_transformers import SentenceTransformer

    from irflow.models import ModelRef
    from irflow.training_data.teacher import BiEncoderTeacher, TeacherSpec

    torch.set_num_threads(threads)
    model = SentenceTransformer(str(MODEL), device="cpu")
    out = []
    for budget in budgets:
        spec = TeacherSpec(
            name="minilm-l6",
            kind="bi-encoder",
            model=ModelRef("minilm-l6", path=str(MODEL)),
            batch_tokens=budget,
        )
        teacher = BiEncoderTeacher(spec, model, "cpu")
        teacher.score(queries[:32], docs[:32])
        _, timing = timed(lambda t=teacher: t.score(queries, docs))
        timing["batch_tokens"] = budget
        timing["pairs_per_s"] = len(queries) / timing["wall_s"]
        print(f"  sweep {timing}", flush=True)
        out.append(timing)
    return out


# ---------------------------------------------------------------------------------------------
# Peak memory of the scoring stage, one fresh process per size
# ---------------------------------------------------------------------------------------------
CHILD = r"""
import json, sys, threading, time
import psutil, torch
from common import vm_hwm_mb
torch.set_num_threads(int(sys.argv[5]))
from irflow.models import ModelRef
import irflow.training_data.teacher as scoring
from irflow.training_data.teacher import TeacherSpec, load_teacher, score_shard
spec = TeacherSpec(name="minilm-l6", kind="bi-encoder", model=ModelRef("m", path=sys.argv[4]))
teacher = load_teacher(spec, "cpu")
teacher.score(["warm up"], ["the model once"])
process = psutil.Process()
loaded = process.memory_info().rss
peak = [loaded]
done = threading.Event()
def sample():
    while not done.wait(0.005):
        peak[0] = max(peak[0], process.memory_info().rss)
sampler = threading.Thread(target=sample, daemon=True)
sampler.start()
chunk_peaks = []
score_chunk = scoring._score_chunk
def traced(*args, **kwargs):
    before = peak[0]
    peak[0] = process.memory_info().rss
    out = score_chunk(*args, **kwargs)
    chunk_peaks.append(max(peak[0], process.memory_info().rss) / 2**20)
    peak[0] = max(before, peak[0])
    return out
scoring._score_chunk = traced
start = time.perf_counter()
stats = score_shard(
    sys.argv[1], 0, 1, teacher, sys.argv[2], sys.argv[3], sys.argv[6],
    chunk_samples=int(sys.argv[7]),
)
wall = time.perf_counter() - start
done.set()
sampler.join()
peak[0] = max(peak[0], process.memory_info().rss)
print(json.dumps({
    "peak_rss_mb": vm_hwm_mb(),
    "rss_after_model_load_mb": loaded / 2**20,
    "peak_rss_while_scoring_mb": peak[0] / 2**20,
    "scoring_growth_mb": (peak[0] - loaded) / 2**20,
    "wall_s": wall, "pairs": stats["pairs"], "samples": stats["samples"],
    "chunk_peak_rss_mb": [round(x, 1) for x in chunk_peaks],
}))
"""


def memory_runs(
    sizes: list[int], threads: int, seed: int, chunk_samples: int
) -> list[dict[str, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_corpus_and_queries(tmp, read_corpus(), read_queries())
        by_query: dict[str, list[str]] = {}
        for qid, docid, _ in read_run():
            by_query.setdefault(qid, []).append(docid)
        # Samples of 16 pairs: a "positive" and 15 "negatives" from one query's run.
        samples = [
            (qid, run[i], run[i + 1 : i + 16])
            for qid, run in by_query.items()
            for i in range(0, len(run) - 15, 16)
        ]
        random.Random(seed).shuffle(samples)
        for pairs in sizes:
            # Past the 258 samples DL19 holds, the list repeats (a sample recurs only in a later
            # chunk, so no chunk is smaller for it): a long run measures whether memory grows.
            chosen = [samples[i % len(samples)] for i in range(pairs // 16)]
            table = pa.table(
                {
                    "query_id": [s[0] for s in chosen],
                    "pos_id": [s[1] for s in chosen],
                    "neg_ids": [s[2] for s in chosen],
                }
            )
            path = tmp / f"samples-{pairs}.parquet"
            pq.write_table(table, path)
            result = run_child(
                CHILD,
                str(path),
                str(tmp / "corpus.parquet"),
                str(tmp / "queries.parquet"),
                str(MODEL),
                str(threads),
                str(tmp / f"scores-{pairs}.parquet"),
                str(chunk_samples),
                what=f"the memory run of {pairs} pairs",
            )
            result["requested_pairs"] = pairs
            result["chunk_samples"] = chunk_samples
            print(f"  memory {result}", flush=True)
            out.append(result)
    return out


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------
def markdown(report: dict[str, Any]) -> str:
    peak = report["matmul"]["median_flop_per_s"]
    title = "Teacher-scoring benchmark: irflow scorer vs the library default (CPU)"
    lines = [
        *title_markdown(title, "teacher_scoring.py", report),
        *machine_markdown(report),
        *(
            f"- The {part} figures come from the run of {when} (same script)"
            for part, when in report.get("carried_over", {}).items()
        ),
        "",
        "## Throughput",
        "",
        f"{report['pairs']} (query, BM25 candidate) pairs of TREC DL 2019, shuffled with seed "
        f"{report['seed']}; all-MiniLM-L6-v2 (max_seq_length 256); median of "
        f"{report['repeats']} alternating runs after a warm-up. Library default: batch size 32, "
        "length-sorted by characters. irflow: dedupe within the chunk, token-length sort, "
        "batches by token budget.",
        "",
        "| teacher | method | pairs/s | wall s | CPU s | model tokens | model GFLOP/s | "
        "share of matmul peak | max abs score diff | speedup (wall) | speedup (CPU time) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for kind, res in report["compare"].items():
        for name in ("library", "irflow"):
            r = res[name]
            lines.append(
                f"| {kind} | {name} | {r['median_pairs_per_s']:.1f} | {r['median_wall_s']:.2f} | "
                f"{r['median_cpu_s']:.2f} | {r['model_tokens']} | "
                f"{r['model_flop_per_s'] / 1e9:.1f} | {r['model_flop_per_s'] / peak:.0%} | "
                + (
                    f"{res['max_abs_score_difference']:.2e} | **{res['speedup']:.2f}x** | "
                    f"{res['speedup_cpu_time']:.2f}x |"
                    if name == "irflow"
                    else " | | |"
                )
            )
    lines += [
        "",
        "Model FLOP/s = 2 x non-embedding parameters x real (unpadded) tokens of the texts the "
        "method runs through the model / wall time; attention's score and mix products are "
        "left out (a few percent at these lengths) and padding counts as waste. The library "
        "runs every pair's query (bi-encoder) through the model; irflow each distinct query "
        "once, so its token count is lower for the same pairs.",
        "",
    ]
    for kind, res in report["compare"].items():
        c = res["irflow_counters"]
        lines.append(
            f"- {kind}: irflow ran {c['model_inputs']} inputs in {c['batches']} batches, "
            f"{c['tokens']} real / {c['padded_tokens']} padded tokens "
            f"(batch_tokens {res['irflow_batch_tokens']}, max_batch {res['irflow_max_batch']})."
        )
    if report.get("sweep"):
        lines += [
            "",
            "## batch_tokens sweep (bi-encoder, one run each)",
            "",
            "| batch_tokens | pairs/s | wall s | load before |",
            "|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {s['batch_tokens']} | {s['pairs_per_s']:.1f} | {s['wall_s']:.2f} | "
            f"{s['load_1min_before']:.2f} |"
            for s in report["sweep"]
        ]
    lines += [
        "",
        "## Peak memory of the scoring stage (bi-encoder, `score_shard`, fresh process)",
        "",
        "| pairs | samples | peak RSS MB (VmHWM) | RSS after model load MB | "
        "peak RSS while scoring MB | growth while scoring MB | wall s |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['pairs']} | {r['samples']} | {r['peak_rss_mb']:.0f} | "
        f"{r['rss_after_model_load_mb']:.0f} | {r['peak_rss_while_scoring_mb']:.0f} | "
        f"{r['scoring_growth_mb']:.0f} | {r['wall_s']:.1f} |"
        for r in report["memory"]
    ]
    for r in report["memory"]:
        peaks = r.get("chunk_peak_rss_mb") or []
        if len(peaks) >= 4:
            lines.append(
                f"\n{r['pairs']} pairs, {len(peaks)} chunks: peak RSS per chunk, first four "
                f"{[round(x) for x in peaks[:4]]} MB, last four {[round(x) for x in peaks[-4:]]} "
                f"MB, max {max(peaks):.0f} MB."
            )
        if len(peaks) >= 16:
            # Whether memory grows with the pairs scored: the mean and max chunk peak per quarter
            # of the run (a plateau after the allocator's warm-up means it does not).
            quarter = len(peaks) // 4
            parts = [peaks[i * quarter : (i + 1) * quarter] for i in range(4)]
            lines.append(
                "Chunk peaks by quarter of the run (mean / max MB): "
                + ", ".join(f"{sum(q) / len(q):.0f} / {max(q):.0f}" for q in parts)
                + "."
            )
    lines += [
        "",
        "Samples are 16 pairs (one query, 16 of its BM25 candidates). These runs use chunks "
        f"of {report['memory'][0]['chunk_samples'] if report['memory'] else '?'} samples, "
        "so the sizes are several chunks each and only one chunk's texts and embeddings are "
        "held at a time. Peak RSS is the child process's VmHWM; 'while scoring' is RSS "
        "sampled every 5 ms during `score_shard`, 'growth' that minus the RSS after loading "
        "the model and one warm-up call. What remains is activations (bounded by "
        "batch_tokens) and allocator caches, not pairs. DL19 holds 258 such samples (4,128 "
        "pairs); larger runs cycle through them, each repeat in a later chunk.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kinds", nargs="+", default=["bi-encoder", "cross-encoder"])
    parser.add_argument("--memory-pairs", type=int, nargs="*", default=[1000, 4000])
    parser.add_argument(
        "--memory-chunk-samples",
        type=int,
        default=16,
        help="chunk size of the memory runs (16 samples = 256 pairs, so 1k pairs are 4 chunks)",
    )
    parser.add_argument("--sweep", action="store_true", help="also sweep batch_tokens")
    parser.add_argument(
        "--parts",
        nargs="+",
        choices=["compare", "sweep", "memory"],
        default=["compare", "sweep", "memory"],
        help="parts to run; the others are carried over from the existing JSON (if any)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    prepare()
    queries, docs, _ = load_pairs(args.pairs, args.seed)
    report = new_report(
        pairs=len(queries),
        distinct_queries=len(set(queries)),
        distinct_documents=len(set(docs)),
        seed=args.seed,
        repeats=args.repeats,
        load_before=load_average(),
        machine=machine(args.threads),
    )
    previous_path = args.out / "teacher_scoring.json"
    previous = json.loads(previous_path.read_text()) if previous_path.exists() else {}
    report["carried_over"] = {}

    def carry(part: str) -> None:
        if part in previous:
            report[part] = previous[part]
            report["carried_over"][part] = previous.get("generated")

    print("matmul", flush=True)
    report["matmul"] = matmul_flops(args.threads)
    if "compare" in args.parts:
        report["compare"] = {}
        for kind in args.kinds:
            print(kind, flush=True)
            report["compare"][kind] = compare(kind, queries, docs, args.repeats, args.threads)
    else:
        carry("compare")
        carry("matmul")
    if args.sweep and "sweep" in args.parts:
        print("sweep", flush=True)
        report["sweep"] = sweep(queries, docs, args.threads, [2048, 4096, 8192, 16384, 32768])
    else:
        carry("sweep")
    if "memory" in args.parts:
        print("memory", flush=True)
        report["memory"] = memory_runs(
            args.memory_pairs, args.threads, args.seed, args.memory_chunk_samples
        )
    else:
        carry("memory")
    report["load_after"] = load_average()
    report["peak_rss_mb_benchmark_process"] = (
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    write_results(args.out, "teacher_scoring", report, markdown(report))
    for kind, res in report.get("compare", {}).items():
        print(
            f"{kind}: library {res['library']['median_pairs_per_s']:.1f} pairs/s, irflow "
            f"{res['irflow']['median_pairs_per_s']:.1f} pairs/s, speedup {res['speedup']:.2f}x, "
            f"max diff {res['max_abs_score_difference']:.1e}"
        )


if __name__ == "__main__":
    main()
