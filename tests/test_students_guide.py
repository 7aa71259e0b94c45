"""GUIDE-style layer selection, the GUIDE width projection (guide-pca) and student checkpoints
(tiny random models of each supported family)."""

from __future__ import annotations

import json
import os

import pytest
import torch
from test_students_common import VOCAB, state_dicts_equal, tiny_bi_encoder

from irflow.io import InputError
from irflow.models import ModelRef
from irflow.students.guide import (
    PCA_FILE,
    build_narrow_student,
    build_student,
    init_student,
    model_depth,
    pca_projection,
    select_layers,
    uniform_indices,
)

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


# ---------------------------------------------------------------------------------------------
# GUIDE width projection (strategy guide-pca)
# ---------------------------------------------------------------------------------------------
def _roberta(num_layers):
    from transformers import RobertaConfig, RobertaModel

    config = RobertaConfig(**ENCODER, **NO_DROPOUT, num_hidden_layers=num_layers, pad_token_id=1)
    return RobertaModel(config)


NARROW_FAMILIES = {"bert-cls": _bert_cls, "mpnet": _mpnet, "roberta": _roberta}


@pytest.fixture(scope="module")
def narrow_parents(tmp_path_factory):
    root = tmp_path_factory.mktemp("narrow-parents")
    out = {}
    for name, make in NARROW_FAMILIES.items():
        torch.manual_seed(0)
        model = make(4).eval()
        # Non-trivial LayerNorm scales and biases (fresh models have 1 and 0).
        with torch.no_grad():
            for key, tensor in model.state_dict().items():
                if "LayerNorm" in key:
                    tensor.add_(0.1 * torch.randn_like(tensor))
        model.save_pretrained(root / name)
        out[name] = (root / name, type(model))
    return out


def test_uniform_indices_are_evenly_spaced():
    assert uniform_indices(12, 12) == list(range(12))
    assert uniform_indices(12, 6) == [0, 2, 4, 6, 8, 10]
    assert uniform_indices(32, 16) == list(range(0, 32, 2))
    assert uniform_indices(10, 4) == [0, 2, 5, 7]
    with pytest.raises(ValueError, match="cannot select 5 of 4"):
        uniform_indices(4, 5)


@pytest.mark.parametrize("family", sorted(NARROW_FAMILIES))
def test_full_width_guide_student_is_the_parent(family, narrow_parents, tmp_path):
    folder, cls = narrow_parents[family]
    stats = init_student(folder, tmp_path / "student", strategy="guide-pca", hidden_size=32)
    assert stats["strategy"] == "guide-pca" and stats["pca"] is None
    assert stats["layers"] == [0, 1, 2, 3]
    parent = cls.from_pretrained(folder).eval()
    student = cls.from_pretrained(tmp_path / "student").eval()
    assert state_dicts_equal(parent.state_dict(), student.state_dict())
    expected, got = _outputs(parent, INPUT_IDS), _outputs(student, INPUT_IDS)
    assert torch.allclose(expected, got, atol=1e-5, rtol=0)
    assert not (tmp_path / "student" / PCA_FILE).exists()


def test_full_width_guide_student_with_fewer_layers_is_the_layer_selection(
    narrow_parents, tmp_path
):
    folder, cls = narrow_parents["mpnet"]
    init_student(folder, tmp_path / "pca", 2, strategy="guide-pca", hidden_size=32)
    init_student(folder, tmp_path / "depth", 2, strategy="uniform")
    a = cls.from_pretrained(tmp_path / "pca").state_dict()
    b = cls.from_pretrained(tmp_path / "depth").state_dict()
    assert state_dicts_equal(a, b)
    stats = json.loads((tmp_path / "pca" / "guide.json").read_text())
    assert stats["layers"] == [0, 2] and stats["student_layers"] == 2


def _train_steps(model, steps=8):
    """A few Adam steps towards a fixed random target; the losses, first to last."""
    torch.manual_seed(1)
    model.train()
    target = torch.randn(INPUT_IDS.shape[0], model.config.hidden_size)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(steps):
        out = model(input_ids=INPUT_IDS, attention_mask=torch.ones_like(INPUT_IDS))
        loss = ((out.last_hidden_state.mean(dim=1) - target) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("family", ["mpnet", "roberta"])
def test_narrow_student_loads_and_trains(family, narrow_parents, tmp_path):
    from transformers import AutoModel

    folder, _ = narrow_parents[family]
    stats = build_narrow_student(
        folder,
        tmp_path / "student",
        hidden_size=16,
        intermediate_size=24,
        num_attention_heads=1,
        layers=[0, 3],
    )
    assert stats["heads"] == [0] and stats["head_dims"] == list(range(16))
    assert stats["params_student"] < stats["params_parent"]
    model = AutoModel.from_pretrained(tmp_path / "student")
    config = model.config
    assert (config.hidden_size, config.intermediate_size, config.num_attention_heads) == (16, 24, 1)
    assert config.num_hidden_layers == 2
    losses = _train_steps(model)
    assert all(map(torch.isfinite, map(torch.tensor, losses)))
    assert losses[-1] < losses[0]


def test_narrow_weights_follow_the_projection_and_selection(narrow_parents, tmp_path):
    from safetensors.torch import load_file

    folder, cls = narrow_parents["bert-cls"]
    build_narrow_student(folder, tmp_path / "s", hidden_size=16, intermediate_size=40)
    parent = load_file(folder / "model.safetensors")
    student = load_file(tmp_path / "s" / "model.safetensors")
    pca = load_file(tmp_path / "s" / PCA_FILE)
    p, mu = pca["projection"], pca["mean"]
    assert p.shape == (32, 16) and p.dtype == torch.float64
    assert torch.allclose(p.T @ p, torch.eye(16, dtype=torch.float64), atol=1e-10)

    def close(a, b):
        assert torch.allclose(a.double(), b.double(), atol=1e-5), (a - b).abs().max()

    emb = "bert.embeddings."
    table = parent[emb + "word_embeddings.weight"].double()
    # The compressed table is (E - mu) P, mu the mean of the rows the PCA was fitted on.
    close(mu, table.mean(dim=0))
    close(student[emb + "word_embeddings.weight"], (table - mu) @ p)
    close(student[emb + "position_embeddings.weight"],
          parent[emb + "position_embeddings.weight"].double() @ p + mu @ p)  # fmt: skip
    # ... so every token's summed embedding is P^T of the parent's.
    ids, positions = torch.tensor([5, 9, 17]), torch.tensor([0, 1, 2])
    summed = {
        name: (s[emb + "word_embeddings.weight"][ids] + s[emb + "position_embeddings.weight"][
            positions] + s[emb + "token_type_embeddings.weight"][0]).double()
        for name, s in (("parent", parent), ("student", student))
    }  # fmt: skip
    close(summed["student"], summed["parent"] @ p)
    # LayerNorm: beta projected, gamma the diagonal of P^T diag(gamma) P.
    ln = "bert.encoder.layer.1.output.LayerNorm."
    close(student[ln + "bias"], p.T @ parent[ln + "bias"].double())
    close(
        student[ln + "weight"], torch.diagonal(p.T @ torch.diag(parent[ln + "weight"].double()) @ p)
    )
    # Attention: 2 heads of 8 of the parent's 16 dimensions each (every other one).
    keep = [h * 16 + j for h in (0, 1) for j in range(0, 16, 2)]
    q = "bert.encoder.layer.2.attention.self.query."
    close(student[q + "weight"], parent[q + "weight"].double()[keep] @ p)
    close(student[q + "bias"], parent[q + "bias"][keep])
    o = "bert.encoder.layer.2.attention.output.dense."
    close(student[o + "weight"], p.T @ parent[o + "weight"].double()[:, keep])
    # Feed-forward: 40 of 64 units, evenly spaced.
    units = uniform_indices(64, 40)
    i, out = "bert.encoder.layer.0.intermediate.dense.", "bert.encoder.layer.0.output.dense."
    close(student[i + "weight"], parent[i + "weight"].double()[units] @ p)
    close(student[out + "weight"], p.T @ parent[out + "weight"].double()[:, units])
    close(
        student["bert.pooler.dense.weight"], p.T @ parent["bert.pooler.dense.weight"].double() @ p
    )
    close(student["classifier.weight"], parent["classifier.weight"].double() @ p)
    assert cls.from_pretrained(tmp_path / "s").config.hidden_size == 16


def test_pca_reconstruction_error_is_the_discarded_variance():
    torch.manual_seed(0)
    table = torch.randn(200, 12) @ torch.randn(12, 12) + 3.0
    for keep in (1, 4, 12):
        p, mu, eigenvalues = pca_projection(table, keep)
        centred = table.double() - mu
        error = ((centred - centred @ p @ p.T) ** 2).sum()
        assert torch.allclose(error, eigenvalues[keep:].sum(), rtol=1e-8, atol=1e-8)
        assert (eigenvalues[:-1] >= eigenvalues[1:]).all()
        # The leading components are the best rank-k subspace: no worse than any other one.
        other = torch.linalg.qr(torch.randn(12, keep, dtype=torch.float64))[0]
        assert error <= ((centred - centred @ other @ other.T) ** 2).sum() + 1e-8
    again = pca_projection(table, 4)[0]
    assert torch.equal(again, pca_projection(table, 4)[0])  # signs are deterministic


def test_narrow_sentence_transformers_student_embeds_at_the_new_width(tmp_path):
    from sentence_transformers import SentenceTransformer

    parent = tiny_bi_encoder(tmp_path / "bi")
    stats = init_student(parent, tmp_path / "narrow", 2, strategy="guide-pca", hidden_size=16)
    assert stats["pca"]["retained_variance"] < 1.0 and stats["layers"] == [0, 2]
    model = SentenceTransformer(str(tmp_path / "narrow"), device="cpu")
    assert model.encode(["cat dog the river"]).shape == (1, 16)
    pooling = json.loads((tmp_path / "narrow" / "1_Pooling" / "config.json").read_text())
    assert pooling["word_embedding_dimension"] == 16
    assert (tmp_path / "narrow" / PCA_FILE).is_file()


def test_guide_pca_refusals(parents, narrow_parents, tmp_path):
    llama, _ = parents["llama-lm"]
    with pytest.raises(InputError, match=r"'llama' is not supported by the GUIDE width.*'mpnet'"):
        init_student(llama, tmp_path / "s", strategy="guide-pca", hidden_size=16)
    bert, _ = narrow_parents["bert-cls"]
    with pytest.raises(ValueError, match="only strategy 'guide-pca'"):
        init_student(bert, tmp_path / "s", 2, strategy="uniform", hidden_size=16)
    with pytest.raises(ValueError, match="needs hidden_size"):
        init_student(bert, tmp_path / "s", strategy="guide-pca")
    with pytest.raises(ValueError, match="at most as wide"):
        build_narrow_student(bert, tmp_path / "s", hidden_size=64)
    with pytest.raises(ValueError, match="split into 2 heads"):
        build_narrow_student(bert, tmp_path / "s", hidden_size=15)
    with pytest.raises(ValueError, match="unknown init strategy 'pca'"):
        init_student(bert, tmp_path / "s", strategy="pca", hidden_size=16)
    assert not (tmp_path / "s").exists()
