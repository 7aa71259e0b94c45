"""GUIDE width init against random init of the same shape: a small CPU comparison on SciFact.

all-MiniLM-L6-v2 (hidden 384) is narrowed to ``--hidden`` (default 192) twice: by GUIDE
(``irflow.students.guide.init_student(strategy="guide-pca")``: PCA-compressed embedding table,
every hidden dimension projected through the PCA matrix) and by a random initialisation of the
very same architecture (``AutoModel.from_config`` of the GUIDE student's config, seeded; same
tokenizer, pooling and normalisation). Both are trained identically with irflow's own training
entry point (:func:`irflow.students.train.train_student`, bi-encoder, InfoNCE with in-batch
negatives) on SciFact train (query, positive) pairs, each with one random corpus document as an
extra negative (seeded; no teacher: the scores are placeholders InfoNCE does not read), then
evaluated by nDCG@10 on SciFact test with exact dense retrieval over the full 5,183-document
corpus (:mod:`irflow.dense`, :func:`irflow.evaluate.evaluate_run`). The untrained students are
evaluated too (``--no-untrained`` skips them), and with ``--parent`` the parent itself.

Writes ``benchmarks/results/guide_narrow.md`` and ``.json`` (every figure) after every row (a run
cut short keeps the rows it finished). CPU only; the defaults (``--steps 100 --batch-size 16
--max-length 64``) need about 10 CPU-minutes (2 threads); on shared cores the wall time is that
divided by the CPU share.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

from common import (
    MODEL,
    RESULTS,
    ROOT,
    load_average,
    machine,
    machine_markdown,
    new_report,
    prepare,
    title_markdown,
    write_results,
)

SCIFACT = ROOT.parent / "shared" / "data" / "scifact"


def _jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _write_inputs(work: Path, negatives: int, seed: int) -> dict[str, Path]:
    """Corpus and query Parquets and a training-samples Parquet (placeholder scores)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from irflow.data import CORPUS_SCHEMA, QUERIES_SCHEMA
    from irflow.io import read_qrels
    from irflow.training_data.artifacts import SCORES_SCHEMA, write_table

    corpus = _jsonl(SCIFACT / "corpus.jsonl")
    queries = _jsonl(SCIFACT / "queries.jsonl")
    doc_ids = [str(d["_id"]) for d in corpus]
    pq.write_table(
        pa.table(
            {
                "doc_id": doc_ids,
                "title": [d.get("title") or "" for d in corpus],
                "text": [d.get("text") or "" for d in corpus],
            },
            schema=CORPUS_SCHEMA,
        ),
        work / "corpus.parquet",
    )
    pq.write_table(
        pa.table(
            {"query_id": [str(q["_id"]) for q in queries], "text": [q["text"] for q in queries]},
            schema=QUERIES_SCHEMA,
        ),
        work / "queries.parquet",
    )
    train = read_qrels(SCIFACT / "qrels" / "train.tsv")
    rng = random.Random(seed)
    rows: dict[str, list] = {k: [] for k in SCORES_SCHEMA.names}
    for qid in sorted(train):
        for pos in sorted(d for d, rel in train[qid].items() if rel > 0):
            pool = [d for d in rng.sample(doc_ids, negatives + 5) if d not in train[qid]]
            rows["query_id"].append(qid)
            rows["pos_id"].append(pos)
            rows["pos_score"].append(1.0)
            rows["neg_ids"].append(pool[:negatives])
            rows["neg_scores"].append([0.0] * negatives)
    meta = {"artifact": "teacher-scores", "score_kind": "cosine", "teacher": {"name": "none"}}
    write_table(work / "scores.parquet", pa.table(rows, schema=SCORES_SCHEMA), SCORES_SCHEMA, meta)
    return {
        "corpus": work / "corpus.parquet",
        "queries": work / "queries.parquet",
        "scores": work / "scores.parquet",
        "samples": len(rows["query_id"]),
    }


def _random_twin(guide_dir: Path, out: Path, seed: int) -> None:
    """The GUIDE student's folder with freshly initialised weights of the same config."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModel

    shutil.copytree(guide_dir, out)
    for name in ("guide_pca.safetensors", "guide.json"):
        (out / name).unlink(missing_ok=True)
    torch.manual_seed(seed)
    model = AutoModel.from_config(AutoConfig.from_pretrained(guide_dir))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, out / "model.safetensors", metadata={"format": "pt"})


def _evaluate(model_dir: Path, work: Path, inputs, test_queries, qrels, max_length: int):
    from sentence_transformers import SentenceTransformer

    from irflow.dense import dense_retrieve, encode_corpus
    from irflow.evaluate import evaluate_run

    model = SentenceTransformer(str(model_dir), device="cpu")
    model.max_seq_length = max_length
    emb_dir = work / f"emb-{model_dir.name}"
    start = time.perf_counter()
    encode_corpus(model, str(inputs["corpus"]), str(emb_dir))
    run = dense_retrieve(model, str(emb_dir), test_queries, k=100)
    seconds = time.perf_counter() - start
    mean, _ = evaluate_run(run, qrels, 1, {"nDCG@10": "nDCG@10", "R@100": "R(rel=1)@100"})
    shutil.rmtree(emb_dir)
    return {"ndcg10": mean["nDCG@10"], "recall100": mean["R@100"], "eval_s": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=192)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--parent", action="store_true", help="also evaluate the parent")
    parser.add_argument(
        "--no-untrained", action="store_true", help="skip evaluating the untrained students"
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "guide_narrow.md")
    args = parser.parse_args()
    prepare()
    import torch

    torch.set_num_threads(args.threads)
    from irflow.io import read_qrels
    from irflow.students.guide import init_student
    from irflow.students.spec import StudentTrainingSpec
    from irflow.students.train import train_student

    report = new_report(
        settings=vars(args) | {"out": str(args.out)},
        machine=machine(threads=args.threads),
        load_before=load_average(),
    )
    wall0 = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="guide-narrow-"))
    try:
        inputs = _write_inputs(work, negatives=1, seed=args.seed)
        qrels = read_qrels(SCIFACT / "qrels" / "test.tsv")
        all_queries = {str(q["_id"]): q["text"] for q in _jsonl(SCIFACT / "queries.jsonl")}
        test_queries = {q: all_queries[q] for q in qrels}
        report["data"] = {
            "train_samples": inputs["samples"],
            "test_queries": len(test_queries),
            "corpus_docs": sum(1 for _ in (SCIFACT / "corpus.jsonl").open()),
        }
        start = time.perf_counter()
        guide_stats = init_student(
            MODEL, work / "guide", strategy="guide-pca", hidden_size=args.hidden
        )
        report["guide_init"] = {**guide_stats, "init_s": time.perf_counter() - start}
        _random_twin(work / "guide", work / "random", args.seed)
        spec = StudentTrainingSpec.from_config(
            {
                "objective": {"name": "infonce"},
                "optimizer": {"name": "adamw", "lr": args.lr},
                "schedule": {"name": "linear", "warmup_ratio": 0.1},
                "max_steps": args.steps,
                "batch_size": args.batch_size,
                "num_negatives": 1,
                "max_length": args.max_length,
                "seed": args.seed,
            }
        )
        rows = report["results"] = {}

        def save() -> None:  # after every row, so a run cut short keeps what it measured
            report["load_after"] = load_average()
            report["wall_s"] = time.perf_counter() - wall0
            report["cpu_s"] = time.process_time()
            write_results(args.out.parent, args.out.stem, report, _markdown(report))

        for arm in ("guide", "random"):
            print(f"training {arm}", file=sys.stderr)
            start = time.perf_counter()
            stats = train_student(
                "bi-encoder", spec, inputs["scores"], inputs["queries"], inputs["corpus"],
                work / arm, work / f"{arm}-trained", None, work / f"{arm}-curves.jsonl", "cpu",
            )  # fmt: skip
            train_s = time.perf_counter() - start
            curve = [
                json.loads(line) for line in (work / f"{arm}-curves.jsonl").read_text().split("\n")
                if line.strip()
            ]  # fmt: skip
            losses = [row["loss"] for row in curve if row.get("loss") is not None]
            print(f"evaluating {arm} trained", file=sys.stderr)
            result = _evaluate(
                work / f"{arm}-trained", work, inputs, test_queries, qrels, args.max_length
            )
            rows[f"{arm} trained"] = {
                **result,
                "train_s": train_s,
                "first_loss": losses[0] if losses else None,
                "last_loss": losses[-1] if losses else None,
                "steps": stats["steps"],
            }
            save()
        if not args.no_untrained:
            for arm in ("guide", "random"):
                print(f"evaluating {arm} untrained", file=sys.stderr)
                rows[f"{arm} untrained"] = _evaluate(
                    work / arm, work, inputs, test_queries, qrels, args.max_length
                )
                save()
        if args.parent:
            print("evaluating the parent", file=sys.stderr)
            rows["parent (384, all-MiniLM-L6-v2)"] = _evaluate(
                MODEL, work, inputs, test_queries, qrels, args.max_length
            )
            save()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(args.out.read_text(encoding="utf-8"))


def _markdown(report) -> str:
    s, g = report["settings"], report["guide_init"]
    lines = title_markdown(
        f"GUIDE narrow init vs random init ({g['parent_hidden_size']} -> {g['hidden_size']})",
        "guide_narrow.py",
        report,
    )
    pca = (
        f"GUIDE: PCA of the {g['pca']['rows']:,} token-embedding rows keeps "
        f"{g['pca']['retained_variance']:.1%} of their variance."
        if g.get("pca")
        else "GUIDE at the parent's width: no PCA, the parent's own weights."
    )
    lines += [
        f"Parent all-MiniLM-L6-v2 (BERT, 6 layers, hidden {g['parent_hidden_size']}, "
        f"{g['params_parent']:,} parameters); both students: hidden {g['hidden_size']}, "
        f"{g['num_attention_heads']} heads of {g['hidden_size'] // g['num_attention_heads']}, "
        f"intermediate {g['intermediate_size']}, 6 layers, {g['params_student']:,} parameters. "
        f"{pca} Random: the same config, `AutoModel.from_config`, seed {s['seed']}.",
        "",
        f"Training (both identical): irflow `train_student` bi-encoder, InfoNCE (in-batch "
        f"negatives plus one random corpus document per sample), {s['steps']} steps of batch "
        f"{s['batch_size']}, AdamW lr {s['lr']}, linear schedule with 10% warm-up, max length "
        f"{s['max_length']}, seed {s['seed']}, on {report['data']['train_samples']} SciFact "
        f"train (query, positive) pairs. Evaluation: SciFact test "
        f"({report['data']['test_queries']} queries), exact dense retrieval over the full "
        f"corpus ({report['data']['corpus_docs']:,} docs), max length {s['max_length']}.",
        "",
        "| model | nDCG@10 | R@100 | train loss first -> last | train s | eval s |",
        "|---|---:|---:|---|---:|---:|",
    ]
    for name, row in report["results"].items():
        loss = (
            f"{row['first_loss']:.3f} -> {row['last_loss']:.3f}"
            if row.get("first_loss") is not None
            else ""
        )
        train = f"{row['train_s']:.0f}" if "train_s" in row else ""
        lines.append(
            f"| {name} | {row['ndcg10']:.4f} | {row['recall100']:.4f} | {loss} | {train} | "
            f"{row['eval_s']:.0f} |"
        )
    lines += [
        "",
        "One seed, one short run: the figures are as measured, with no confidence intervals.",
        "",
        *machine_markdown(report),
        f"- Total wall time {report['wall_s'] / 60:.1f} min, CPU time of the process "
        f"{report['cpu_s'] / 60:.1f} min (`nproc` {report['machine']['usable_cpus']}; the CPUs "
        f"were shared with other jobs)",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
