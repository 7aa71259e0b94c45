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
import random
import resource
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
    read_run,
    timed,
    title_markdown,
    write_results,
)

LIBRARY_BATCH_SIZE = 32  # SentenceTransformer.encode's default


def load_passages(n: int, seed: int) -> list[str]:
    """``n`` distinct DL19 candidate passages, shuffled, as ``irflow.data.doc_texts`` joins them."""
    docs = {doc_id: doc_text(title, text) for doc_id, title, text in read_corpus()}
    order = sorted({docid for _, docid, _ in read_run()})
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
    arms = {"library": library, "irflow": ours}
    runs, outputs = alternating_runs(arms, repeats, len(texts), "docs_per_s")
    library_out, irflow_out = (
        np.asarray(outputs[name], dtype=np.float32) for name in ("library", "irflow")
    )
    counters = Counters()
    encode_texts(model, texts, counters=counters)
    result: dict[str, Any] = {
        "docs": len(texts),
        "max_seq_length": max_length,
        "non_embedding_params": params,
        "model_tokens": tokens,
        "max_abs_embedding_difference": float(np.abs(library_out - irflow_out).max()),
        "irflow_counters": counters.as_dict(),
        "irflow_batch_tokens": default_batch_tokens("cpu"),
        "library_batch_size": LIBRARY_BATCH_SIZE,
        "runs": runs,
    }
    flop = 2 * params * tokens
    result.update(library_vs_irflow(runs, len(texts), "docs_per_s", dict.fromkeys(arms, flop)))
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


def markdown(report: dict[str, Any]) -> str:
    peak = report["matmul"]["median_flop_per_s"]
    res = report["compare"]
    c = res["irflow_counters"]
    title = "Encoding benchmark: irflow batching vs `SentenceTransformer.encode` (CPU)"
    lines = [
        *title_markdown(title, "encoding.py", report),
        *machine_markdown(report),
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
    return "\n".join(lines) + "\n"


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

    prepare()
    texts = load_passages(args.docs, args.seed)
    report = new_report(
        seed=args.seed,
        repeats=args.repeats,
        load_before=load_average(),
        machine=machine(args.threads),
    )
    print("matmul", flush=True)
    report["matmul"] = matmul_flops(args.threads)
    print("compare", flush=True)
    report["compare"] = compare(
        texts, args.repeats, args.threads, args.max_length, args.budgets if args.sweep else []
    )
    report["load_after"] = load_average()
    report["peak_rss_mb_benchmark_process"] = (
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    write_results(args.out, "encoding", report, markdown(report))
    res = report["compare"]
    print(
        f"library {res['library']['median_docs_per_s']:.1f} docs/s, irflow "
        f"{res['irflow']['median_docs_per_s']:.1f} docs/s, speedup {res['speedup']:.2f}x, "
        f"max diff {res['max_abs_embedding_difference']:.1e}"
    )


if __name__ == "__main__":
    main()
