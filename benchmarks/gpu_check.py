"""One-GPU check: every model path of irflow once, at small scale, with its speed and memory.

What it runs (each a *check*; status ok, ``skipped: <reason>`` or ``failed: <error>``)
    teacher-bi-encoder      ``irflow.training_data.teacher`` bi-encoder teacher (mpnet; MiniLM
                            with ``--quick``) scoring DL19 (query, BM25 candidate) pairs
    teacher-cross-encoder   the cross-encoder teacher (MiniLM with a fresh one-logit head)
    dense-encode-retrieve   ``irflow.dense.encode_corpus`` of DL19 passages, then
                            ``dense_retrieve`` of the DL19 queries (exact top 10)
    student-cross-encoder   ``irflow.students.train.train_student`` steps, MiniLM cross-encoder,
                            ``margin_mse`` (bf16 on CUDA, fp32 on CPU)
    student-bi-encoder      the same for a MiniLM bi-encoder
    student-adamw8bit       bi-encoder steps with bitsandbytes' AdamW8bit (GPU-only; skipped
                            when bitsandbytes is not installed)
    decoder-lora            ``irflow.decoder.train.train_unified``: a random Llama (tokenizer
                            trained here on DL19 text), LoRA, an embedding stage then a joint
                            embedding + reranking stage
    decoder-moe-lora        the same with the MoE-LoRA adapter
    bf16-sdpa-load          the GPU loading path: bf16 weights and SDPA attention (GPU-only)
    flash-attention         SDPA's flash kernel in bf16 against the math kernel (GPU-only)
    agreement               zero-shot MiniLM bi-encoder scores of the same 200 DL19 pairs (10
                            queries x their BM25 top 20) on CPU fp32 and on the device: max abs
                            difference (must be <= 1e-2) and Kendall's tau of each query's
                            ranking; on a CPU-only run it compares CPU with CPU and says so.

    Per check: wall time (model loading included) and the timed part's throughput (pairs/s,
    samples/s, tokens/s), model FLOP/s estimated as 2 x non-embedding params x tokens for
    inference and 6 x for training (LoRA too, an upper bound), MFU against the GPU's dense
    bf16 peak (table :data:`PEAK_BF16`; blank on CPU and on unknown GPUs), and peak memory:
    ``torch.cuda.max_memory_allocated`` on GPU, the process's peak RSS on CPU (``VmHWM``,
    reset before each check where the kernel allows).

    Needs only the repository (``src/``, ``resources/models``) and ``../shared/data``; not
    Snakemake, bm25s, ir-measures or bitsandbytes (only the AdamW8bit check imports it).

How to run (from the repository root)
    . .venv/bin/activate
    python benchmarks/gpu_check.py                        # on a GPU machine, ~2-4 min
    python benchmarks/gpu_check.py --cpu --quick          # CPU, small sizes (CI), ~3 min
    Options: ``--cpu`` (force CPU: the GPU-only checks are "skipped: GPU-only"), ``--quick``
    (fewer samples), ``--out DIR`` (default benchmarks/results).

Where results go
    <out>/gpu_check-<device>.json   every figure, the machine and the command line
    <out>/gpu_check-<device>.md     the summary table
    (``<device>``: ``cpu``, or the GPU's name in lower case, e.g. ``nvidia-h200``.)
    Exit status 1 when any check that ran failed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import re
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import (
    DATA,
    RESULTS,
    ROOT,
    doc_text,
    load_average,
    machine,
    new_report,
    read_corpus,
    read_qrels,
    read_queries,
    read_run,
    title_markdown,
    vm_hwm_mb,
    write_corpus_and_queries,
    write_results,
)

MODELS = ROOT / "resources" / "models"
MINILM = MODELS / "all-MiniLM-L6-v2"
MPNET = MODELS / "all-mpnet-base-v2"

# Dense bf16 tensor-core peaks (FLOP/s, without sparsity), matched in this order against the
# device name torch reports.
PEAK_BF16: list[tuple[str, float]] = [
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),  # SXM / HBM3
    ("A100", 312e12),
]

SIZES: dict[str, dict[str, Any]] = {
    "full": {
        "teacher_pairs": 4300,
        "bi_teacher_model": "all-mpnet-base-v2",
        "encode_docs": 4297,
        "encode_model": "all-mpnet-base-v2",
        "student_samples": 512,
        "student_batch": 32,
        "student_negatives": 7,
        "student_max_length": 256,
        "adamw8bit_samples": 256,
        "decoder": {"hidden": 512, "layers": 8, "heads": 8, "kv_heads": 4, "vocab": 4000},
        "decoder_steps": 10,
        "decoder_batch": 16,
        "decoder_negatives": 3,
        "decoder_query_length": 32,
        "decoder_document_length": 160,
        "decoder_rerank_length": 192,
    },
    "quick": {
        "teacher_pairs": 64,
        "bi_teacher_model": "all-MiniLM-L6-v2",
        "encode_docs": 64,
        "encode_model": "all-MiniLM-L6-v2",
        "student_samples": 8,
        "student_batch": 4,
        "student_negatives": 1,
        "student_max_length": 64,
        "adamw8bit_samples": 8,
        "decoder": {"hidden": 64, "layers": 2, "heads": 4, "kv_heads": 2, "vocab": 600},
        "decoder_steps": 1,
        "decoder_batch": 4,
        "decoder_negatives": 1,
        "decoder_query_length": 24,
        "decoder_document_length": 48,
        "decoder_rerank_length": 80,
    },
}
AGREEMENT_QUERIES, AGREEMENT_DEPTH, AGREEMENT_TOLERANCE = 10, 20, 1e-2
EOS = "<|endoftext|>"


class Skip(Exception):
    """Raised by a check that cannot run here (the message is the reason)."""


@dataclass
class Check:
    name: str
    what: str
    run: Callable[[Context], dict[str, Any]]
    gpu_only: bool = False


@dataclass
class Context:
    device: str
    sizes: dict[str, Any]
    folder: Path  # scratch: corpus, queries, scores, the decoder's base, trained models
    pairs: list[tuple[str, str, str, str]]  # (query id, doc id, query text, doc text)

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")


# ---------------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------------
def sync(ctx: Context) -> None:
    if ctx.cuda:
        import torch

        torch.cuda.synchronize()


def timed(ctx: Context, fn: Callable[[], Any]) -> tuple[Any, float]:
    sync(ctx)
    start = time.perf_counter()
    out = fn()
    sync(ctx)
    return out, time.perf_counter() - start


def reset_peak(cuda: bool) -> bool:
    """Reset the peak-memory counter; False where the CPU's (VmHWM) cannot be reset."""
    if cuda:
        import torch

        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        return True
    try:
        Path("/proc/self/clear_refs").write_text("5")  # 5: reset the peak resident set size
        return True
    except OSError:
        return False


def peak_memory(cuda: bool, was_reset: bool) -> dict[str, Any]:
    if cuda:
        import torch

        return {"peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20}
    return {"peak_rss_mb": vm_hwm_mb(), "peak_rss_is_per_check": was_reset}


def non_embedding_params(model) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if "embed" not in n)


def bf16_peak(name: str | None) -> float | None:
    for key, peak in PEAK_BF16:
        if name and key.lower() in name.lower():
            return peak
    return None


# ---------------------------------------------------------------------------------------------
# Inputs (DL19, untimed)
# ---------------------------------------------------------------------------------------------
def dl19_pairs() -> list[tuple[str, str, str, str]]:
    """Every (query, BM25 candidate) of DL19 in the run file's order, with their texts."""
    docs = {d: doc_text(t, x) for d, t, x in read_corpus()}
    queries = read_queries()
    return [(q, d, queries[q], docs[d]) for q, d, _ in read_run()]


def write_training_inputs(folder: Path, samples: int, negatives: int) -> int:
    """``scores.parquet`` in irflow's teacher-scores schema: DL19 (query, relevant passage)
    pairs with ``negatives`` non-relevant BM25 candidates (the BM25 scores standing in for a
    teacher's), shuffled, the first ``samples``; plus corpus and queries Parquet files."""
    import pyarrow as pa

    from irflow.training_data.artifacts import SCORES_SCHEMA, write_table

    qrels, run = read_qrels(), {}
    for qid, docid, score in read_run():
        run.setdefault(qid, []).append((docid, score))
    rng = random.Random(0)
    rows: dict[str, list] = {name: [] for name in SCORES_SCHEMA.names}
    for qid in sorted(run):
        scored, judged = dict(run[qid]), qrels.get(qid, {})
        pool = [(d, s) for d, s in run[qid] if judged.get(d, 0) < 2]
        for pos in sorted(d for d, label in judged.items() if label >= 2 and d in scored):
            picked = rng.sample(pool, min(negatives, len(pool)))
            rows["query_id"].append(qid)
            rows["pos_id"].append(pos)
            rows["pos_score"].append(scored[pos])
            rows["neg_ids"].append([d for d, _ in picked])
            rows["neg_scores"].append([s for _, s in picked])
    order = list(range(len(rows["query_id"])))
    rng.shuffle(order)
    order = order[:samples]
    table = pa.table({k: [v[i] for i in order] for k, v in rows.items()}, schema=SCORES_SCHEMA)
    meta = {"artifact": "teacher-scores", "score_kind": "bm25", "teacher": {"name": "bm25"}}
    write_table(folder / "scores.parquet", table, SCORES_SCHEMA, meta)
    write_corpus_and_queries(folder, read_corpus(), read_queries())
    return table.num_rows


def training_texts(folder: Path) -> list[tuple[str, list[str]]]:
    """(query text, [positive text, negative texts...]) of every sample of scores.parquet."""
    import pyarrow.parquet as pq

    docs = {d: doc_text(t, x) for d, t, x in read_corpus()}
    queries = read_queries()
    table = pq.read_table(folder / "scores.parquet").to_pylist()
    return [
        (queries[r["query_id"]], [docs[r["pos_id"]], *map(docs.get, r["neg_ids"])]) for r in table
    ]


def write_decoder_base(folder: Path, size: dict[str, int]) -> Path:
    """A random Llama and a byte-level BPE tokenizer trained on DL19 text (plus the reranking
    prompt's words, so 'yes' and 'no' are single tokens)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = folder / "decoder-base"
    lines = [text for *_, text in read_corpus()[:1000]]
    lines += [q for q in read_queries().values()]
    lines += ["Query: Document: Answer: Is the document relevant to the query? yes no"] * 3000
    lines += ["yes\nno\n", " yes", " no"] * 3000
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(
        lines,
        trainers.BpeTrainer(
            vocab_size=size["vocab"],
            special_tokens=[EOS],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=EOS, pad_token=EOS)
    tokenizer.save_pretrained(out)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=size["hidden"],
        intermediate_size=int(size["hidden"] * 8 / 3) // 64 * 64 or 2 * size["hidden"],
        num_hidden_layers=size["layers"],
        num_attention_heads=size["heads"],
        num_key_value_heads=size["kv_heads"],
        max_position_embeddings=512,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).save_pretrained(out)
    return out


# ---------------------------------------------------------------------------------------------
# The checks
# ---------------------------------------------------------------------------------------------
def _teacher(ctx: Context, kind: str, model_dir: Path, device: str | None = None):
    from irflow.models import ModelRef
    from irflow.training_data.teacher import TeacherSpec, load_teacher

    spec = TeacherSpec(
        name=model_dir.name, kind=kind, model=ModelRef(model_dir.name, path=str(model_dir))
    )
    return load_teacher(spec, device or ctx.device)


def _score_pairs(ctx: Context, kind: str, model_dir: Path) -> dict[str, Any]:
    import numpy as np

    from irflow.batching import Counters

    teacher = _teacher(ctx, kind, model_dir)
    pairs = ctx.pairs[: ctx.sizes["teacher_pairs"]]
    queries, docs = [p[2] for p in pairs], [p[3] for p in pairs]
    teacher.score(queries[:8], docs[:8])  # warm-up: kernels, allocator
    teacher.counters = Counters()
    scores, seconds = timed(ctx, lambda: teacher.score(queries, docs))
    if not np.isfinite(scores).all():
        raise RuntimeError("non-finite scores")
    inner = teacher.model
    return {
        "timed_s": seconds,
        "counts": {"pairs": len(pairs)},
        "tokens": teacher.counters.tokens,
        "params": non_embedding_params(inner),
        "flop_factor": 2,
        "details": {
            "model": model_dir.name,
            "dtype": str(next(inner.parameters()).dtype),
            "counters": teacher.counters.as_dict(),
            "score_mean": float(np.mean(scores)),
        },
    }


def check_teacher_bi(ctx: Context) -> dict[str, Any]:
    return _score_pairs(ctx, "bi-encoder", MODELS / ctx.sizes["bi_teacher_model"])


def check_teacher_cross(ctx: Context) -> dict[str, Any]:
    return _score_pairs(ctx, "cross-encoder", MINILM)


def check_dense(ctx: Context) -> dict[str, Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from irflow.batching import token_lengths
    from irflow.data import CORPUS_SCHEMA
    from irflow.dense import dense_retrieve, encode_corpus
    from irflow.models import ModelRef, load_sentence_transformer

    model_dir = MODELS / ctx.sizes["encode_model"]
    model = load_sentence_transformer(ModelRef(model_dir.name, path=str(model_dir)), ctx.device)
    docs = read_corpus()[: ctx.sizes["encode_docs"]]
    corpus = ctx.folder / "dense-corpus.parquet"
    pq.write_table(
        pa.table(
            {k: [d[i] for d in docs] for i, k in enumerate(CORPUS_SCHEMA.names)},
            schema=CORPUS_SCHEMA,
        ),
        corpus,
    )
    queries = read_queries()
    model.encode(["warm up"] * 4)
    emb_dir = ctx.folder / "dense-embeddings"
    _, encode_s = timed(ctx, lambda: encode_corpus(model, str(corpus), str(emb_dir)))
    run, retrieve_s = timed(ctx, lambda: dense_retrieve(model, str(emb_dir), queries, k=10))
    if len(run) != len(queries) or any(len(hits) != min(10, len(docs)) for hits in run.values()):
        raise RuntimeError("dense_retrieve did not return the top 10 of every query")
    doc_tokens = sum(token_lengths(model, [doc_text(t, x) for _, t, x in docs]))
    query_tokens = sum(token_lengths(model, list(queries.values())))
    return {
        "timed_s": encode_s + retrieve_s,
        "counts": {"docs": len(docs), "queries": len(queries)},
        "tokens": doc_tokens + query_tokens,
        "params": non_embedding_params(model),
        "flop_factor": 2,
        "details": {
            "model": model_dir.name,
            "encode_s": encode_s,
            "retrieve_s": retrieve_s,
            "docs_per_s": len(docs) / encode_s,
            "dtype": str(next(model.parameters()).dtype),
        },
    }


def _student_tokens(folder: Path, kind: str, max_length: int) -> float:
    """Mean tokens one training sample runs through the model (truncated at max_length)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(MINILM))
    per_sample = []
    for query, docs in training_texts(folder):
        if kind == "cross-encoder":
            enc = tokenizer([query] * len(docs), docs, truncation=True, max_length=max_length)
            per_sample.append(sum(len(ids) for ids in enc.input_ids))
        else:
            enc = tokenizer([query, *docs], truncation=True, max_length=max_length)
            per_sample.append(sum(len(ids) for ids in enc.input_ids))
    return sum(per_sample) / len(per_sample)


def _train_student(
    ctx: Context, kind: str, samples: int, optimizer: str = "adamw", name: str | None = None
) -> dict[str, Any]:
    from transformers import AutoModel

    from irflow.students import StudentTrainingSpec
    from irflow.students.train import train_student

    s = ctx.sizes
    name = name or kind
    folder = ctx.folder / f"train-{name}"
    folder.mkdir()
    write_training_inputs(folder, samples, s["student_negatives"])
    spec = StudentTrainingSpec.from_config(
        {
            "objective": {"name": "margin_mse"},
            "batch_size": s["student_batch"],
            "num_negatives": s["student_negatives"],
            "max_length": s["student_max_length"],
            "epochs": 1,
            "optimizer": {"name": optimizer, "lr": 2e-5},
            "seed": 0,
            "bf16": True,  # takes effect on CUDA only
        }
    )
    stats = train_student(
        kind, spec, folder / "scores.parquet", folder / "queries.parquet",
        folder / "corpus.parquet", MINILM, folder / "model", None, folder / "curves.jsonl",
        device=ctx.device,
    )  # fmt: skip
    if ctx.cuda and not stats["bf16"]:
        raise RuntimeError("trained without bf16 on CUDA")
    if stats["mean_loss"] != stats["mean_loss"]:
        raise RuntimeError("the loss is NaN")
    seen, seconds = stats["samples_seen"], stats["train_seconds"]
    tokens = _student_tokens(folder, kind, s["student_max_length"]) * seen
    params = non_embedding_params(AutoModel.from_pretrained(str(MINILM)))
    return {
        "timed_s": seconds,
        "counts": {"samples": seen, "pairs": seen * stats["pairs_per_sample"]},
        "tokens": tokens,
        "params": params,
        "flop_factor": 6,
        "details": {
            k: stats[k]
            for k in (
                "steps",
                "mean_loss",
                "final_loss",
                "bf16",
                "optimizer",
                "device",
                "params_total",
                "params_trainable",
            )
        },  # fmt: skip
    }


def check_student_cross(ctx: Context) -> dict[str, Any]:
    return _train_student(ctx, "cross-encoder", ctx.sizes["student_samples"])


def check_student_bi(ctx: Context) -> dict[str, Any]:
    return _train_student(ctx, "bi-encoder", ctx.sizes["student_samples"])


def check_adamw8bit(ctx: Context) -> dict[str, Any]:
    if importlib.util.find_spec("bitsandbytes") is None:
        raise Skip("bitsandbytes not installed")
    return _train_student(
        ctx, "bi-encoder", ctx.sizes["adamw8bit_samples"], "adamw8bit", name="adamw8bit"
    )


def _train_decoder(ctx: Context, adapter: str) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from irflow.decoder.train import train_unified

    s = ctx.sizes
    base = ctx.folder / "decoder-base"
    if not base.is_dir():
        write_decoder_base(ctx.folder, s["decoder"])
    folder = ctx.folder / f"decoder-{adapter}"
    folder.mkdir()
    samples = 4 * s["decoder_batch"] * s["decoder_steps"]
    write_training_inputs(folder, samples, s["decoder_negatives"])
    steps, batch, negatives = s["decoder_steps"], s["decoder_batch"], s["decoder_negatives"]
    lq, ld, lr = s["decoder_query_length"], s["decoder_document_length"], s["decoder_rerank_length"]
    spec = {
        "adapter": {"kind": adapter, "r": 8, "alpha": 16, "dropout": 0.05},
        "embedding": {"query_template": "query: {query}", "max_query_length": lq,
                      "max_document_length": ld, "batch_size": batch, "num_negatives": negatives},
        "reranking": {"max_length": lr, "batch_size": batch, "num_negatives": negatives},
        "training": {"optimizer": "adamw", "stages": [
            {"name": "embed", "tasks": ["embed"], "steps": steps, "lr": 1e-4},
            {"name": "joint", "tasks": ["embed", "rerank"], "steps": steps, "lr": 5e-5},
        ]},
    }  # fmt: skip
    stats = train_unified(
        spec, folder / "scores.parquet", folder / "queries.parquet", folder / "corpus.parquet",
        base, folder / "model", folder / "diagnostics", device=ctx.device,
    )  # fmt: skip
    for stage in stats["stages"]:
        for task, loss in stage["last_loss"].items():
            if loss != loss:
                raise RuntimeError(f"stage {stage['name']}: the {task} loss is NaN")
    # Tokens (estimated): per sample, the query and its 1 + negatives documents (embedding) or
    # its 1 + negatives (query, document) prompts (reranking), at their truncated lengths.
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    texts = training_texts(folder)

    def length(text: str, cap: int) -> int:
        return min(len(tokenizer(text, add_special_tokens=False).input_ids) + 4, cap)

    embed_tokens = sum(
        length(q, lq) + sum(length(d, ld) for d in ds[: 1 + negatives]) for q, ds in texts
    ) / len(texts)
    rerank_tokens = sum(
        sum(min(length(q, lr) + length(d, lr) + 20, lr) for d in ds[: 1 + negatives])
        for q, ds in texts
    ) / len(texts)
    step_tokens = {"embed": batch * embed_tokens, "rerank": batch * rerank_tokens}
    tokens = sum(
        stage["steps"] * sum(step_tokens[t] for t in stage["tasks"]) for stage in stats["stages"]
    )
    seconds = sum(stage["seconds"] for stage in stats["stages"])
    params = non_embedding_params(AutoModelForCausalLM.from_pretrained(str(base)))
    examples = sum(stage["steps"] * batch * len(stage["tasks"]) for stage in stats["stages"])
    return {
        "timed_s": seconds,
        "counts": {"samples": examples},
        "tokens": tokens,
        "params": params,
        "flop_factor": 6,
        "details": {
            "adapter": adapter,
            "trainable_parameters": stats["trainable_parameters"],
            "total_parameters": stats["total_parameters"],
            "stages": [
                {k: st[k] for k in ("name", "tasks", "steps", "seconds", "last_loss")}
                for st in stats["stages"]
            ],
            "tokens_estimated": True,
        },
    }


def check_decoder_lora(ctx: Context) -> dict[str, Any]:
    return _train_decoder(ctx, "lora")


def check_decoder_moe(ctx: Context) -> dict[str, Any]:
    return _train_decoder(ctx, "moe-lora")


def check_bf16_sdpa(ctx: Context) -> dict[str, Any]:
    import torch

    from irflow.decoder.base import load_base
    from irflow.models import ModelRef, load_sentence_transformer

    model = load_sentence_transformer(ModelRef("minilm", path=str(MINILM)), ctx.device)
    inner = model[0].auto_model
    found = {
        "sentence_transformer": (
            str(next(inner.parameters()).dtype),
            inner.config._attn_implementation,
        )
    }
    base = ctx.folder / "decoder-base"
    if not base.is_dir():
        write_decoder_base(ctx.folder, ctx.sizes["decoder"])
    llama, _ = load_base(base, ctx.device)
    found["decoder_base"] = (str(next(llama.parameters()).dtype), llama.config._attn_implementation)
    for what, (dtype, attention) in found.items():
        if dtype != str(torch.bfloat16) or attention != "sdpa":
            raise RuntimeError(f"{what} loaded as {dtype} with {attention} attention")
    return {"details": {k: {"dtype": v[0], "attention": v[1]} for k, v in found.items()}}


def check_flash(ctx: Context) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    b, h, n, d, repeats = 16, 16, 1024, 64, 20
    gen = torch.Generator(device=ctx.device).manual_seed(0)
    q, k, v = (
        torch.randn(b, h, n, d, device=ctx.device, dtype=torch.bfloat16, generator=gen)
        for _ in range(3)
    )
    with sdpa_kernel([SDPBackend.MATH]):
        reference = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True)
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        diff = (out.float() - reference).abs().max().item()
        _, seconds = timed(
            ctx,
            lambda: [
                F.scaled_dot_product_attention(q, k, v, is_causal=True) for _ in range(repeats)
            ],
        )
    if diff > 2e-2:
        raise RuntimeError(f"flash attention differs from the math kernel by {diff:.3g}")
    # Causal attention: half of the 4 b h n^2 d FLOP of QK^T and PV.
    flop = repeats * 2 * b * h * n * n * d
    return {
        "timed_s": seconds,
        "counts": {},
        "tokens": repeats * b * n,
        "flop": flop,
        "details": {"shape": [b, h, n, d], "causal": True, "max_abs_diff_vs_math_fp32": diff},
    }


def check_agreement(ctx: Context) -> dict[str, Any]:
    import numpy as np
    from scipy.stats import kendalltau

    by_query: dict[str, list[tuple[str, str, str, str]]] = {}
    for pair in ctx.pairs:
        by_query.setdefault(pair[0], []).append(pair)
    chosen = [by_query[q][:AGREEMENT_DEPTH] for q in sorted(by_query)[:AGREEMENT_QUERIES]]
    pairs = [p for group in chosen for p in group]
    queries, docs = [p[2] for p in pairs], [p[3] for p in pairs]
    cpu = _teacher(ctx, "bi-encoder", MINILM, device="cpu").score(queries, docs)
    if ctx.cuda:
        device_scores = _teacher(ctx, "bi-encoder", MINILM).score(queries, docs)
    else:  # a second, separately loaded model: the check's own code path, CPU against CPU
        device_scores = _teacher(ctx, "bi-encoder", MINILM, device="cpu").score(queries, docs)
    diff = float(np.max(np.abs(cpu - device_scores)))
    taus, start = [], 0
    for group in chosen:
        stop = start + len(group)
        taus.append(float(kendalltau(cpu[start:stop], device_scores[start:stop]).statistic))
        start = stop
    result = {
        "pairs": len(pairs),
        "queries": len(chosen),
        "compared": f"cpu fp32 vs {ctx.device} {'bf16' if ctx.cuda else 'fp32'}",
        "max_abs_diff": diff,
        "tolerance": AGREEMENT_TOLERANCE,
        "kendall_tau_per_query": taus,
        "kendall_tau_mean": float(np.mean(taus)),
        "kendall_tau_min": float(np.min(taus)),
    }
    if not ctx.cuda:
        result["note"] = "no GPU in this run: CPU compared with CPU (both fp32)"
    if len(pairs) != AGREEMENT_QUERIES * AGREEMENT_DEPTH:
        raise RuntimeError(f"{len(pairs)} pairs instead of {AGREEMENT_QUERIES * AGREEMENT_DEPTH}")
    if diff > AGREEMENT_TOLERANCE:
        raise RuntimeError(f"max abs difference {diff:.3g} exceeds {AGREEMENT_TOLERANCE}")
    return {"counts": {"pairs": len(pairs)}, "details": result}


CHECKS = [
    Check("teacher-bi-encoder", "bi-encoder teacher scoring DL19 pairs", check_teacher_bi),
    Check("teacher-cross-encoder", "cross-encoder teacher scoring DL19 pairs", check_teacher_cross),
    Check("dense-encode-retrieve", "encode_corpus + dense_retrieve (DL19)", check_dense),
    Check("student-cross-encoder", "train_student cross-encoder, margin_mse", check_student_cross),
    Check("student-bi-encoder", "train_student bi-encoder, margin_mse", check_student_bi),
    Check("student-adamw8bit", "train_student bi-encoder with AdamW8bit", check_adamw8bit, True),
    Check("decoder-lora", "train_unified LoRA, embed then embed+rerank", check_decoder_lora),
    Check("decoder-moe-lora", "train_unified MoE-LoRA, embed then embed+rerank", check_decoder_moe),
    Check("bf16-sdpa-load", "GPU loading: bf16 weights, SDPA attention", check_bf16_sdpa, True),
    Check("flash-attention", "SDPA flash kernel, bf16, vs math kernel", check_flash, True),
    Check("agreement", "CPU fp32 vs device bi-encoder scores, 200 DL19 pairs", check_agreement),
]


# ---------------------------------------------------------------------------------------------
# Running and reporting
# ---------------------------------------------------------------------------------------------
def run_check(check: Check, ctx: Context, peak: float | None) -> dict[str, Any]:
    row: dict[str, Any] = {"name": check.name, "what": check.what}
    if check.gpu_only and not ctx.cuda:
        return {**row, "status": "skipped: GPU-only"}
    print(f"[gpu_check] {check.name} ...", flush=True)
    was_reset = reset_peak(ctx.cuda)
    start = time.perf_counter()
    try:
        out = check.run(ctx)
        row["status"] = "ok"
    except Skip as reason:
        out, row["status"] = {}, f"skipped: {reason}"
    except Exception as err:  # every failure is reported, and the run goes on
        out = {}
        row["status"] = (
            f"failed: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        )
        row["traceback"] = traceback.format_exc()[-6000:]
    sync(ctx)
    row["wall_s"] = time.perf_counter() - start
    if row["status"] == "ok":
        row.update(peak_memory(ctx.cuda, was_reset))
    timed_s = out.get("timed_s")
    if timed_s:
        row["timed_s"] = timed_s
        row["throughput"] = {f"{k}_per_s": v / timed_s for k, v in out.get("counts", {}).items()}
        if out.get("tokens"):
            row["tokens"] = out["tokens"]
            row["throughput"]["tokens_per_s"] = out["tokens"] / timed_s
        flop = out.get("flop")
        if flop is None and out.get("params") and out.get("tokens"):
            row["params_non_embedding"] = out["params"]
            row["flop_factor"] = out["flop_factor"]
            flop = out["flop_factor"] * out["params"] * out["tokens"]
        if flop:
            row["flop_per_s"] = flop / timed_s
            row["mfu"] = row["flop_per_s"] / peak if peak and ctx.cuda else None
    if "details" in out:
        row["details"] = out["details"]
    print(f"[gpu_check] {check.name}: {row['status']} ({row['wall_s']:.1f} s)", flush=True)
    return row


def device_slug(device: str) -> str:
    if not device.startswith("cuda"):
        return "cpu"
    import torch

    return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(0).lower()).strip("-")


def _fmt(value: float | None, scale: float = 1.0, digits: int = 1) -> str:
    return "" if value is None else f"{value / scale:,.{digits}f}"


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = title_markdown(f"GPU check: {report['device_name']}", "gpu_check.py", report)
    peak = report["bf16_peak_flop_per_s"]
    mfu_against = f"{peak / 1e12:.0f} TFLOP/s dense bf16" if peak else "no known peak (blank)"
    memory = (
        "peak RSS of the process during the check"
        if report["device"] == "cpu"
        else "`torch.cuda.max_memory_allocated` during the check"
    )
    size = "quick (CI)" if report["quick"] else "full"
    how = "forced with --cpu" if report["forced_cpu"] else "auto"
    lines += [
        f"Every model path once at {size} size, on `{report['device']}` ({how}). Wall: the "
        "whole check, model loading included; rates, FLOP/s and MFU: the timed part (scoring, "
        "encoding + retrieval, training steps). FLOP: 2 x non-embedding params x tokens for "
        f"inference, 6 x for training (LoRA: an upper bound). MFU against {mfu_against}. "
        f"Peak MB: {memory}.",
        "",
        "| check | status | wall s | timed s | throughput | tokens/s | model TFLOP/s | MFU "
        "| peak MB |",
        "|---|---|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in report["checks"]:
        tput = r.get("throughput", {})
        rates = ", ".join(
            f"{v:,.1f} {k.removesuffix('_per_s')}/s" for k, v in tput.items() if k != "tokens_per_s"
        )
        mem = r.get("peak_gpu_mb", r.get("peak_rss_mb"))
        mfu = r.get("mfu")
        cells = [
            r["name"],
            r["status"] if len(r["status"]) <= 60 else r["status"][:57] + "...",
            _fmt(r.get("wall_s")),
            _fmt(r.get("timed_s"), digits=2),
            rates,
            _fmt(tput.get("tokens_per_s"), digits=0),
            _fmt(r.get("flop_per_s"), 1e12, 3),
            "" if mfu is None else f"{100 * mfu:.1f}%",
            _fmt(mem, digits=0),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    agreement = next((r for r in report["checks"] if r["name"] == "agreement"), {})
    if "details" in agreement:
        a = agreement["details"]
        lines += [
            "",
            f"**Agreement** ({a['compared']}, {a['pairs']} pairs, {a['queries']} queries x "
            f"{a['pairs'] // a['queries']}): max abs score difference {a['max_abs_diff']:.2e} "
            f"(tolerance {a['tolerance']:g}); Kendall's tau per query: mean "
            f"{a['kendall_tau_mean']:.4f}, min {a['kendall_tau_min']:.4f}."
            + (f" {a['note'][0].upper()}{a['note'][1:]}." if "note" in a else ""),
        ]
    failed = [r for r in report["checks"] if r["status"].startswith("failed")]
    for r in failed:
        lines += ["", f"**{r['name']}** {r['status']}"]
    lines += [
        "",
        "## Machine",
        "",
        f"- CPU: {m['cpu_model']}, {m['logical_cpus']} logical CPUs ({m['usable_cpus']} usable; "
        f"`nproc` {report['nproc']}), memory {m['memory_gb']} GB; GPU: {m['gpu'] or 'none'}",
        f"- torch {m['torch']} ({m['torch_threads']} threads), transformers {m['transformers']}, "
        f"sentence-transformers {m['sentence_transformers']}, Python {m['python']}",
        f"- Load average (1, 5, 15 min) before / after: {report['load_before']} / "
        f"{report['load_after']} (other work on the CPUs inflates CPU wall times)",
        f"- Total wall time {report['total_wall_s']:.0f} s",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu", action="store_true", help="force the CPU (GPU-only checks skip)")
    parser.add_argument("--quick", action="store_true", help="fewer samples (the CI mode)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the results go")
    parser.add_argument("--only", nargs="+", choices=[c.name for c in CHECKS], help="these checks")
    args = parser.parse_args()
    if args.cpu:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch is imported: no CUDA at all
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.path.insert(0, str(ROOT / "src"))
    missing = [p for p in (MINILM, MPNET, DATA) if not p.is_dir()]
    if missing:
        sys.exit(
            f"missing: {', '.join(map(str, missing))} "
            "(the models: scripts/setup.sh; the data: ../shared/data)"
        )

    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    device = "cuda" if torch.cuda.is_available() and not args.cpu else "cpu"
    os.environ["IRFLOW_DEVICE"] = device
    name = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    peak = bf16_peak(name) if device == "cuda" else None
    report = new_report(
        machine=machine(threads=torch.get_num_threads(), device=device),
        nproc=len(os.sched_getaffinity(0)),
        device=device,
        device_name=name,
        forced_cpu=args.cpu,
        quick=args.quick,
        sizes=SIZES["quick" if args.quick else "full"],
        bf16_peak_flop_per_s=peak,
        load_before=load_average(),
    )
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="irflow-gpu-check-") as tmp:
        ctx = Context(device, report["sizes"], Path(tmp), dl19_pairs())
        report["checks"] = [
            run_check(check, ctx, peak)
            for check in CHECKS
            if args.only is None or check.name in args.only
        ]
    report["total_wall_s"] = time.perf_counter() - began
    report["load_after"] = load_average()
    report["failed"] = [r["name"] for r in report["checks"] if r["status"].startswith("failed")]
    slug = device_slug(device)
    write_results(args.out, f"gpu_check-{slug}", report, markdown(report))
    print(json.dumps({r["name"]: r["status"] for r in report["checks"]}, indent=1))
    print(f"results: {args.out / f'gpu_check-{slug}.md'}; {report['total_wall_s']:.0f} s")
    return 1 if report["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
