"""Gradient caching and gradient accumulation of the unified decoder trainer.

Fast: a tiny random Llama (2 layers, hidden size 32, the byte-level BPE tokenizer of
``test_decoder_unified``) and an in-memory training set in which every sample has the same
number of hard negatives and every query two positives (so the InfoNCE mask of other known
positives is exercised). Gradients are compared parameter by parameter, every trainable
parameter, as the maximum absolute difference.

What is compared with what:

* dropout 0: the cached gradient (``mini_batch_size``) against the trainer's uncached one (the
  whole batch in one forward pass);
* dropout > 0: a batch encoded in one pass and in mini-batches draws different dropout masks,
  so the reference is the whole batch's loss over the mini-batches encoded *with* gradients,
  all held in memory, from the same seed: what gradient caching must reproduce. Without the
  random-state restore the cached gradient is off by orders of magnitude more (checked);
* accumulation: ``k`` batches of ``b`` against one batch of ``k x b`` for the reranking loss
  (a mean over pairs, equal when every sample has the same number of negatives); for InfoNCE
  with in-batch negatives they differ (checked), and the trainer has no switch that turns the
  in-batch negatives off.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from test_decoder_unified import WORDS, tiny_config, train_tokenizer

from irflow.decoder.spec import parse_spec
from irflow.io import InputError

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = train_tokenizer(folder)
    torch.manual_seed(3)
    config = tiny_config("llama", len(tokenizer), tokenizer.eos_token_id)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """12 samples over 6 queries (two positives each), 4 hard negatives per sample."""
    from irflow.data import CORPUS_SCHEMA, QUERIES_SCHEMA
    from irflow.training_data import SCORES_SCHEMA

    root = tmp_path_factory.mktemp("gradcache-data")
    rng = np.random.default_rng(1)
    docs = {f"d{i}": " ".join(rng.choice(WORDS, 4 + i % 9)) for i in range(30)}
    queries = {f"q{i}": " ".join(rng.choice(WORDS, 2 + i % 4)) for i in range(6)}
    pq.write_table(
        pa.table({"doc_id": list(docs), "title": [""] * len(docs), "text": list(docs.values())},
                 schema=CORPUS_SCHEMA), root / "corpus.parquet")  # fmt: skip
    pq.write_table(pa.table({"query_id": list(queries), "text": list(queries.values())},
                            schema=QUERIES_SCHEMA), root / "queries.parquet")  # fmt: skip
    rows = {"query_id": [], "pos_id": [], "pos_score": [], "neg_ids": [], "neg_scores": []}
    for i in range(12):
        rows["query_id"].append(f"q{i % 6}")
        rows["pos_id"].append(f"d{i}")
        rows["pos_score"].append(1.0)
        negs = [f"d{12 + (i * 3 + k) % 18}" for k in range(4)]
        rows["neg_ids"].append(negs)
        rows["neg_scores"].append([0.0] * 4)
    pq.write_table(pa.table(rows, schema=SCORES_SCHEMA), root / "samples.parquet")
    return {"samples": root / "samples.parquet", "queries": root / "queries.parquet",
            "corpus": root / "corpus.parquet"}  # fmt: skip


def spec_dict(adapter: dict | None = None, **sections) -> dict:
    spec = {
        "adapter": {"r": 4, "alpha": 8, "dropout": 0.0, **(adapter or {})},
        "embedding": {"max_query_length": 48, "max_document_length": 24, "batch_size": 5,
                      "num_negatives": 3},
        "reranking": {"max_length": 64, "batch_size": 4, "num_negatives": 2,
                      "ranknet_weight": 0.5},
        "training": {"optimizer": "adamw", "stages": [
            {"name": "joint", "tasks": ["embed", "rerank"], "steps": 1, "lr": 1e-3},
        ]},
    }  # fmt: skip
    for section, values in sections.items():
        spec[section] = {**spec[section], **values}
    return spec


def make_trainer(tiny_llama: Path, files, spec: dict, dtype=torch.float64):
    """A trainer in training mode whose adapter weights (B included) are all non-zero, the
    model in ``dtype`` (float64 by default: the comparisons test the algebra, not float32
    rounding, which is checked separately)."""
    from irflow.decoder.base import load_base
    from irflow.decoder.checkpoint import build_model
    from irflow.decoder.samples import read_training_set
    from irflow.decoder.train import Trainer

    parsed = parse_spec(spec)
    data = read_training_set(files["samples"], files["queries"], files["corpus"])
    base, tokenizer = load_base(tiny_llama, "cpu")
    model = build_model(base, tokenizer, parsed)
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    model.to(dtype).train()
    return Trainer(model, parsed, data, "cpu")


def with_mini_batch(trainer, task: str, mini: int | None):
    section = "embedding" if task == "embed" else "reranking"
    spec = trainer.spec
    return dataclasses.replace(
        spec, **{section: dataclasses.replace(getattr(spec, section), mini_batch_size=mini)}
    )


def gradient(trainer, task: str, repeats: int = 1, seed: int = 11):
    """(every trainable parameter's ``.grad``, loss, aux) after the task's next ``repeats``
    batches (as :meth:`Trainer.task_gradient`, in the parameters' dtype), from a fixed sampler
    position and torch seed."""
    sampler = trainer.samplers[task]
    state = sampler.state_dict()
    torch.manual_seed(seed)
    loss = aux = 0.0
    for _ in range(repeats):
        one, extra = trainer.micro_batch(task, repeats)
        loss, aux = loss + one / repeats, aux + (extra or 0.0) / repeats
    grads = [p.grad.detach().clone() for p in trainer.groups.params]
    trainer.groups.zero()
    sampler.load_state_dict(state)
    return grads, loss, aux


def max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """Largest absolute difference over every trainable parameter's gradient."""
    assert len(a) == len(b) and all(x.shape == y.shape for x, y in zip(a, b, strict=True))
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))


def max_abs(grads: list[torch.Tensor]) -> float:
    return max(float(g.abs().max()) for g in grads)


def reference_in_minibatches(trainer, mini: int, seed: int = 11):
    """The whole embedding batch's loss, its queries and documents encoded ``mini`` rows at a
    time with gradients (every activation kept), backpropagated once: the gradient that
    gradient caching must reproduce, dropout masks included. The MoE load-balancing term is
    averaged over the mini-batches of each part, then over the two parts."""
    model, weight = trainer.model, trainer.spec.adapter.aux_loss_weight
    sampler = trainer.samplers["embed"]
    state = sampler.state_dict()
    torch.manual_seed(seed)
    batch = sampler.next(trainer.data)
    sampler.load_state_dict(state)
    query_ids, document_ids, targets, exclude = trainer.embed_inputs(batch)
    encoded, aux_parts = [], []
    for rows in (query_ids, document_ids):
        chunks, auxes = [], []
        for i in range(0, len(rows), mini):
            chunks.append(model.embed_ids(rows[i : i + mini]))
            auxes.append(model.aux_loss())
        encoded.append(torch.cat(chunks))
        if auxes[0] is not None:
            aux_parts.append(torch.stack(auxes).mean())
    loss = trainer.embed_objective(*encoded, targets, exclude)
    objective = loss
    if aux_parts and weight > 0:
        objective = loss + weight * torch.stack(aux_parts).mean()
    objective.backward()
    grads = [p.grad.detach().clone() for p in trainer.groups.params]
    trainer.groups.zero()
    return grads, float(loss.detach()), torch.get_rng_state()


# ---------------------------------------------------------------------------------------------
# Gradient caching
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("adapter", "dtype"),
    [("lora", torch.float64), ("moe-lora", torch.float64), ("lora", torch.float32)],
)
def test_cached_embedding_gradient_equals_the_whole_batch_gradient(
    tiny_llama, files, adapter, dtype
):
    # Exact comparison needs no dropout (see the next test) and no per-mini-batch MoE term.
    trainer = make_trainer(
        tiny_llama, files, spec_dict({"kind": adapter, "aux_loss_weight": 0.0}), dtype
    )
    whole, whole_loss, _ = gradient(trainer, "embed")
    scale = max_abs(whole)
    assert all(float(g.abs().max()) > 0 for g in whole)  # every parameter has a gradient
    for mini in (1, 2, 4, 5):  # 5 queries, 20 documents: uneven last chunks for 2 and 4
        trainer.spec = with_mini_batch(trainer, "embed", mini)
        cached, cached_loss, _ = gradient(trainer, "embed")
        diff = max_diff(cached, whole)
        print(
            f"{adapter} {dtype} mini_batch_size {mini}: max |grad diff| {diff:.3g} "
            f"(max |grad| {scale:.3g})"
        )
        if dtype == torch.float64:
            assert diff < TOLERANCE, (mini, diff)
        else:  # float32: a sum of other rounding errors, relative to the gradient's size
            assert diff < TOLERANCE * scale, (mini, diff)
        assert cached_loss == pytest.approx(whole_loss, abs=1e-6)


@pytest.mark.parametrize("adapter", ["lora", "moe-lora"])
def test_cached_gradient_replays_the_dropout_masks(tiny_llama, files, adapter, monkeypatch):
    from irflow.decoder import train as train_module
    from irflow.decoder.adapters import expert_usage

    trainer = make_trainer(
        tiny_llama, files, spec_dict({"kind": adapter, "dropout": 0.1, "aux_loss_weight": 0.01})
    )
    mini = 2
    expert_usage(trainer.model.peft, reset=True)
    reference, reference_loss, reference_rng = reference_in_minibatches(trainer, mini)
    reference_usage = expert_usage(trainer.model.peft, reset=True)
    trainer.spec = with_mini_batch(trainer, "embed", mini)
    cached, cached_loss, aux = gradient(trainer, "embed")
    diff = max_diff(cached, reference)
    print(f"{adapter} dropout 0.1, mini_batch_size {mini}: max |grad diff| {diff:.3g}")
    assert diff < TOLERANCE
    assert cached_loss == pytest.approx(reference_loss, abs=1e-6)
    # The random state after the step is that after the first (no-grad) pass.
    assert torch.equal(torch.get_rng_state(), reference_rng)
    # The pass without gradients does not count toward expert usage.
    usage = expert_usage(trainer.model.peft, reset=True)
    assert [(r["count"], r["tokens"]) for r in usage] == [
        (r["count"], r["tokens"]) for r in reference_usage
    ]
    if adapter == "moe-lora":
        assert usage and aux > 0

    # Without restoring the random state the second pass draws other masks: far off.
    monkeypatch.setattr(train_module.RandState, "restore", lambda self: None)
    unrestored, _, _ = gradient(trainer, "embed")
    assert max_diff(unrestored, reference) > 100 * TOLERANCE


def test_cached_reranking_gradient_equals_the_whole_batch_gradient(tiny_llama, files):
    trainer = make_trainer(tiny_llama, files, spec_dict())
    whole, whole_loss, _ = gradient(trainer, "rerank")
    for mini in (1, 5, 12):  # 4 samples x 3 pairs
        trainer.spec = with_mini_batch(trainer, "rerank", mini)
        cached, cached_loss, _ = gradient(trainer, "rerank")
        diff = max_diff(cached, whole)
        print(f"rerank mini_batch_size {mini}: max |grad diff| {diff:.3g}")
        assert diff < TOLERANCE
        assert cached_loss == pytest.approx(whole_loss, abs=1e-6)


def test_cached_gradient_composes_with_gradient_checkpointing(tiny_llama, files):
    trainer = make_trainer(tiny_llama, files, spec_dict({"dropout": 0.1}))
    reference, _, _ = reference_in_minibatches(trainer, 2)
    base = trainer.model.peft.get_base_model()
    base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    trainer.spec = with_mini_batch(trainer, "embed", 2)
    cached, _, _ = gradient(trainer, "embed")
    assert max_diff(cached, reference) < TOLERANCE


# ---------------------------------------------------------------------------------------------
# Gradient accumulation
# ---------------------------------------------------------------------------------------------
def test_accumulated_reranking_batches_equal_one_large_batch(tiny_llama, files):
    large = make_trainer(tiny_llama, files, spec_dict(reranking={"batch_size": 6}))
    small = make_trainer(
        tiny_llama, files,
        spec_dict(reranking={"batch_size": 2}, training={"gradient_accumulation_steps": 3}),
    )  # fmt: skip
    stage = small.spec.training.stages[0]
    assert small.batches_per_step(stage, "rerank") == 3
    assert small.stage_batching(stage)["rerank"] == {
        "batch_size": 2, "batches_per_step": 3, "samples_per_step": 6, "mini_batch_size": None,
    }  # fmt: skip
    one, one_loss, _ = gradient(large, "rerank", 1)
    accumulated, accumulated_loss, _ = gradient(small, "rerank", 3)
    diff = max_diff(accumulated, one)
    print(f"rerank 3 x 2 accumulated vs 6: max |grad diff| {diff:.3g}")
    assert diff < TOLERANCE
    assert accumulated_loss == pytest.approx(one_loss, abs=1e-6)

    # InfoNCE: the same 6 queries in 3 batches of 2 see fewer in-batch negatives.
    large_e = make_trainer(tiny_llama, files, spec_dict(embedding={"batch_size": 6}))
    small_e = make_trainer(tiny_llama, files, spec_dict(embedding={"batch_size": 2}))
    one, one_loss, _ = gradient(large_e, "embed", 1)
    accumulated, accumulated_loss, _ = gradient(small_e, "embed", 3)
    assert max_diff(accumulated, one) > 100 * TOLERANCE
    assert accumulated_loss < one_loss  # fewer negatives: an easier task


def test_training_with_caching_and_accumulation_resumes_identically(tiny_llama, files, tmp_path):
    """MoE-LoRA, dropout, PCGrad, 8-bit AdamW, gradient caching for both tasks and
    accumulation, interrupted after a checkpoint and resumed in the same process."""
    from safetensors.torch import load_file

    from irflow.decoder.diagnostics import read_tsv
    from irflow.decoder.train import train_unified

    spec = spec_dict(
        {"kind": "moe-lora", "dropout": 0.1},
        embedding={"mini_batch_size": 2},
        reranking={"mini_batch_size": 5},
        training={
            "optimizer": {"name": "adamw8bit", "kwargs": {"min_8bit_size": 1}},
            "gradient_accumulation_steps": 2,
            "checkpoint_every_steps": 2,
            "stages": [
                {"name": "embed", "tasks": ["embed"], "steps": 2, "lr": 1e-3},
                {"name": "joint", "tasks": ["embed", "rerank"], "steps": 3, "lr": 1e-3,
                 "pcgrad": True, "ratio": {"embed": 1, "rerank": 2}},
            ],
        },
    )  # fmt: skip

    class Stop(Exception):
        pass

    def stop_at(step):
        if step == 3:
            raise Stop

    def train(out: Path, checkpoints=None, on_step=None):
        return train_unified(
            spec, files["samples"], files["queries"], files["corpus"], tiny_llama,
            out / "model", out / "diagnostics", device="cpu", checkpoint_dir=checkpoints,
            on_step=on_step,
        )  # fmt: skip

    whole_stats = train(tmp_path / "whole")
    joint = whole_stats["stages"][1]
    assert joint["gradient_accumulation_steps"] == 2
    assert joint["batching"]["embed"] == {
        "batch_size": 5, "batches_per_step": 2, "samples_per_step": 10, "mini_batch_size": 2,
    }  # fmt: skip
    assert joint["batching"]["rerank"]["batches_per_step"] == 4
    # Every sample drawn: (2 + 3) steps x 2 embed batches of 5; 3 steps x 4 rerank batches of 4.
    assert whole_stats["examples"] == {"embed": 50, "rerank": 48}

    checkpoints = tmp_path / "checkpoints"
    with pytest.raises(Stop):
        train(tmp_path / "stopped", checkpoints, stop_at)
    assert sorted(p.name for p in checkpoints.iterdir()) == ["run.json", "step-00000002.pt"]
    stats = train(tmp_path / "stopped", checkpoints)
    assert stats["resumed_from_step"] == 2
    assert stats["examples"] == whole_stats["examples"]
    whole = load_file(tmp_path / "whole" / "model" / "adapter_model.safetensors")
    resumed = load_file(tmp_path / "stopped" / "model" / "adapter_model.safetensors")
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    rows = [
        [
            {k: v for k, v in r.items() if k not in ("seconds", "cpu_seconds")}
            for r in read_tsv(tmp_path / run / "diagnostics" / "train_log.tsv")
        ]
        for run in ("whole", "stopped")
    ]
    assert rows[0] == rows[1] and len(rows[0]) == 5  # one row per optimizer step


# ---------------------------------------------------------------------------------------------
# Spec
# ---------------------------------------------------------------------------------------------
def test_new_keys_are_defaulted_and_checked():
    spec = parse_spec({})
    assert spec.embedding.mini_batch_size is None and spec.reranking.mini_batch_size is None
    assert spec.training.gradient_accumulation_steps == 1
    assert spec.as_dict()["training"]["gradient_accumulation_steps"] == 1
    parsed = parse_spec(
        {"embedding": {"batch_size": 1024, "mini_batch_size": 32},
         "training": {"gradient_accumulation_steps": 4}}
    )  # fmt: skip
    assert parsed.embedding.mini_batch_size == 32
    assert parsed.training.gradient_accumulation_steps == 4
    with pytest.raises(InputError, match=r"embedding.mini_batch_size: 16 is larger than "):
        parse_spec({"embedding": {"batch_size": 8, "mini_batch_size": 16}})
    with pytest.raises(InputError, match=r"embedding.mini_batch_size: expected an integer >= 1"):
        parse_spec({"embedding": {"mini_batch_size": 0}})
    with pytest.raises(InputError, match=r"reranking.mini_batch_size: 17 is larger than the pairs"):
        parse_spec({"reranking": {"batch_size": 4, "num_negatives": 3, "mini_batch_size": 17}})
    with pytest.raises(
        InputError, match=r"training.gradient_accumulation_steps: expected an integer >= 1"
    ):
        parse_spec({"training": {"gradient_accumulation_steps": 0}})
    with pytest.raises(InputError, match=r"training: unknown keys \['grad_accum'\]"):
        parse_spec({"training": {"grad_accum": 2}})
    with pytest.raises(InputError, match=r"training.stages\[0\]: unknown keys \['mini_batch"):
        parse_spec({"training": {"stages": [{"name": "a", "tasks": ["embed"], "steps": 1,
                                             "mini_batch_size": 4}]}})  # fmt: skip
