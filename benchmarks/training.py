"""Student-training benchmark: irflow's entry points against the plain sentence-transformers
trainer on the same data, on CPU (or the GPU when there is one).

What it measures
    Training throughput (samples/s and pairs/s, a sample being a query, its positive and
    ``--num-negatives`` negatives, so ``1 + k`` pairs) and the peak resident memory of one
    cross-encoder arm and one bi-encoder arm, all-MiniLM-L6-v2 as the student, on TREC DL 2019
    (``../shared/data/dl19-bm25-top100``): every (query, relevant passage) pair (label >= 2)
    with ``--num-negatives`` passages of the query's BM25 top 100 that are not judged relevant
    (seeded sample), the BM25 scores standing in for teacher scores (their values do not change
    the cost), the first ``--max-samples`` after a seeded shuffle.

    cross-encoder  (a) ``irflow.students.train_cross_encoder``, objective ``margin_mse``;
                   (b) the plain library: ``CrossEncoder(MiniLM, num_labels=1)``,
                   ``CrossEncoderTrainer`` with ``losses.MarginMSELoss`` and the library's
                   default arguments but the same batch size, learning rate, max length and
                   steps; (c) irflow with objective ``kd`` (the loss written here, for
                   reference: it scores the whole list in one forward pass).
    bi-encoder     (a) ``irflow.students.train_bi_encoder``, ``margin_mse`` with Matryoshka
                   dims 384/128/64; (b) ``SentenceTransformerTrainer`` with ``MatryoshkaLoss``
                   around ``MarginMSELoss``, defaults as above; (c) irflow ``margin_mse``
                   without Matryoshka.

    Every arm runs in a fresh Python process (``--repeats`` times, the arms alternating), one
    epoch over the samples; the wall and CPU times are those of ``trainer.train()`` alone (no
    model loading, no data preparation, no final save), and the peak memory is the process's
    ``VmHWM``. The
    irflow arms write no checkpoints. The data (the same rows for both) are prepared once,
    untimed, with :mod:`irflow.students.data`.

How to run (from the repository root, with the project's virtual environment)
    . .venv/bin/activate
    HF_HUB_OFFLINE=1 python benchmarks/training.py            # ~30 min on 2 quiet cores
    HF_HUB_OFFLINE=1 python benchmarks/training.py --max-samples 4 --batch-size 2 \\
        --num-negatives 1 --max-length 32 --repeats 1 --out /tmp/bench   # smoke test, ~3 min

    Training MiniLM-L6 costs about 6 x 22M parameters x tokens FLOP per step (forward and
    backward), about 0.4 TFLOP for a default step (8 samples x 4 pairs x 96 tokens): tens of
    seconds on two CPU cores. Scale ``--max-samples``, ``--batch-size``, ``--num-negatives`` and
    ``--max-length`` up on a GPU (``--device cuda``; bf16 there for both methods).

    Other processes competing for the CPU distort wall times: the report records the load
    average around every run and the CPU time next to the wall time.

Where results go
    benchmarks/results/training.json   every figure, per run, machine and command line
    benchmarks/results/training.md     a short summary
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
from pathlib import Path
from typing import Any

from common import (
    MODEL,
    RESULTS,
    load_average,
    machine,
    machine_markdown,
    new_report,
    prepare,
    read_corpus,
    read_qrels,
    read_queries,
    read_run,
    run_child,
    title_markdown,
    write_corpus_and_queries,
    write_results,
)

ARMS = {
    "cross-encoder": [
        ("irflow", {"name": "margin_mse"}),
        ("library", {"name": "margin_mse"}),
        ("irflow-kd", {"name": "kd"}),
    ],
    "bi-encoder": [
        ("irflow", {"name": "margin_mse", "matryoshka_dims": [384, 128, 64]}),
        ("library", {"name": "margin_mse", "matryoshka_dims": [384, 128, 64]}),
        ("irflow-no-matryoshka", {"name": "margin_mse"}),
    ],
}


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------
def write_inputs(folder: Path, max_samples: int, num_negatives: int, seed: int) -> dict[str, Any]:
    """Corpus, queries and a scores Parquet (irflow's training-data format) from DL19."""
    import pyarrow as pa

    from irflow.training_data.artifacts import SCORES_SCHEMA, write_table

    queries, qrels = read_queries(), read_qrels()
    run: dict[str, list[tuple[str, float]]] = {}
    for qid, docid, score in read_run():
        run.setdefault(qid, []).append((docid, score))
    rng = random.Random(seed)
    rows: dict[str, list] = {name: [] for name in SCORES_SCHEMA.names}
    for qid in sorted(run):
        scored = dict(run[qid])
        judged = qrels.get(qid, {})
        negatives = [(d, s) for d, s in run[qid] if judged.get(d, 0) < 2]
        for pos in sorted(d for d, label in judged.items() if label >= 2 and d in scored):
            picked = rng.sample(negatives, min(num_negatives, len(negatives)))
            rows["query_id"].append(qid)
            rows["pos_id"].append(pos)
            rows["pos_score"].append(scored[pos])
            rows["neg_ids"].append([d for d, _ in picked])
            rows["neg_scores"].append([s for _, s in picked])
    order = list(range(len(rows["query_id"])))
    rng.shuffle(order)
    order = order[:max_samples]
    table = pa.table({k: [v[i] for i in order] for k, v in rows.items()}, schema=SCORES_SCHEMA)
    meta = {"artifact": "teacher-scores", "score_kind": "bm25", "teacher": {"name": "bm25"}}
    write_table(folder / "scores.parquet", table, SCORES_SCHEMA, meta)
    write_corpus_and_queries(folder, read_corpus(), queries)
    return {"samples": table.num_rows, "queries": len(set(table.column("query_id").to_pylist()))}


# ---------------------------------------------------------------------------------------------
# One arm in a fresh process
# ---------------------------------------------------------------------------------------------
CHILD = r"""
import json, sys, time
import torch
from common import vm_hwm_mb
config = json.loads(sys.argv[1])
torch.set_num_threads(config["threads"])
from irflow.students import StudentTrainingSpec
from irflow.students.data import load_samples, to_dataset
from irflow.students.losses import get_objective
kind, method, folder = config["kind"], config["method"], config["folder"]
spec = StudentTrainingSpec.from_config(config["spec"])
device = config["device"]
from transformers import TrainerCallback
class CpuTime(TrainerCallback):
    # Process CPU time of trainer.train() alone (both methods).
    def on_train_begin(self, *args, **kwargs):
        self.start = time.process_time()
    def on_train_end(self, *args, **kwargs):
        self.seconds = time.process_time() - self.start
cpu = CpuTime()
if method.startswith("irflow"):
    from irflow.students.train import train_bi_encoder, train_cross_encoder
    train = train_cross_encoder if kind == "cross-encoder" else train_bi_encoder
    began = time.perf_counter()
    stats = train(spec, folder + "/scores.parquet", folder + "/queries.parquet",
                  folder + "/corpus.parquet", config["model"], folder + "/out-model",
                  None, folder + "/out-curves.jsonl", device=device, callbacks=[cpu])
    total = time.perf_counter() - began
    seconds, steps, samples = stats["train_seconds"], stats["steps"], stats["samples_seen"]
else:
    objective = get_objective(kind, spec.objective)
    samples_ = load_samples(folder + "/scores.parquet", folder + "/queries.parquet",
                            folder + "/corpus.parquet", spec.num_negatives)
    dataset = to_dataset(samples_, objective.data)
    began = time.perf_counter()
    cuda = device.startswith("cuda")
    common = dict(output_dir=folder + "/library-out", per_device_train_batch_size=spec.batch_size,
                  num_train_epochs=spec.epochs, learning_rate=spec.optimizer.lr, seed=spec.seed,
                  save_strategy="no", report_to="none", disable_tqdm=True, use_cpu=not cuda,
                  bf16=spec.bf16 and cuda)
    if kind == "cross-encoder":
        from sentence_transformers.cross_encoder import (CrossEncoder, CrossEncoderTrainer,
                                                         CrossEncoderTrainingArguments)
        from sentence_transformers.cross_encoder.losses import MarginMSELoss
        model = CrossEncoder(config["model"], num_labels=1, max_length=spec.max_length,
                             device=device)
        trainer = CrossEncoderTrainer(model=model, args=CrossEncoderTrainingArguments(**common),
                                      train_dataset=dataset, loss=MarginMSELoss(model),
                                      callbacks=[cpu])
    else:
        from sentence_transformers import (SentenceTransformer, SentenceTransformerTrainer,
                                           SentenceTransformerTrainingArguments)
        from sentence_transformers.sentence_transformer.losses import MarginMSELoss, MatryoshkaLoss
        model = SentenceTransformer(config["model"], device=device)
        model.max_seq_length = spec.max_length
        loss = MarginMSELoss(model)
        if spec.objective.matryoshka_dims:
            loss = MatryoshkaLoss(model, loss, list(spec.objective.matryoshka_dims))
        trainer = SentenceTransformerTrainer(model=model,
                                             args=SentenceTransformerTrainingArguments(**common),
                                             train_dataset=dataset, loss=loss, callbacks=[cpu])
    start = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - start
    total = time.perf_counter() - began
    steps, samples = result.global_step, len(samples_)
print(json.dumps({"train_s": seconds, "total_s": total, "cpu_s": cpu.seconds,
                  "steps": steps, "samples": samples, "peak_rss_mb": vm_hwm_mb()}))
"""


def run_arm(kind: str, method: str, objective: dict, folder: Path, args) -> dict[str, Any]:
    spec = {
        "objective": objective,
        "batch_size": args.batch_size,
        "num_negatives": args.num_negatives,
        "max_length": args.max_length,
        "epochs": 1,
        "optimizer": {"name": "adamw", "lr": 2e-5},
        "seed": args.seed,
        "bf16": args.device.startswith("cuda"),
    }
    config = {
        "kind": kind, "method": method, "folder": str(folder), "model": str(MODEL),
        "threads": args.threads, "device": args.device, "spec": spec,
    }  # fmt: skip
    load_before = os.getloadavg()[0]
    result = run_child(CHILD, json.dumps(config), what=f"{kind} {method}")
    pairs = 1 + args.num_negatives
    result.update(
        load_1min_before=load_before,
        samples_per_s=result["samples"] / result["train_s"],
        pairs_per_s=result["samples"] * pairs / result["train_s"],
    )
    print(f"  {kind} {method}: {result}", flush=True)
    return result


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------
def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "median_train_s": statistics.median(r["train_s"] for r in runs),
        "median_cpu_s": statistics.median(r["cpu_s"] for r in runs),
        "median_samples_per_s": statistics.median(r["samples_per_s"] for r in runs),
        "median_pairs_per_s": statistics.median(r["pairs_per_s"] for r in runs),
        "max_peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        "steps": runs[0]["steps"],
        "samples": runs[0]["samples"],
    }


def markdown(report: dict[str, Any]) -> str:
    title = (
        "Student-training benchmark: irflow entry points vs the plain sentence-transformers trainer"
    )
    lines = [
        *title_markdown(title, "training.py", report),
        *machine_markdown(report, device_label="training device"),
        "",
        "## Throughput and peak memory",
        "",
        f"{report['data']['samples']} DL19 samples ({report['data']['queries']} queries), "
        f"{report['num_negatives']} negatives each ({1 + report['num_negatives']} pairs per "
        f"sample), one epoch, batch size {report['batch_size']} samples, max length "
        f"{report['max_length']} tokens, all-MiniLM-L6-v2; median of {report['repeats']} "
        "fresh-process runs per arm. Time: `trainer.train()` only.",
        "",
        "| arm | method | objective | steps | samples/s | pairs/s | train s | CPU s | "
        "peak RSS MB | vs library |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for kind, arms in report["arms"].items():
        library = arms["library"]["summary"]["median_samples_per_s"]
        for method, arm in arms.items():
            s = arm["summary"]
            objective = arm["objective"]["name"] + (
                " + Matryoshka" if arm["objective"].get("matryoshka_dims") else ""
            )
            lines.append(
                f"| {kind} | {method} | {objective} | {s['steps']} | "
                f"{s['median_samples_per_s']:.2f} | {s['median_pairs_per_s']:.1f} | "
                f"{s['median_train_s']:.1f} | {s['median_cpu_s']:.1f} | "
                f"{s['max_peak_rss_mb']:.0f} | {s['median_samples_per_s'] / library:.2f}x |"
            )
    lines += [
        "",
        "Peak RSS is the whole training process's high-water mark (`VmHWM`): Python, torch, the "
        "model, optimizer state, the training texts and activations. irflow's arms also hash "
        "the training samples and the initial weights (to recognise their own checkpoints), "
        "which the timed part does not include.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max-samples", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--num-negatives", type=int, default=3)
    parser.add_argument("--max-length", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kinds", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    prepare()
    import torch

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    report = new_report(
        batch_size=args.batch_size,
        num_negatives=args.num_negatives,
        max_length=args.max_length,
        repeats=args.repeats,
        seed=args.seed,
        load_before=load_average(),
        machine=machine(args.threads, args.device),
        arms={},
    )
    with tempfile.TemporaryDirectory(prefix="irflow-training-bench-") as tmp:
        folder = Path(tmp)
        report["data"] = write_inputs(folder, args.max_samples, args.num_negatives, args.seed)
        print(f"data: {report['data']}", flush=True)
        for kind in args.kinds:
            runs: dict[str, list[dict[str, Any]]] = {method: [] for method, _ in ARMS[kind]}
            for repeat in range(args.repeats):
                order = ARMS[kind] if repeat % 2 == 0 else ARMS[kind][::-1]
                for method, objective in order:
                    runs[method].append(run_arm(kind, method, objective, folder, args))
            report["arms"][kind] = {
                method: {"objective": objective, "runs": runs[method],
                         "summary": summarise(runs[method])}
                for method, objective in ARMS[kind]
            }  # fmt: skip
    report["load_after"] = load_average()
    write_results(args.out, "training", report, markdown(report))
    for kind, arms in report["arms"].items():
        print(
            f"{kind}: "
            + ", ".join(
                f"{m} {a['summary']['median_samples_per_s']:.2f} samples/s "
                f"({a['summary']['max_peak_rss_mb']:.0f} MB)"
                for m, a in arms.items()
            )
        )


if __name__ == "__main__":
    main()
