"""Gradient-caching benchmark of the unified decoder trainer: peak memory of one InfoNCE
training step against the batch size, with and without ``embedding.mini_batch_size``.

What it measures
    One optimizer step of an embedding-only stage (``irflow.decoder.train.Trainer.run_stage``:
    forward, InfoNCE over the batch's positives and hard negatives, backward, AdamW step) of a
    tiny random Llama (``--layers`` layers, hidden size ``--hidden``, LoRA rank 8 on every
    projection, dropout 0.05) on synthetic texts: ``--queries`` samples, each a query with one
    positive and ``--negatives`` hard negatives, so a batch of ``B`` queries encodes
    ``B x (2 + negatives)`` sequences (queries about 8 tokens, documents about 24). Arms:

    uncached  batch 64, 128, 256 (``--uncached``): the whole batch in one forward pass;
    cached    batch 256 and 1,024 (``--cached``), ``--mini-batch`` rows per forward pass.

    Every arm runs in a fresh Python process; the figures are the process's resident memory
    (``VmRSS``) just before the step and its peak (``VmHWM``) after it, so ``step peak - before``
    is what the step itself added (activations kept for backward, logits, gradients, optimizer
    state), and the step's wall and CPU time. The loss of the cached and uncached arms at the
    same batch size is reported as a check (equal up to the dropout masks, which are drawn per
    forward pass and so differ between one pass and mini-batches).

    One torch thread by default: the cached arms run many small operations, which on a
    shared, oversubscribed machine lose more to thread synchronisation than they gain.

How to run (from the repository root, with the project's virtual environment)
    . .venv/bin/activate
    HF_HUB_OFFLINE=1 python benchmarks/decoder_gradcache.py        # ~5 CPU-min, 1 thread
    HF_HUB_OFFLINE=1 python benchmarks/decoder_gradcache.py --uncached 32 --cached 64 \\
        --queries 64 --out /tmp/bench                              # smoke test, ~30 s

Where results go
    benchmarks/results/decoder_gradcache.json   every figure, machine and command line
    benchmarks/results/decoder_gradcache.md     a short summary
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from common import (
    RESULTS,
    load_average,
    machine,
    machine_markdown,
    new_report,
    run_child,
    title_markdown,
    write_results,
)

WORD_TEXT = """
the a of is what how why who to in on for and cat dog bird fish tree river city law court
protein cell gene drug virus heart brain blood study trial effect risk water fire sun moon
star rain snow wind stone iron gold paper music art game ball team yes no
"""
WORDS = WORD_TEXT.split()
EOS = "<|endoftext|>"

CHILD = """
import json, os, sys, time
import torch
from common import vm_hwm_mb

args = json.loads(sys.argv[1])
torch.set_num_threads(args["threads"])

from irflow.decoder.base import load_base
from irflow.decoder.checkpoint import build_model
from irflow.decoder.samples import read_training_set
from irflow.decoder.spec import parse_spec
from irflow.decoder.train import Trainer, deterministic

def rss_mb():
    with open("/proc/self/status") as status:
        return next(int(l.split()[1]) for l in status if l.startswith("VmRSS")) / 1024

spec = parse_spec(args["spec"])
data = read_training_set(args["samples"], args["queries"], args["corpus"])
with deterministic():
    base, tokenizer = load_base(args["model"], "cpu")
    model = build_model(base, tokenizer, spec)
    trainer = Trainer(model, spec, data, "cpu")
    before, hwm_before = rss_mb(), vm_hwm_mb()
    wall, cpu = time.perf_counter(), time.process_time()
    trainer.run_stage(0)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
row = trainer.train_log[-1]
print(json.dumps({
    "rss_before_mb": before, "hwm_before_mb": hwm_before, "peak_mb": vm_hwm_mb(),
    "wall_s": wall, "cpu_s": cpu, "loss": row["loss_embed"], "grad_norm": row["grad_norm"],
}))
"""


def write_inputs(folder: Path, queries: int, negatives: int, hidden: int, layers: int) -> None:
    """A tiny random Llama with a byte-level BPE tokenizer, and corpus, queries and samples in
    irflow's Parquet schemas (every query has its own positive and ``negatives`` others)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from irflow.data import CORPUS_SCHEMA, QUERIES_SCHEMA
    from irflow.training_data import SCORES_SCHEMA

    rng = np.random.default_rng(0)
    model_dir = folder / "model"
    lines = [" ".join(rng.choice(WORDS, 12)) for _ in range(400)]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(
        lines,
        trainers.BpeTrainer(
            vocab_size=400,
            special_tokens=[EOS],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=EOS, pad_token=EOS)
    tokenizer.save_pretrained(model_dir)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).save_pretrained(model_dir)

    docs = [f"d{i}" for i in range(queries * (1 + negatives))]
    texts = [" ".join(rng.choice(WORDS, int(rng.integers(16, 28)))) for _ in docs]
    pq.write_table(
        pa.table({"doc_id": docs, "title": [""] * len(docs), "text": texts},
                 schema=CORPUS_SCHEMA), folder / "corpus.parquet")  # fmt: skip
    qids = [f"q{i}" for i in range(queries)]
    qtexts = [" ".join(rng.choice(WORDS, int(rng.integers(4, 9)))) for _ in qids]
    pq.write_table(pa.table({"query_id": qids, "text": qtexts}, schema=QUERIES_SCHEMA),
                   folder / "queries.parquet")  # fmt: skip
    negs = [[docs[queries + i * negatives + k] for k in range(negatives)] for i in range(queries)]
    samples = {
        "query_id": qids,
        "pos_id": docs[:queries],
        "pos_score": [1.0] * queries,
        "neg_ids": negs,
        "neg_scores": [[0.0] * negatives for _ in negs],
    }
    pq.write_table(pa.table(samples, schema=SCORES_SCHEMA), folder / "samples.parquet")


def arm_spec(batch: int, mini: int | None, negatives: int) -> dict[str, Any]:
    return {
        "adapter": {"r": 8, "alpha": 16, "dropout": 0.05},
        "embedding": {
            "query_template": "{query}",
            "max_query_length": 16,
            "max_document_length": 40,
            "batch_size": batch,
            "num_negatives": negatives,
            "mini_batch_size": mini,
        },
        "training": {
            "optimizer": "adamw",
            "stages": [{"name": "embed", "tasks": ["embed"], "steps": 1, "lr": 1e-4}],
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--uncached", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--cached", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--mini-batch", type=int, default=32)
    parser.add_argument("--queries", type=int, default=1024, help="samples in the training set")
    parser.add_argument("--negatives", type=int, default=3, help="hard negatives per query")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: many small mini-batch ops)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if max(args.uncached + args.cached) > args.queries:
        parser.error("every batch size must be at most --queries")

    report = new_report(
        machine=machine(threads=args.threads), load_before=load_average(), settings=dict(vars(args))
    )
    report["settings"]["out"] = str(args.out)
    arms = [("uncached", b, None) for b in args.uncached]
    arms += [("cached", b, args.mini_batch) for b in args.cached]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_inputs(folder, args.queries, args.negatives, args.hidden, args.layers)
        for kind, batch, mini in arms:
            child = {
                "spec": arm_spec(batch, mini, args.negatives),
                "samples": str(folder / "samples.parquet"),
                "queries": str(folder / "queries.parquet"),
                "corpus": str(folder / "corpus.parquet"),
                "model": str(folder / "model"),
                "threads": args.threads,
            }
            load = load_average()
            out = run_child(CHILD, json.dumps(child), what=f"{kind} batch {batch}")
            row = {
                "arm": kind,
                "batch": batch,
                "mini_batch": mini,
                "sequences": batch * (2 + args.negatives),
                "load_before": load,
                **out,
                "step_mb": out["peak_mb"] - out["hwm_before_mb"],
            }
            results.append(row)
            print(json.dumps(row), flush=True)
    report["load_after"] = load_average()
    report["runs"] = results
    write_results(args.out, "decoder_gradcache", report, markdown(report))


def markdown(report: dict[str, Any]) -> str:
    s = report["settings"]
    lines = title_markdown(
        "Unified decoder: memory of one InfoNCE step with and without gradient caching",
        "decoder_gradcache.py",
        report,
    )
    lines += [
        f"One embedding training step (forward, InfoNCE, backward, AdamW) of a random Llama "
        f"({s['layers']} layers, hidden {s['hidden']}, LoRA r 8 on every projection, dropout "
        f"0.05) on CPU; each query has one positive and {s['negatives']} hard negatives (a "
        f"batch of B queries encodes B x {2 + s['negatives']} sequences: queries ~8 tokens, "
        f"documents ~24). Each arm in a fresh process. `before`: resident memory just before "
        f"the step (model, data, libraries); `peak`: the process's peak after it; `step`: "
        f"peak minus the peak before the step.",
        "",
        "| arm | batch (queries) | mini-batch | sequences | before MB | peak MB | step MB "
        "| wall s | CPU s | loss |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["runs"]:
        lines.append(
            f"| {r['arm']} | {r['batch']:,} | {r['mini_batch'] or '-'} | {r['sequences']:,} "
            f"| {r['rss_before_mb']:.0f} | {r['peak_mb']:.0f} | {r['step_mb']:.0f} "
            f"| {r['wall_s']:.1f} | {r['cpu_s']:.1f} | {r['loss']:.4f} |"
        )
    lines += [""] + machine_markdown(report) + [""]
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
    main()
