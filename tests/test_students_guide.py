"""GUIDE layer selection and student checkpoints (tiny random models of each supported family)."""

from __future__ import annotations

import json
import os

import pytest
import torch
from test_students_common import VOCAB, state_dicts_equal, tiny_bi_encoder

from irflow.io import InputError
from irflow.models import ModelRef
from irflow.students.guide import build_student, init_student, model_depth, select_layers

# ---------------------------------------------------------------------------------------------
# Layer selection
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("depth", "keep", "expected"),
    [
        (22, 6, [0, 4, 8, 12, 16, 20]),  # stride ceil(22/6) = 4
        (12, 6, [0, 2, 4, 6, 8, 10]),
        (12, 3, [0, 4, 8]),
        (12, 4, [0, 3, 6, 9]),
        (24, 6, [0, 4, 8, 12, 16, 20]),
        (6, 3, [0, 2, 4]),
        (6, 6, [0, 1, 2, 3, 4, 5]),
        (5, 1, [0]),
        # stride ceil(10/6) = 2 would need layer 10: floor(i * 10 / 6) instead
        (10, 6, [0, 1, 3, 5, 6, 8]),
        (12, 8, [0, 1, 3, 4, 6, 7, 9, 10]),
    ],
)
def test_uniform_selection_follows_the_rule(depth, keep, expected):
    assert select_layers(depth, keep) == expected


def test_first_and_explicit_selection():
    assert select_layers(12, 4, strategy="first") == [0, 1, 2, 3]
    assert select_layers(12, layers=[0, 5, 11]) == [0, 5, 11]
    assert select_layers(12, 3, strategy="explicit", layers=[1, 2, 3]) == [1, 2, 3]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_student_layers": 13}, "the model's 12 layers"),
        ({"num_student_layers": 0}, "the model's 12 layers"),
        ({"layers": [0, 12]}, "the model has 12 layers"),
        ({"layers": [-1, 3]}, "the model has 12 layers"),
        ({"layers": [4, 2]}, "sorted and distinct"),
        ({"layers": [2, 2]}, "sorted and distinct"),
        ({"layers": [0, 1], "num_student_layers": 3}, "differs"),
        ({"num_student_layers": 3, "strategy": "middle"}, "allowed: ['uniform', 'first'"),
        ({"strategy": "uniform"}, "needs num_student_layers"),
    ],
)
def test_bad_selections_are_refused_naming_the_depth(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[")):
        select_layers(12, **kwargs)


# ---------------------------------------------------------------------------------------------
# Students of each family
# ---------------------------------------------------------------------------------------------
# Sizes every family shares; the encoders also have their dropout off.
TINY = dict(vocab_size=len(VOCAB), hidden_size=32, intermediate_size=64, max_position_embeddings=64)
ENCODER = dict(TINY, num_attention_heads=2)
NO_DROPOUT = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
DECODER = dict(TINY, num_attention_heads=4, num_key_value_heads=2)


def _bert_cls(num_layers):
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(**ENCODER, **NO_DROPOUT, num_hidden_layers=num_layers, num_labels=1)
    return BertForSequenceClassification(config)


def _mpnet(num_layers):
    from transformers import MPNetConfig, MPNetModel

    return MPNetModel(MPNetConfig(**ENCODER, **NO_DROPOUT, num_hidden_layers=num_layers))


def _modernbert(num_layers):
    from transformers import ModernBertConfig, ModernBertForSequenceClassification

    # A 4-token local window on 12-token inputs: sliding and global layers differ.
    return ModernBertForSequenceClassification(
        ModernBertConfig(
            **ENCODER, num_hidden_layers=num_layers, global_attn_every_n_layers=3,
            local_attention=4, pad_token_id=0, bos_token_id=2, eos_token_id=3, cls_token_id=2,
            sep_token_id=3, num_labels=1,
        )
    )  # fmt: skip


def _llama(num_layers):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**DECODER, num_hidden_layers=num_layers, pad_token_id=0)
    return LlamaForCausalLM(config)


def _qwen3(num_layers):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(
        **DECODER, num_hidden_layers=num_layers, head_dim=8, tie_word_embeddings=True
    )
    return Qwen3ForCausalLM(config)


FAMILIES = {
    "bert-cls": _bert_cls,
    "mpnet": _mpnet,
    "modernbert-cls": _modernbert,
    "llama-lm": _llama,
    "qwen3-lm-tied": _qwen3,
}


def _layer_list(model):
    """The model's ModuleList of transformer layers, and its parent and attribute name."""
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and name.rsplit(".", 1)[-1] in (
            "layer",
            "layers",
        ):
            parent_name, _, attr = name.rpartition(".")
            return (model.get_submodule(parent_name) if parent_name else model), attr
    raise AssertionError("no layer list")


def _outputs(model, input_ids):
    # Fresh (equally aligned) copies of the weights first: weights loaded from different files
    # sit at different offsets of their memory maps, and CPU matmul kernels may then sum in a
    # different order (differences of 1e-9 with identical weights).
    for tensor in [*model.parameters(), *model.buffers()]:
        tensor.data = tensor.data.clone()
    with torch.no_grad():
        out = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids))
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


@pytest.fixture(scope="module")
def parents(tmp_path_factory):
    root = tmp_path_factory.mktemp("parents")
    out = {}
    for name, make in FAMILIES.items():
        torch.manual_seed(0)
        model = make(4).eval()
        model.save_pretrained(root / name)
        out[name] = (root / name, type(model))
    return out


INPUT_IDS = torch.tensor(
    [[2, 7, 9, 11, 13, 8, 15, 21, 5, 6, 30, 3], [2, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 3]]
)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_student_keeping_every_layer_is_the_parent(family, parents, tmp_path):
    folder, cls = parents[family]
    stats = build_student(folder, [0, 1, 2, 3], tmp_path / "student")
    parent = cls.from_pretrained(folder).eval()
    student = cls.from_pretrained(tmp_path / "student").eval()
    assert state_dicts_equal(parent.state_dict(), student.state_dict())
    assert torch.equal(_outputs(parent, INPUT_IDS), _outputs(student, INPUT_IDS))
    assert stats["params_parent"] == stats["params_student"]
    assert stats["parent_layers"] == stats["student_layers"] == 4


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("layers", [[0, 2], [0, 3], [1, 3]])
def test_student_equals_the_parent_with_only_the_kept_layers(family, layers, parents, tmp_path):
    folder, cls = parents[family]
    if family.startswith("modernbert") and layers[0] != 0:
        # ModernBERT's layer 0 alone has no attention norm: no other layer can take its place.
        with pytest.raises(ValueError, match=r"not interchangeable.*attn_norm.*keep layer 0"):
            build_student(folder, layers, tmp_path / "student")
        assert not (tmp_path / "student").exists()
        return
    stats = build_student(folder, layers, tmp_path / "student")
    student = cls.from_pretrained(tmp_path / "student").eval()
    assert student.config.num_hidden_layers == 2
    # Ground truth: the parent in memory with its layer list cut to the kept layers (each layer
    # object keeps its own attention type, e.g. ModernBERT's sliding/global pattern).
    parent = cls.from_pretrained(folder).eval()
    owner, attr = _layer_list(parent)
    setattr(owner, attr, torch.nn.ModuleList([getattr(owner, attr)[i] for i in layers]))
    assert torch.equal(_outputs(parent, INPUT_IDS), _outputs(student, INPUT_IDS))
    if getattr(parent.config, "layer_types", None):
        assert student.config.layer_types == [parent.config.layer_types[i] for i in layers]
    assert stats["layers"] == layers
    assert stats["params_student"] < stats["params_parent"]
    assert json.loads((tmp_path / "student" / "guide.json").read_text())["layers"] == layers


def test_modernbert_keeps_each_layers_attention_type(parents, tmp_path):
    folder, cls = parents["modernbert-cls"]
    parent = cls.from_pretrained(folder)
    assert parent.config.layer_types == [
        "full_attention", "sliding_attention", "sliding_attention", "full_attention",
    ]  # fmt: skip
    build_student(folder, [0, 3], tmp_path / "student")
    student = cls.from_pretrained(tmp_path / "student")
    # A fresh 2-layer config would say [full, sliding]; the kept layers are both global.
    assert student.config.layer_types == ["full_attention", "full_attention"]
    assert [layer.attention_type for layer in student.model.layers] == [
        "full_attention", "full_attention",
    ]  # fmt: skip


def test_sentence_transformers_parent_gives_a_folder_both_classes_load(tmp_path):
    from sentence_transformers import CrossEncoder, SentenceTransformer

    parent = tiny_bi_encoder(tmp_path / "bi")
    build_student(ModelRef("tiny", path=str(parent)), [0, 1, 2, 3], tmp_path / "all")
    stats = build_student(parent, select_layers(4, 2), tmp_path / "half")
    assert stats["layers"] == [0, 2]
    texts = ["cat dog the river", "what is a gene"]
    reference = SentenceTransformer(str(parent), device="cpu").encode(texts)
    same = SentenceTransformer(str(tmp_path / "all"), device="cpu").encode(texts)
    assert (reference == same).all()
    half = SentenceTransformer(str(tmp_path / "half"), device="cpu")
    assert [type(m).__name__ for m in half] == ["Transformer", "Pooling", "Normalize"]
    assert half[0].auto_model.config.num_hidden_layers == 2
    cross = CrossEncoder(str(tmp_path / "half"), num_labels=1, device="cpu")
    assert cross.predict([("cat", "dog")]).shape == (1,)
    assert "README.md" not in os.listdir(tmp_path / "half")


def test_init_student_selects_on_the_parents_depth(parents, tmp_path):
    folder, cls = parents["llama-lm"]
    assert model_depth(folder) == 4
    stats = init_student(folder, tmp_path / "uniform", 2)
    assert stats["layers"] == [0, 2] and stats["strategy"] == "uniform"
    stats = init_student(ModelRef("llama", path=str(folder)), tmp_path / "first", 3, "first")
    assert stats["layers"] == [0, 1, 2] and stats["strategy"] == "first"
    assert cls.from_pretrained(tmp_path / "first").config.num_hidden_layers == 3
    with pytest.raises(ValueError, match=r"^llama: num_student_layers must be between 1 and the"):
        init_student(ModelRef("llama", path=str(folder)), tmp_path / "deep", 6)
    with pytest.raises(ValueError, match="the model has 4 layers"):
        init_student(folder, tmp_path / "explicit", layers=[3, 4])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["first", "uniform"]


def test_bad_parents_and_layers_leave_nothing(parents, tmp_path):
    folder, _ = parents["bert-cls"]
    with pytest.raises(ValueError, match="the model has 4 layers"):
        build_student(folder, [0, 4], tmp_path / "student")
    assert not (tmp_path / "student").exists()
    with pytest.raises(InputError, match="does not exist"):
        build_student(tmp_path / "missing", [0], tmp_path / "student")
    from transformers import GPT2Config, GPT2Model

    GPT2Model(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=40)).save_pretrained(
        tmp_path / "gpt2"
    )
    with pytest.raises(InputError, match="'gpt2' is not supported"):
        build_student(tmp_path / "gpt2", [0], tmp_path / "student")
    assert [p.name for p in tmp_path.iterdir()] == ["gpt2"]


@pytest.mark.models
@pytest.mark.parametrize(("name", "keep"), [("all-MiniLM-L6-v2", 3), ("all-mpnet-base-v2", 6)])
def test_real_models_give_students_that_load(name, keep, tmp_path):
    """The shipped sentence-transformers models: a full copy embeds exactly like the parent, a
    GUIDE half loads as both a bi-encoder and a cross-encoder."""
    from sentence_transformers import CrossEncoder, SentenceTransformer
    from workflow_helpers import MODELS, require_models

    require_models(name)
    parent = MODELS / name
    torch.set_num_threads(1)
    depth = json.loads((parent / "config.json").read_text())["num_hidden_layers"]
    build_student(parent, list(range(depth)), tmp_path / "all")
    stats = build_student(parent, select_layers(depth, keep), tmp_path / "half")
    assert stats["layers"] == select_layers(depth, keep) and stats["student_layers"] == keep
    texts = ["what is the capital of france", "Paris is the capital of France."]
    reference = SentenceTransformer(str(parent), device="cpu")
    copy = SentenceTransformer(str(tmp_path / "all"), device="cpu")
    for model in (reference, copy):  # equally aligned weights (see _outputs)
        for tensor in model.parameters():
            tensor.data = tensor.data.clone()
    assert (reference.encode(texts) == copy.encode(texts)).all()
    half = SentenceTransformer(str(tmp_path / "half"), device="cpu")
    assert half.encode(texts).shape == reference.encode(texts).shape
    assert half[0].auto_model.config.num_hidden_layers == keep
    assert CrossEncoder(str(tmp_path / "half"), num_labels=1, device="cpu").predict(
        [tuple(texts)]
    ).shape == (1,)
