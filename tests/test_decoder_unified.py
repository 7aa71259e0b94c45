"""Unified decoder: adapters, pooling, yes/no scoring, PCGrad, training, diagnostics.

Fast: tiny randomly initialised Llama and Qwen3 models (2 layers, hidden size 32) with a
byte-level BPE tokenizer trained in a temporary folder on a few hand-written lines, so that
" yes"/" no" are single tokens (and, in one variant, "yes"/"no" without the space are not).
The pad token is the EOS token, as in SmolLM2 and Qwen3, so pooling cannot find the last token
from the pad id. Expectations are exact (``torch.equal``) where the computation is the same
and hand-computed where it is a formula.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from irflow.decoder.adapters import (
    MoELoraLinear,
    attach_adapters,
    expert_usage,
    load_adapters,
    moe_layers,
    save_adapters,
)
from irflow.decoder.checkpoint import build_model, load_unified, save_unified
from irflow.decoder.diagnostics import plot_diagnostics, read_tsv
from irflow.decoder.losses import bce, info_nce, matryoshka_info_nce, pcgrad, ranknet
from irflow.decoder.model import (
    answer_token_ids,
    last_token_index,
    pad_batch,
)
from irflow.decoder.spec import TASKS, parse_spec
from irflow.io import InputError

WORD_TEXT = """
the a of is what how why who to in on for and cat dog bird fish tree river city law court
protein cell gene drug virus heart brain blood study trial effect risk water fire sun moon
star query document relevant answer instruct given search retrieve passages that
"""
WORDS = WORD_TEXT.split()
EOS = "<|endoftext|>"


def train_tokenizer(folder: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    lines = []
    for i in range(200):
        lines.append(" ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(12)) + " yes no")
        lines.append("Query: Document: Answer: Is the document relevant to the query?")
        lines.append("yes\nno\n")
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=[EOS],
        initial_alphabet=alphabet,
        show_progress=False,
    )
    backend.train_from_iterator(lines, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=EOS, pad_token=EOS)
    tokenizer.save_pretrained(folder)
    return tokenizer


def merges_tokenizer(folder: Path, merges: list[tuple[str, str]]):
    """A byte-level BPE tokenizer with exactly the given merges (and nothing else)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {EOS: 0}
    for symbol in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[symbol] = len(vocab)
    for left, right in merges:
        vocab[left + right] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=EOS, pad_token=EOS)
    tokenizer.save_pretrained(folder)
    return tokenizer


def tiny_config(kind: str, vocab_size: int, eos_id: int):
    from transformers import LlamaConfig, Qwen3Config

    common = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
        bos_token_id=None,
        tie_word_embeddings=True,
    )
    if kind == "qwen3":
        return Qwen3Config(head_dim=8, **common)
    return LlamaConfig(**common)


@pytest.fixture(scope="module")
def tiny_bases(tmp_path_factory) -> dict[str, Path]:
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(1)
    out = {}
    for kind in ("llama", "qwen3"):
        folder = tmp_path_factory.mktemp(f"tiny-{kind}")
        tokenizer = train_tokenizer(folder)
        torch.manual_seed(3)
        config = tiny_config(kind, len(tokenizer), tokenizer.eos_token_id)
        AutoModelForCausalLM.from_config(config).save_pretrained(folder)
        out[kind] = folder
    return out


def load(folder: Path):
    from irflow.decoder.base import load_base

    model, tokenizer = load_base(folder, "cpu")
    return model.eval(), tokenizer


def small_spec(**overrides) -> dict:
    spec = {
        "adapter": {"r": 4, "alpha": 8, "dropout": 0.0},
        "embedding": {"max_query_length": 56, "max_document_length": 40, "batch_size": 3,
                      "num_negatives": 2},
        "reranking": {"max_length": 64, "batch_size": 2, "num_negatives": 2},
        "training": {"optimizer": "adamw", "stages": [
            {"name": "embed", "tasks": ["embed"], "steps": 1, "lr": 1e-3},
            {"name": "joint", "tasks": ["embed", "rerank"], "steps": 2, "lr": 1e-3},
        ]},
    }  # fmt: skip
    for section, values in overrides.items():
        spec[section] = {**spec.get(section, {}), **values}
    return spec


def randomize_adapters(model, seed: int = 5) -> None:
    """Give every adapter weight (B included, which starts at zero) a seeded random value."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)


def ids(tokenizer, texts):
    return [tokenizer(t, add_special_tokens=False).input_ids for t in texts]


# ---------------------------------------------------------------------------------------------
# Adapters
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["llama", "qwen3"])
@pytest.mark.parametrize("adapter", ["lora", "moe-lora"])
def test_adapters_at_initialisation_give_the_base_outputs(tiny_bases, kind, adapter):
    base, tokenizer = load(tiny_bases[kind])
    batch = pad_batch(ids(tokenizer, ["what is the cat", "river"]), tokenizer.pad_token_id)
    with torch.no_grad():
        expected = base(**batch).logits.clone()
    spec = parse_spec(small_spec(adapter={"kind": adapter, "dropout": 0.05}))
    model = build_model(base, tokenizer, spec).eval()
    if model.routing is not None:
        model.routing.task = "rerank"
    with torch.no_grad():
        got = model.peft(**batch).logits
    assert torch.equal(got, expected)
    assert sum(p.requires_grad for p in model.parameters()) > 0


def test_lora_targets_every_projection_with_the_configured_rank(tiny_bases):
    from peft.tuners.lora import LoraLayer

    base, tokenizer = load(tiny_bases["llama"])
    spec = parse_spec({})
    model = build_model(base, tokenizer, spec)
    layers = {n: m for n, m in model.peft.named_modules() if isinstance(m, LoraLayer)}
    assert sorted({n.rsplit(".", 1)[-1] for n in layers}) == sorted(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    assert len(layers) == 2 * 7
    layer = next(iter(layers.values()))
    assert layer.r["default"] == 16 and layer.scaling["default"] == 1.0
    assert layer.lora_dropout["default"].p == 0.05
    assert model.peft.peft_config["default"].task_type is None


def test_moe_lora_with_one_expert_equals_lora(tiny_bases):
    base_a, tokenizer = load(tiny_bases["llama"])
    base_b, _ = load(tiny_bases["llama"])
    lora = build_model(base_a, tokenizer, parse_spec(small_spec()), seed=11).eval()
    moe = build_model(
        base_b,
        tokenizer,
        parse_spec(small_spec(adapter={"kind": "moe-lora", "num_shared_experts": 1,
                                       "num_task_experts": 0, "top_k": 1})),
        seed=11,
    ).eval()  # fmt: skip
    assert len(moe_layers(moe.peft)) == 2 * 3
    lora_params = dict(lora.peft.named_parameters())
    # Same seed, same init: lora_A is drawn identically (routers use their own generator).
    for name, param in moe.peft.named_parameters():
        if "lora_A" in name:
            assert torch.equal(param, lora_params[name])
    randomize_adapters(lora.peft)
    with torch.no_grad():
        for name, param in moe.peft.named_parameters():
            if "lora_router" not in name and "lora_" in name:
                param.copy_(lora_params[name])
    texts = ["what is the cat", "river water fire sun moon"]
    for task in ("embed", "rerank"):
        batch = pad_batch(ids(tokenizer, texts), tokenizer.pad_token_id)
        moe.routing.task = task
        with torch.no_grad():
            assert torch.equal(moe.peft(**batch).logits, lora.peft(**batch).logits)


def test_routing_is_deterministic_for_a_seed_and_task_aware(tiny_bases):
    spec = parse_spec(small_spec(adapter={"kind": "moe-lora", "num_shared_experts": 1,
                                          "num_task_experts": 2, "top_k": 2}))  # fmt: skip

    def routers(seed):
        base, tokenizer = load(tiny_bases["qwen3"])
        model = build_model(base, tokenizer, spec, seed=seed).eval()
        return model, {n: m.lora_router["default"].weight.clone()
                       for n, m in moe_layers(model.peft)}  # fmt: skip

    first, weights_1 = routers(7)
    second, weights_2 = routers(7)
    _, weights_3 = routers(8)
    assert all(torch.equal(weights_1[n], weights_2[n]) for n in weights_1)
    assert not any(torch.equal(weights_1[n], weights_3[n]) for n in weights_1)

    x = torch.randn(3, 5, 32, generator=torch.Generator().manual_seed(0))
    name, layer_1 = moe_layers(first.peft)[0]
    layer_2 = dict(moe_layers(second.peft))[name]
    # Experts: 0 shared, 1-2 embed, 3-4 rerank.
    assert layer_1.moe_config["default"].expert_kinds() == ["shared", "embed", "embed",
                                                            "rerank", "rerank"]  # fmt: skip
    for task, banned in (("embed", [3, 4]), ("rerank", [1, 2])):
        first.routing.task = second.routing.task = task
        gates_1, probs_1 = layer_1.gates("default", x)
        gates_2, _ = layer_2.gates("default", x)
        assert torch.equal(gates_1, gates_2)
        assert torch.all(gates_1[..., banned] == 0) and torch.all(probs_1[..., banned] == 0)
        assert torch.equal((gates_1 > 0).sum(-1), torch.full((3, 5), 2))
        torch.testing.assert_close(gates_1.sum(-1), torch.ones(3, 5))
        # Hand check of one token: masked softmax, top-2, renormalised.
        logits = layer_1.lora_router["default"](x[0, 0])
        allowed = [e not in banned for e in range(5)]
        probs = torch.softmax(logits.masked_fill(~torch.tensor(allowed), -math.inf), -1)
        top = torch.topk(probs, 2)
        expected = torch.zeros(5)
        expected[top.indices] = top.values / top.values.sum()
        torch.testing.assert_close(gates_1[0, 0], expected)


def test_moe_lora_without_a_task_is_refused(tiny_bases):
    base, tokenizer = load(tiny_bases["llama"])
    model = build_model(base, tokenizer, parse_spec(small_spec(adapter={"kind": "moe-lora"})))
    batch = pad_batch(ids(tokenizer, ["cat"]), tokenizer.pad_token_id)
    with pytest.raises(RuntimeError, match="no task set"):
        model.peft(**batch)


def test_expert_usage_counts_real_tokens_only(tiny_bases):
    base, tokenizer = load(tiny_bases["llama"])
    spec = parse_spec(small_spec(adapter={"kind": "moe-lora", "top_k": 2}))
    model = build_model(base, tokenizer, spec).eval()
    batch_ids = ids(tokenizer, ["what is the cat", "dog"])
    real = sum(len(x) for x in batch_ids)
    with torch.no_grad():
        model.embed_ids(batch_ids)
    rows = expert_usage(model.peft, reset=True)
    assert {r["task"] for r in rows} == {"embed"}
    one = [r for r in rows if r["layer"] == 0 and r["module"] == "gate_proj"]
    assert [r["kind"] for r in one] == ["shared", "embed", "embed", "rerank", "rerank"]
    assert all(r["tokens"] == real for r in one)
    assert sum(r["count"] for r in one) == 2 * real  # top-2 slots per real token
    assert all(r["count"] == 0 for r in one if r["kind"] == "rerank")
    assert math.isclose(sum(r["fraction"] for r in one), 1.0)
    assert expert_usage(model.peft) == []  # reset


@pytest.mark.parametrize("adapter", ["lora", "moe-lora"])
def test_adapters_save_and_load_in_peft_format(tiny_bases, tmp_path, adapter):
    from peft import LoraConfig

    base, tokenizer = load(tiny_bases["llama"])
    spec = parse_spec(small_spec(adapter={"kind": adapter}))
    peft_model, routing = attach_adapters(base, spec.adapter, TASKS, seed=0)
    randomize_adapters(peft_model)
    peft_model.eval()
    batch = pad_batch(ids(tokenizer, ["what is the cat", "dog"]), tokenizer.pad_token_id)
    if routing:
        routing.task = "embed"
    with torch.no_grad():
        expected = peft_model(**batch).logits
    save_adapters(peft_model, tmp_path / "adapter")
    files = sorted(p.name for p in (tmp_path / "adapter").iterdir())
    assert "adapter_config.json" in files and "adapter_model.safetensors" in files
    assert ("moe_lora.json" in files) == (adapter == "moe-lora")
    config = LoraConfig.from_pretrained(str(tmp_path / "adapter"))
    assert config.r == 4 and config.task_type is None

    fresh, _ = load(tiny_bases["llama"])
    loaded, routing_2 = load_adapters(fresh, tmp_path / "adapter")
    if routing_2:
        routing_2.task = "embed"
        assert isinstance(dict(loaded.named_modules())[moe_layers(loaded)[0][0]], MoELoraLinear)
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, expected)


def test_plain_lora_adapter_loads_with_plain_peft(tiny_bases, tmp_path):
    from peft import PeftModel

    base, tokenizer = load(tiny_bases["llama"])
    spec = parse_spec(small_spec())
    peft_model, _ = attach_adapters(base, spec.adapter, TASKS)
    randomize_adapters(peft_model)
    peft_model.save_pretrained(str(tmp_path / "a"))
    fresh, _ = load(tiny_bases["llama"])
    loaded = PeftModel.from_pretrained(fresh, str(tmp_path / "a"))
    batch = pad_batch(ids(tokenizer, ["what is the cat"]), tokenizer.pad_token_id)
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, peft_model.eval()(**batch).logits)


# ---------------------------------------------------------------------------------------------
# Pooling, scoring, tokens
# ---------------------------------------------------------------------------------------------
def test_last_token_index_under_left_and_right_padding():
    right = pad_batch([[5, 6, 7], [8]], pad_id=0, side="right")
    left = pad_batch([[5, 6, 7], [8]], pad_id=0, side="left")
    assert right["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert left["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]]
    assert last_token_index(right["attention_mask"]).tolist() == [2, 0]
    assert last_token_index(left["attention_mask"]).tolist() == [2, 2]
    assert left["position_ids"].tolist() == [[0, 1, 2], [0, 0, 0]]
    assert right["position_ids"].tolist() == [[0, 1, 2], [0, 0, 0]]


@pytest.mark.parametrize("kind", ["llama", "qwen3"])
def test_eos_pooling_uses_the_true_last_token_with_either_padding(tiny_bases, kind):
    base, tokenizer = load(tiny_bases[kind])
    model = build_model(base, tokenizer, parse_spec(small_spec())).eval()
    randomize_adapters(model.peft)
    texts = ["what is the relevant cat in the river city", "dog", "a b"]
    batch_ids = model.prompter.document_ids(texts)
    assert all(row[-1] == tokenizer.eos_token_id for row in batch_ids)
    assert tokenizer.pad_token_id == tokenizer.eos_token_id
    with torch.no_grad():
        alone = torch.cat([model.embed_ids([row]) for row in batch_ids])
        right = model.embed_ids(batch_ids, side="right")
        left = model.embed_ids(batch_ids, side="left")
        # By hand: the final hidden state at the EOS of the unpadded sequence, normalised.
        hidden = model.decoder(input_ids=torch.tensor([batch_ids[1]])).last_hidden_state
    torch.testing.assert_close(right, alone, rtol=0, atol=1e-5)
    torch.testing.assert_close(left, alone, rtol=0, atol=1e-5)
    by_hand = torch.nn.functional.normalize(hidden[0, -1], dim=-1)
    torch.testing.assert_close(alone[1], by_hand, rtol=0, atol=1e-6)
    assert torch.allclose(alone.norm(dim=-1), torch.ones(3))


def test_yes_no_score_is_the_lm_head_logit_difference(tiny_bases):
    base, tokenizer = load(tiny_bases["llama"])
    model = build_model(base, tokenizer, parse_spec(small_spec())).eval()
    randomize_adapters(model.peft)
    pairs = model.prompter.pair_ids(["what is the cat", "dog"], ["the cat is a cat", "river"])
    yes = tokenizer.convert_tokens_to_ids("Ġyes")
    no = tokenizer.convert_tokens_to_ids("Ġno")
    assert (model.prompter.yes_id, model.prompter.no_id) == (yes, no)
    with torch.no_grad():
        scores = model.score_ids(pairs, side="left")
        for row, score in zip(pairs, scores, strict=True):
            logits = model.peft(input_ids=torch.tensor([row])).logits[0, -1]
            torch.testing.assert_close(score, logits[yes] - logits[no], rtol=0, atol=1e-5)


def test_answer_tokens_follow_the_template_ending(tmp_path):
    tokenizer = train_tokenizer(tmp_path / "t1")
    vocab = tokenizer.get_vocab()
    spaced = answer_token_ids(tokenizer, "Q: {query} D: {document}\nAnswer:")
    assert spaced == (vocab["Ġyes"], vocab["Ġno"], " yes", " no")
    bare = answer_token_ids(tokenizer, "Q: {query} D: {document}\nAnswer:\n")
    assert bare == (vocab["yes"], vocab["no"], "yes", "no")
    # "yes" alone is several tokens here: both answers fall back to the spaced form.
    spaced_only = merges_tokenizer(
        tmp_path / "t2", [("Ġ", "y"), ("Ġy", "e"), ("Ġye", "s"), ("Ġ", "n"), ("Ġn", "o")]
    )
    assert spaced_only.tokenize("yes") == ["y", "e", "s"]
    fallback = answer_token_ids(spaced_only, "Answer:\n")
    assert fallback == (*spaced_only.convert_tokens_to_ids(["Ġyes", "Ġno"]), " yes", " no")


def test_answer_tokens_error_clearly_when_not_single(tmp_path):
    chars = merges_tokenizer(tmp_path / "chars", [])
    with pytest.raises(InputError, match=r"not single, distinct tokens.*'Ġ', 'y', 'e', 's'"):
        answer_token_ids(chars, "Answer:")
    # "yes" is one token but "no" is not, in either form: refused, never mixed.
    half = merges_tokenizer(tmp_path / "half", [("y", "e"), ("ye", "s"), ("Ġ", "y"),
                                                ("Ġy", "e"), ("Ġye", "s")])  # fmt: skip
    with pytest.raises(InputError, match=r"'no' -> \['n', 'o'\]"):
        answer_token_ids(half, "Answer:")


def test_truncation_cuts_only_the_text(tiny_bases):
    base, tokenizer = load(tiny_bases["llama"])
    model = build_model(base, tokenizer, parse_spec(small_spec()))
    long_doc = " ".join(WORDS * 3)
    (row,) = model.prompter.pair_ids(["what is the cat"], [long_doc])
    assert len(row) <= 64
    tail = tokenizer("\nIs the document relevant to the query? Answer yes or no.\nAnswer:",
                     add_special_tokens=False).input_ids  # fmt: skip
    assert row[-len(tail) :] == tail
    (doc,) = model.prompter.document_ids([long_doc])
    assert len(doc) == 40 and doc[-1] == tokenizer.eos_token_id
    instruction = ("Instruct: Given a search query, retrieve relevant passages that answer the "
                   "query\nQuery: ")  # fmt: skip
    with pytest.raises(InputError, match="the template without its query is"):
        build_model(
            load(tiny_bases["llama"])[0],
            tokenizer,
            parse_spec(small_spec(embedding={"max_query_length": 24})),
        ).prompter.query_ids(["cat"])
    head = len(tokenizer(instruction, add_special_tokens=False).input_ids)
    spec = parse_spec(small_spec(embedding={"max_query_length": head + 4}))
    model = build_model(load(tiny_bases["llama"])[0], tokenizer, spec)
    full = instruction + "what is the relevant cat in the river city"
    (query,) = model.prompter.query_ids([full[len(instruction) :]])
    assert len(query) == head + 4 and query[-1] == tokenizer.eos_token_id
    text = tokenizer.decode(query[:-1])
    assert text.startswith(instruction + "what") and full.startswith(text) and text != full
    assert query[:-1] == tokenizer(text, add_special_tokens=False).input_ids  # natural tokens


# ---------------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------------
def test_pcgrad_projection_matches_a_hand_computation():
    g1, g2 = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])
    combined, projections = pcgrad([g1, g2])
    # g1 . g2 = -1 < 0: g1' = g1 + 1/2 g2 = (0.5, 0.5); g2' = g2 + 1/1 g1 = (0, 1).
    assert projections == 2
    assert torch.equal(combined, torch.tensor([0.5, 1.5]))
    agree, projections = pcgrad([torch.tensor([1.0, 2.0]), torch.tensor([3.0, -1.0])])
    assert projections == 0 and torch.equal(agree, torch.tensor([4.0, 1.0]))


def test_info_nce_bce_ranknet_by_hand():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    d = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    t = 0.5
    loss = info_nce(q, d, torch.tensor([0, 1]), t)
    row0 = -math.log(math.exp(2) / (math.exp(2) + math.exp(0) + math.exp(1.2)))
    row1 = -math.log(math.exp(2) / (math.exp(0) + math.exp(2) + math.exp(1.6)))
    assert math.isclose(float(loss), (row0 + row1) / 2, rel_tol=1e-6)
    masked = info_nce(q, d, torch.tensor([0, 1]), t, torch.tensor([[0, 0, 1], [0, 0, 0]]).bool())
    row0m = -math.log(math.exp(2) / (math.exp(2) + math.exp(0)))
    assert math.isclose(float(masked), (row0m + row1) / 2, rel_tol=1e-6)
    # Matryoshka over dim 1 and the full dim 2: dim-1 vectors renormalise to +-1 / 1.
    mrl = matryoshka_info_nce(q, d, torch.tensor([0, 1]), t, [1])
    assert math.isclose(float(mrl), (float(loss) + float(info_nce(
        torch.nn.functional.normalize(q[:, :1], dim=-1),
        torch.nn.functional.normalize(d[:, :1], dim=-1), torch.tensor([0, 1]), t))) / 2,
        rel_tol=1e-6)  # fmt: skip
    s = torch.tensor([2.0, -1.0, 0.5])
    labels = torch.tensor([1.0, 0.0, 0.0])
    # BCE: -log sigmoid(2) for the positive, -log(1 - sigmoid(s)) = log(1 + e^s) for negatives.
    expected_bce = math.log1p(math.exp(-2)) + math.log1p(math.exp(-1)) + math.log1p(math.exp(0.5))
    expected_bce /= 3
    assert math.isclose(float(bce(s, labels)), expected_bce, rel_tol=1e-6)
    expected_rank = (math.log1p(math.exp(-3)) + math.log1p(math.exp(-1.5))) / 2
    assert math.isclose(float(ranknet(s, labels, torch.tensor([0, 0, 0]))), expected_rank,
                        rel_tol=1e-6)  # fmt: skip
    assert float(ranknet(s, labels, torch.tensor([0, 1, 1]))) == 0.0


# ---------------------------------------------------------------------------------------------
# Spec
# ---------------------------------------------------------------------------------------------
def test_spec_defaults_and_errors_name_the_key():
    spec = parse_spec({})
    assert (spec.adapter.r, spec.adapter.alpha, spec.adapter.dropout) == (16, 16.0, 0.05)
    assert spec.embedding.temperature == 0.05
    assert spec.training.optimizer == {"name": "adamw8bit", "weight_decay": 0.0}
    assert [s.tasks for s in spec.training.stages] == [("embed",), ("embed", "rerank")]
    with pytest.raises(InputError, match=r"adapter: unknown keys \['rank'\]"):
        parse_spec({"adapter": {"rank": 4}})
    with pytest.raises(InputError, match=r"adapter.top_k: 4 exceeds the 3 experts"):
        parse_spec({"adapter": {"kind": "moe-lora", "top_k": 4}})
    with pytest.raises(InputError, match=r"training.stages\[0\].tasks: \['score'\]"):
        parse_spec({"training": {"stages": [{"name": "x", "tasks": ["score"], "steps": 1}]}})
    with pytest.raises(InputError, match=r"reranking.template: .*\{document\} exactly once"):
        parse_spec({"reranking": {"template": "{query}"}})
    with pytest.raises(InputError, match=r"training.optimizer: 'adam' is not one of"):
        parse_spec({"training": {"optimizer": "adam"}})
    with pytest.raises(InputError, match=r"training.optimizer.lr: the learning rate is set per"):
        parse_spec({"training": {"optimizer": {"name": "adamw", "lr": 1}}})
    assert parse_spec({"training": {"optimizer": {"class": "torch.optim.SGD"}}})


# ---------------------------------------------------------------------------------------------
# Training end to end
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def training_files(tmp_path_factory) -> dict[str, Path]:
    from irflow.data import CORPUS_SCHEMA, QUERIES_SCHEMA
    from irflow.training_data import SCORES_SCHEMA

    root = tmp_path_factory.mktemp("decoder-data")
    rng = np.random.default_rng(0)
    docs = {f"d{i}": " ".join(rng.choice(WORDS, 12)) for i in range(20)}
    docs["unused"] = "never read"
    queries = {f"q{i}": " ".join(rng.choice(WORDS, 4)) for i in range(6)}
    pq.write_table(
        pa.table({"doc_id": list(docs), "title": ["t"] * len(docs), "text": list(docs.values())},
                 schema=CORPUS_SCHEMA), root / "corpus.parquet")  # fmt: skip
    pq.write_table(pa.table({"query_id": list(queries), "text": list(queries.values())},
                            schema=QUERIES_SCHEMA), root / "queries.parquet")  # fmt: skip
    rows = {"query_id": [], "pos_id": [], "pos_score": [], "neg_ids": [], "neg_scores": []}
    for i in range(8):
        rows["query_id"].append(f"q{i % 6}")
        rows["pos_id"].append(f"d{i}")
        rows["pos_score"].append(1.0)
        negs = [f"d{(i + k) % 20}" for k in range(5, 5 + 1 + i % 3)]
        rows["neg_ids"].append(negs)
        rows["neg_scores"].append([0.0] * len(negs))
    pq.write_table(pa.table(rows, schema=SCORES_SCHEMA), root / "samples.parquet")
    return {"samples": root / "samples.parquet", "queries": root / "queries.parquet",
            "corpus": root / "corpus.parquet"}  # fmt: skip


def run_training(tiny_bases, files, out: Path, spec: dict):
    from irflow.decoder.train import train_unified

    return train_unified(
        spec,
        files["samples"],
        files["queries"],
        files["corpus"],
        tiny_bases["llama"],
        out / "model",
        out / "diagnostics",
        device="cpu",
    )


def test_joint_moe_training_writes_diagnostics_of_the_right_shape(
    tiny_bases, training_files, tmp_path
):
    spec = small_spec(adapter={"kind": "moe-lora"})
    spec["training"]["stages"][1]["pcgrad"] = True
    stats = run_training(tiny_bases, training_files, tmp_path, spec)
    diag = tmp_path / "diagnostics"
    assert [s["steps"] for s in stats["stages"]] == [1, 2]
    log = read_tsv(diag / "train_log.tsv")
    assert [(r["stage"], r["step"]) for r in log] == [("embed", "1"), ("joint", "1"),
                                                      ("joint", "2")]  # fmt: skip
    assert log[0]["grad_cosine"] == "" and log[1]["grad_cosine"] != ""
    assert all(math.isfinite(float(r["loss"])) for r in log)
    assert log[1]["pcgrad_projections"] in ("0", "2")

    cos = read_tsv(diag / "grad_cosine.tsv")
    modules = ["all", "down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    # 2 logged steps x 2 layers x (7 projections + all), joint stage only.
    assert len(cos) == 2 * 2 * 8
    assert {r["stage"] for r in cos} == {"joint"}
    assert sorted({r["module"] for r in cos}) == modules
    assert all(-1 <= float(r["cosine"]) <= 1 for r in cos)

    usage = read_tsv(diag / "expert_usage.tsv")
    experts = 1 + 2 * 2  # one shared, two per task
    # embed stage: 2 layers x 3 MLP projections x 1 task x 5 experts; joint: 2 tasks.
    assert len(usage) == 2 * 3 * 1 * experts + 2 * 3 * 2 * experts
    joint = [r for r in usage if r["stage"] == "joint"]
    for task, other in (("embed", "rerank"), ("rerank", "embed")):
        assert all(r["count"] == "0" for r in joint if r["task"] == task and r["kind"] == other)
        assert sum(int(r["count"]) for r in joint if r["task"] == task) > 0

    summary = json.loads((diag / "summary.json").read_text())
    assert summary["grad_cosine"]["layers"] == [0, 1]
    assert summary["grad_cosine"]["steps"] == {"joint": [1, 2]}
    assert summary["expert_usage"]["kinds"] == ["shared", "embed", "embed", "rerank", "rerank"]

    svgs = plot_diagnostics(diag, tmp_path / "plots")
    assert [p.name for p in svgs] == ["grad_cosine.svg", "expert_usage.svg"]
    assert all(p.read_text().lstrip().startswith("<?xml") for p in svgs)
    again = plot_diagnostics(diag, tmp_path / "plots-again")
    assert [p.read_bytes() for p in again] == [p.read_bytes() for p in svgs]  # reproducible

    model_files = sorted(p.name for p in (tmp_path / "model").iterdir())
    assert {"adapter_config.json", "adapter_model.safetensors", "moe_lora.json",
            "unified.json", "train_stats.json"} <= set(model_files)  # fmt: skip


def test_training_is_deterministic_and_the_reloaded_model_reproduces_runs(
    tiny_bases, training_files, tmp_path
):
    from safetensors.torch import load_file

    from irflow.data import read_queries
    from irflow.decoder.inference import cosine_rerank, dense_retrieve, encode_corpus, rerank

    spec = small_spec(adapter={"kind": "moe-lora", "dropout": 0.1},
                      reranking={"ranknet_weight": 0.5})  # fmt: skip
    spec["training"]["optimizer"] = "adamw8bit"
    run_training(tiny_bases, training_files, tmp_path / "a", spec)
    run_training(tiny_bases, training_files, tmp_path / "b", spec)
    a = load_file(tmp_path / "a" / "model" / "adapter_model.safetensors")
    b = load_file(tmp_path / "b" / "model" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    base = load_file(tiny_bases["llama"] / "model.safetensors")
    assert any(k.endswith("lora_router.weight") for k in a)
    assert not any(torch.equal(v, torch.zeros_like(v)) for k, v in a.items() if "lora_B" in k)
    assert "model.embed_tokens.weight" in base  # base weights stay out of the adapter

    queries = read_queries(str(training_files["queries"]))
    candidates = {q: {f"d{i}": 0.0 for i in range(10)} for q in queries}
    runs = []
    for _ in range(2):
        model = load_unified(tmp_path / "a" / "model", tiny_bases["llama"], device="cpu")
        encode_corpus(model, str(training_files["corpus"]), str(tmp_path / "emb"))
        runs.append(
            (
                rerank(model, str(training_files["corpus"]), queries, candidates, depth=10,
                       batch_tokens=128),
                cosine_rerank(model, str(training_files["corpus"]), queries, candidates, 10),
                dense_retrieve(model, str(tmp_path / "emb"), queries, k=5),
            )
        )  # fmt: skip
    assert runs[0] == runs[1]
    yes_no, cosine_run, dense = runs[0]
    assert sorted(yes_no) == sorted(queries) and all(len(d) == 10 for d in yes_no.values())
    assert all(len(d) == 5 for d in dense.values())
    assert len({round(s, 6) for d in yes_no.values() for s in d.values()}) > 10


KILL_AT_STEP = """
import json, os, signal, sys
import torch
from irflow.decoder.train import train_unified

torch.set_num_threads(1)  # as in this test process: the same kernels, the same rounding

args = json.loads(sys.argv[1])
train_unified(
    args["spec"], args["samples"], args["queries"], args["corpus"], args["base"],
    args["out"] + "/model", args["out"] + "/diagnostics", device="cpu",
    checkpoint_dir=args["checkpoints"],
    on_step=lambda step: os.kill(os.getpid(), signal.SIGKILL) if step == args["kill_at"] else None,
)
"""


def test_a_killed_training_resumes_from_its_checkpoint_bit_identically(
    tiny_bases, training_files, tmp_path
):
    import subprocess
    import sys

    from safetensors.torch import load_file

    from irflow.decoder.train import train_unified

    # MoE-LoRA with dropout, PCGrad and 8-bit AdamW (8-bit state even for these tiny tensors):
    # every random and stateful part at once.
    spec = small_spec(adapter={"kind": "moe-lora", "dropout": 0.1})
    spec["training"]["optimizer"] = {"name": "adamw8bit", "kwargs": {"min_8bit_size": 1}}
    spec["training"]["checkpoint_every_steps"] = 2
    spec["training"]["stages"] = [
        {"name": "embed", "tasks": ["embed"], "steps": 3, "lr": 1e-3},
        {"name": "joint", "tasks": ["embed", "rerank"], "steps": 4, "lr": 1e-3, "pcgrad": True},
    ]

    def train(out: Path, checkpoints: Path | None):
        return train_unified(
            spec, training_files["samples"], training_files["queries"], training_files["corpus"],
            tiny_bases["llama"], out / "model", out / "diagnostics", device="cpu",
            checkpoint_dir=checkpoints,
        )  # fmt: skip

    whole_stats = train(tmp_path / "whole", None)

    # Killed at global step 5 (the joint stage's second step), after the step-4 checkpoint.
    checkpoints = tmp_path / "checkpoints"
    args = {key: str(path) for key, path in training_files.items()}
    args.update(spec=spec, base=str(tiny_bases["llama"]), out=str(tmp_path / "killed"),
                checkpoints=str(checkpoints), kill_at=5)  # fmt: skip
    killed = subprocess.run(
        [sys.executable, "-c", KILL_AT_STEP, json.dumps(args)], check=False, timeout=600
    )
    assert killed.returncode == -9
    assert not (tmp_path / "killed" / "model").exists()  # nothing half-written
    assert sorted(p.name for p in checkpoints.iterdir()) == ["run.json", "step-00000004.pt"]

    stats = train(tmp_path / "killed", checkpoints)  # the rerun resumes after step 4
    assert stats["resumed_from_step"] == 4 and whole_stats["resumed_from_step"] is None

    def untimed(stages):
        return [{k: v for k, v in stage.items() if k != "seconds"} for stage in stages]

    assert untimed(stats["stages"]) == untimed(whole_stats["stages"])
    assert stats["examples"] == whole_stats["examples"]
    assert not checkpoints.exists()  # removed once the model is saved
    whole = load_file(tmp_path / "whole" / "model" / "adapter_model.safetensors")
    resumed = load_file(tmp_path / "killed" / "model" / "adapter_model.safetensors")
    assert whole.keys() == resumed.keys()
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    for table in ("train_log", "grad_cosine", "expert_usage"):
        rows = {
            run: [
                {k: v for k, v in row.items() if k not in ("seconds", "cpu_seconds")}
                for row in read_tsv(tmp_path / run / "diagnostics" / f"{table}.tsv")
            ]
            for run in ("whole", "killed")
        }
        assert rows["whole"] == rows["killed"], table
    assert len(read_tsv(tmp_path / "killed" / "diagnostics" / "train_log.tsv")) == 7

    # Another run's checkpoint is not resumed from: kill again, then change the learning rate.
    killed = subprocess.run(
        [sys.executable, "-c", KILL_AT_STEP, json.dumps(args)], check=False, timeout=600
    )
    assert killed.returncode == -9 and (checkpoints / "step-00000004.pt").is_file()
    spec["training"]["stages"][1]["lr"] = 5e-4
    changed_stats = train(tmp_path / "changed", checkpoints)
    assert changed_stats["resumed_from_step"] is None
    changed = load_file(tmp_path / "changed" / "model" / "adapter_model.safetensors")
    assert not all(torch.equal(whole[k], changed[k]) for k in whole)


def test_mlp_head_ablation_trains_and_round_trips(tiny_bases, training_files, tmp_path):
    spec = small_spec(reranking={"head": "mlp", "mlp_hidden": 8})
    spec["training"]["stages"] = [{"name": "rerank", "tasks": ["rerank"], "steps": 2}]
    run_training(tiny_bases, training_files, tmp_path, spec)
    assert (tmp_path / "model" / "score_head.safetensors").is_file()
    assert read_tsv(tmp_path / "diagnostics" / "grad_cosine.tsv") == []
    model = load_unified(tmp_path / "model", tiny_bases["llama"], device="cpu")
    first = model.score(["what is the cat"], ["the cat"])
    again = load_unified(tmp_path / "model", tiny_bases["llama"], device="cpu")
    assert np.array_equal(first, again.score(["what is the cat"], ["the cat"]))


def test_save_unified_round_trip_without_training(tiny_bases, tmp_path):
    base, tokenizer = load(tiny_bases["qwen3"])
    spec = parse_spec(small_spec(adapter={"kind": "moe-lora"}))
    model = build_model(base, tokenizer, spec).eval()
    randomize_adapters(model.peft)
    out = tmp_path / "m"
    out.mkdir()
    save_unified(model, out, tiny_bases["qwen3"])
    texts = ["what is the cat", "river"]
    reloaded = load_unified(out, tiny_bases["qwen3"], device="cpu")
    assert np.array_equal(model.encode(texts, "query"), reloaded.encode(texts, "query"))
    assert np.array_equal(model.score(texts, texts[::-1]), reloaded.score(texts, texts[::-1]))


def test_missing_documents_are_refused(tiny_bases, training_files, tmp_path):
    from irflow.data import CORPUS_SCHEMA

    small = tmp_path / "corpus.parquet"
    pq.write_table(pa.table({"doc_id": ["d0"], "title": [""], "text": ["x"]},
                            schema=CORPUS_SCHEMA), small)  # fmt: skip
    files = {**training_files, "corpus": small}
    with pytest.raises(InputError, match=r"documents of .*samples.parquet are not in the corpus"):
        run_training(tiny_bases, files, tmp_path, small_spec())
    assert not (tmp_path / "model").exists()


def test_gradient_checkpointing_changes_neither_results_nor_usage_counts(
    tiny_bases, training_files, tmp_path
):
    spec = small_spec(adapter={"kind": "moe-lora", "dropout": 0.1})
    assert not run_training(tiny_bases, training_files, tmp_path / "plain", spec)[
        "gradient_checkpointing"
    ]
    spec["training"]["gradient_checkpointing"] = True
    stats = run_training(tiny_bases, training_files, tmp_path / "ckpt", spec)
    assert stats["gradient_checkpointing"]
    for name in ("expert_usage.tsv", "grad_cosine.tsv"):
        assert read_tsv(tmp_path / "plain" / "diagnostics" / name) == read_tsv(
            tmp_path / "ckpt" / "diagnostics" / name
        )
    keep = ("loss", "loss_embed", "loss_rerank", "grad_norm")
    plain, ckpt = (
        [
            {k: r[k] for k in keep}
            for r in read_tsv(tmp_path / run / "diagnostics" / "train_log.tsv")
        ]
        for run in ("plain", "ckpt")
    )
    assert plain == ckpt
