"""Student initialisations cut from a parent model: fewer layers, or fewer layers and less width.

**GUIDE-style layer selection (depth only; strategies ``uniform``, ``first``, ``explicit``).**
A student of ``L'`` layers is built from an ``L``-layer parent by copying layers ``layers``
(renumbered ``0..L'-1`` in order) together with everything that is not a layer: embeddings,
final norms, pooler, classification or language-model heads. The result is an ordinary
Hugging Face checkpoint (``config.json`` with ``num_hidden_layers = L'`` and per-layer
attributes such as ``layer_types`` cut to the kept layers, ``model.safetensors``) that
``from_pretrained`` loads with the parent's own model class; a student keeping every layer
is the parent, weight for weight. This keeps the parent's width; it is not the method of the
GUIDE paper, only named after the project's use of it as a GUIDE-like initialisation.

Layer selection strategies (:data:`STRATEGIES`):

``uniform``   layers at a uniform integer interval from layer 0: stride ``s = ceil(L / L')``
              (22 -> 6 gives 0, 4, 8, 12, 16, 20; 12 -> 6 gives 0, 2, ..., 10; 12 -> 3 gives
              0, 4, 8). When that stride would run past the last layer (e.g. 10 -> 6), the
              indices are ``floor(i * L / L')``, as even as integers allow, still from layer 0.
``first``     layers ``0..L'-1`` (the ablation baseline).
``explicit``  a sorted list of distinct indices given in the config.

**GUIDE (strategy ``guide-pca``): a narrower student** in the manner of Trinh, Menghani & Vee,
"GUIDE: Guided Initialization and Distillation of Embeddings" (arXiv 2510.06502): the embedding
table compressed by PCA, every hidden-size dimension projected through the PCA matrix, and
uniform selection for the attention heads and feed-forward units that also shrink; optionally
also fewer layers (uniform or explicit selection). See :func:`build_narrow_student` for what is
implemented exactly and what is assumed.

Why the weights are edited as a state dict rather than through a model class: the parent may be
a bare encoder, a sequence classifier or a causal LM, and the checkpoint must keep whatever
head it has; renaming the tensors of the kept layers copies them exactly, needs no knowledge of
the model class, and never runs model code.

Supported families for layer selection (:data:`SUPPORTED_MODEL_TYPES`): BERT-style encoders
(BERT/MiniLM, RoBERTa, XLM-R, ELECTRA), MPNet, ModernBERT, and Llama/Mistral/Qwen2/Qwen3
decoders; for ``guide-pca`` (:data:`NARROW_MODEL_TYPES`): BERT/MiniLM, RoBERTa, XLM-R and MPNet.
A sentence-transformers folder (``modules.json``) stays one: its Transformer module is cut,
every other module (pooling, normalisation, dense layers) is copied unchanged (``guide-pca``
sets the Pooling module's dimension and refuses other modules of the parent's width), so
``SentenceTransformer(out)`` and ``CrossEncoder(out)`` both load the student.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from irflow.io import InputError, atomic_output
from irflow.models import ModelRef

STRATEGIES = ("uniform", "first", "explicit")
# The init strategies an ``inits`` entry may name: the layer selections and the GUIDE width
# projection.
INIT_STRATEGIES = (*STRATEGIES, "guide-pca")

SUPPORTED_MODEL_TYPES = (
    "bert",
    "roberta",
    "xlm-roberta",
    "electra",
    "mpnet",
    "modernbert",
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
)

# "<prefix>.layer.<i>.<rest>" (BERT, MPNet) or "<prefix>.layers.<i>.<rest>" (ModernBERT, Llama,
# Qwen); the prefix may be empty or carry a head's base-model name ("bert.", "model.").
_LAYER_KEY = re.compile(r"^(?P<prefix>(?:.*\.)?layers?)\.(?P<index>\d+)\.(?P<rest>.+)$")
_WEIGHT_FILES = re.compile(
    r"^(model(-\d+-of-\d+)?\.safetensors|model\.safetensors\.index\.json|"
    r"pytorch_model(-\d+-of-\d+)?\.bin|pytorch_model\.bin\.index\.json)$"
)
STATS_FILE = "guide.json"


def select_layers(
    num_layers: int,
    num_student_layers: int | None = None,
    strategy: str = "uniform",
    layers: list[int] | None = None,
) -> list[int]:
    """The parent layer indices a student keeps, in order (see the module docstring).

    ``layers`` (an explicit list) implies ``strategy="explicit"``; ``num_student_layers``, if
    also given, must equal its length. Raises :class:`ValueError` naming the model's depth for
    an index out of range, an unsorted or repeated list, or a student deeper than its parent.
    """
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
        raise ValueError(f"the parent model must have at least one layer, got {num_layers!r}")
    if layers is not None:
        if strategy not in ("uniform", "explicit"):
            raise ValueError(f"strategy {strategy!r} takes no explicit layer list")
        strategy = "explicit"
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown layer strategy {strategy!r}; allowed: {list(STRATEGIES)}")
    if strategy == "explicit":
        if not layers:
            raise ValueError("strategy 'explicit' needs a non-empty list of layers")
        bad = [i for i in layers if isinstance(i, bool) or not isinstance(i, int)]
        if bad:
            raise ValueError(f"layer indices must be integers, got {bad}")
        out_of_range = [i for i in layers if not 0 <= i < num_layers]
        if out_of_range:
            raise ValueError(
                f"layers {out_of_range} are out of range: the model has {num_layers} layers "
                f"(indices 0..{num_layers - 1})"
            )
        if list(layers) != sorted(set(layers)):
            raise ValueError(f"layers must be sorted and distinct, got {list(layers)}")
        if num_student_layers is not None and num_student_layers != len(layers):
            raise ValueError(
                f"num_student_layers {num_student_layers} differs from the {len(layers)} layers "
                f"listed"
            )
        return list(layers)
    if num_student_layers is None:
        raise ValueError(f"strategy {strategy!r} needs num_student_layers")
    if (
        isinstance(num_student_layers, bool)
        or not isinstance(num_student_layers, int)
        or not 1 <= num_student_layers <= num_layers
    ):
        raise ValueError(
            f"num_student_layers must be between 1 and the model's {num_layers} layers, got "
            f"{num_student_layers!r}"
        )
    if strategy == "first":
        return list(range(num_student_layers))
    stride = math.ceil(num_layers / num_student_layers)
    if (num_student_layers - 1) * stride <= num_layers - 1:
        return [i * stride for i in range(num_student_layers)]
    return [i * num_layers // num_student_layers for i in range(num_student_layers)]


# ---------------------------------------------------------------------------------------------
# Building a student checkpoint
# ---------------------------------------------------------------------------------------------
def _resolve_parent(parent: ModelRef | str | os.PathLike) -> tuple[Path, str, bool]:
    """Local folder of the parent, a name for messages, and its trust_remote_code flag."""
    if isinstance(parent, ModelRef):
        if parent.path:
            return Path(parent.name_or_path), parent.name, parent.trust_remote_code
        from huggingface_hub import snapshot_download

        try:
            folder = snapshot_download(parent.hf_id, revision=parent.revision)
        except Exception as err:  # offline cache miss, unknown repo: the user needs the name
            raise InputError(
                f"model {parent.name!r} ({parent.hf_id}) could not be fetched: {err}"
            ) from err
        return Path(folder), parent.name, parent.trust_remote_code
    folder = Path(parent)
    if not folder.is_dir():
        raise InputError(f"parent model folder {folder} does not exist")
    return folder, str(folder), False


def _transformer_subdir(folder: Path) -> str | None:
    """Path (relative) of the Transformer module of a sentence-transformers folder, else None."""
    modules_json = folder / "modules.json"
    if not modules_json.is_file():
        return None
    modules = json.loads(modules_json.read_text(encoding="utf-8"))
    found = [m for m in modules if str(m.get("type", "")).rsplit(".", 1)[-1] == "Transformer"]
    if len(found) != 1:
        raise InputError(
            f"{modules_json}: expected exactly one Transformer module, found {len(found)}"
        )
    return found[0].get("path", "")


def _load_state_dict(hf_dir: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    single = hf_dir / "model.safetensors"
    if single.is_file():
        return load_file(single)
    index = hf_dir / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        state: dict[str, Any] = {}
        for name in files:
            state.update(load_file(hf_dir / name))
        return state
    raise InputError(
        f"{hf_dir}: no safetensors weights (model.safetensors or a sharded index); pickled "
        f"PyTorch weights are not loaded"
    )


def _layer_groups(state: dict[str, Any]) -> dict[str, set[int]]:
    groups: dict[str, set[int]] = {}
    for key in state:
        match = _LAYER_KEY.match(key)
        if match:
            groups.setdefault(match["prefix"], set()).add(int(match["index"]))
    return groups


def _count(state: dict[str, Any]) -> int:
    seen: set[int] = set()
    total = 0
    for tensor in state.values():
        if tensor.data_ptr() in seen and tensor.numel():
            continue
        seen.add(tensor.data_ptr())
        total += tensor.numel()
    return total


def cut_layers(state: dict[str, Any], prefix: str, layers: Sequence[int]) -> dict[str, Any]:
    """The state dict with only ``prefix.<i>.*`` for ``i`` in ``layers``, renumbered from 0."""
    new_index = {old: new for new, old in enumerate(layers)}
    out: dict[str, Any] = {}
    for key, tensor in state.items():
        match = _LAYER_KEY.match(key)
        if match and match["prefix"] == prefix:
            old = int(match["index"])
            if old in new_index:
                out[f"{prefix}.{new_index[old]}.{match['rest']}"] = tensor.contiguous()
        else:
            out[key] = tensor.contiguous()
    return out


def _check_layer_weights(config, prefix: str, layers: list[int], state: dict[str, Any]) -> None:
    """Refuse a selection that gives a student layer other weights than its class expects.

    Layers of most families are interchangeable, but not all: ModernBERT's layer 0 has no
    attention norm (the embeddings are normalised already), so any other layer moved to
    position 0 would lose its norm. The student's architecture is instantiated on the meta
    device (no memory, no weights) and its layer weight names compared with the student's.
    """
    import torch
    import transformers

    architecture = (getattr(config, "architectures", None) or [None])[0]
    cls = getattr(transformers, architecture, None) if architecture else None
    with torch.device("meta"):
        model = cls(config) if cls is not None else transformers.AutoModel.from_config(config)
    start = f"{prefix}."
    expected = {k for k in model.state_dict() if k.startswith(start)}
    got = {k for k in state if k.startswith(start)}
    if expected and expected != got:
        moved = [f"{old} -> {new}" for new, old in enumerate(layers) if old != new]
        raise ValueError(
            f"{type(model).__name__}'s layers are not interchangeable: with layers {layers} "
            f"({', '.join(moved)}) the student has weights {sorted(got - expected)[:4]} its class "
            f"does not use and lacks {sorted(expected - got)[:4]}; keep layer 0 first"
        )


def _parent_config(parent: ModelRef | str | os.PathLike):
    from transformers import AutoConfig

    folder, name, trust_remote_code = _resolve_parent(parent)
    subdir = _transformer_subdir(folder)
    hf_dir = folder / subdir if subdir else folder
    try:
        config = AutoConfig.from_pretrained(hf_dir, trust_remote_code=trust_remote_code)
    except Exception as err:  # many library error types; the user needs the folder
        raise InputError(f"{name}: no readable model config in {hf_dir}: {err}") from err
    return folder, subdir, hf_dir, name, config


def model_depth(parent: ModelRef | str | os.PathLike) -> int:
    """The number of transformer layers of a model (its config's ``num_hidden_layers``)."""
    return int(_parent_config(parent)[4].num_hidden_layers)


def init_student(
    parent: ModelRef | str | os.PathLike,
    out_dir: str | os.PathLike,
    num_student_layers: int | None = None,
    strategy: str = "uniform",
    layers: list[int] | None = None,
    hidden_size: int | None = None,
    intermediate_size: int | None = None,
    num_attention_heads: int | None = None,
) -> dict[str, Any]:
    """Build the student an ``inits`` entry describes (one of :data:`INIT_STRATEGIES`).

    ``uniform`` / ``first`` (or an explicit ``layers`` list): :func:`select_layers` on the
    parent's depth, then :func:`build_student` (GUIDE-style layer selection, depth only).
    ``guide-pca``: :func:`build_narrow_student` with ``hidden_size`` (required) and the optional
    ``intermediate_size`` / ``num_attention_heads``; ``num_student_layers`` (uniform selection)
    or ``layers`` (explicit) also cut the depth, neither keeps every layer. The stats add the
    strategy. Errors name the parent and its depth.
    """
    depth = model_depth(parent)
    name = parent.name if isinstance(parent, ModelRef) else str(parent)
    if strategy not in INIT_STRATEGIES:
        raise ValueError(f"{name}: unknown init strategy {strategy!r}; allowed: {INIT_STRATEGIES}")
    width = {
        "hidden_size": hidden_size,
        "intermediate_size": intermediate_size,
        "num_attention_heads": num_attention_heads,
    }
    if strategy != "guide-pca":
        given = sorted(k for k, v in width.items() if v is not None)
        if given:
            raise ValueError(
                f"{name}: {given} narrow the student, which only strategy 'guide-pca' does "
                f"(strategy {strategy!r} selects layers)"
            )
    try:
        if strategy == "guide-pca":
            if num_student_layers is None and layers is None:
                chosen = list(range(depth))
            else:
                chosen = select_layers(depth, num_student_layers, "uniform", layers)
        else:
            chosen = select_layers(depth, num_student_layers, strategy, layers)
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from None
    if strategy == "guide-pca":
        if hidden_size is None:
            raise ValueError(f"{name}: strategy 'guide-pca' needs hidden_size")
        stats = build_narrow_student(parent, out_dir, layers=chosen, **width)
        return {**stats, "strategy": strategy}
    stats = build_student(parent, chosen, out_dir)
    return {**stats, "strategy": "explicit" if layers is not None else strategy}


def _cut_depth(state: dict[str, Any], config, name: str, layers: list[int]) -> dict[str, Any]:
    """The state dict keeping ``layers`` (renumbered) and ``config`` edited to match."""
    depth = int(config.num_hidden_layers)
    groups = _layer_groups(state)
    full = [p for p, indices in groups.items() if indices == set(range(depth))]
    if len(full) != 1:
        raise InputError(
            f"{name}: could not find the {depth} transformer layers among the weight names "
            f"(layer groups found: { {p: len(i) for p, i in groups.items()} })"
        )
    student_state = cut_layers(state, full[0], layers)
    config.num_hidden_layers = len(layers)
    layer_types = getattr(config, "layer_types", None)
    if isinstance(layer_types, list | tuple) and len(layer_types) == depth:
        config.layer_types = [layer_types[i] for i in layers]
    try:
        _check_layer_weights(config, full[0], layers, student_state)
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from None
    return student_state


def _write_student(
    folder: Path,
    subdir: str | None,
    hf_dir: Path,
    config,
    student_state: dict[str, Any],
    stats: dict[str, Any],
    out_dir: str | os.PathLike,
    extra: dict[str, dict[str, Any]] | None = None,
    embedding_dim: int | None = None,
) -> None:
    """Write the student folder atomically: the parent's files (tokenizer, sentence-transformers
    modules) without its weights, model card and GUIDE records, then the student's config,
    weights, ``guide.json`` and any ``extra`` tensor files (name -> tensors). ``embedding_dim``
    rewrites a sentence-transformers Pooling module's ``word_embedding_dimension``."""
    from safetensors.torch import save_file

    with atomic_output(out_dir, directory=True) as tmp:
        for entry in sorted(folder.iterdir()):
            # The parent's model card describes the parent, not the student.
            if entry.name.startswith(".") or entry.name in (STATS_FILE, PCA_FILE, "README.md"):
                continue
            if entry.is_dir():
                if subdir and entry == hf_dir:
                    continue
                shutil.copytree(entry, tmp / entry.name)
            elif not (hf_dir == folder and _WEIGHT_FILES.match(entry.name)):
                shutil.copy2(entry, tmp / entry.name)
        target = tmp / subdir if subdir else tmp
        if subdir:
            target.mkdir(parents=True, exist_ok=True)
            for entry in sorted(hf_dir.iterdir()):
                if entry.is_file() and not _WEIGHT_FILES.match(entry.name):
                    shutil.copy2(entry, target / entry.name)
        if embedding_dim is not None:
            for path in _pooling_configs(tmp):
                pooling = json.loads(path.read_text(encoding="utf-8"))
                pooling["word_embedding_dimension"] = embedding_dim
                path.write_text(json.dumps(pooling, indent=2) + "\n", encoding="utf-8")
        config.save_pretrained(target)
        save_file(student_state, target / "model.safetensors", metadata={"format": "pt"})
        for file_name, tensors in (extra or {}).items():
            save_file(tensors, tmp / file_name, metadata={"format": "pt"})
        (tmp / STATS_FILE).write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")


def build_student(
    parent: ModelRef | str | os.PathLike,
    layers: list[int],
    out_dir: str | os.PathLike,
) -> dict[str, Any]:
    """Write the student of ``parent`` keeping ``layers`` to ``out_dir`` (atomically).

    ``parent`` is a :class:`~irflow.models.ModelRef` or a local folder: a Hugging Face
    checkpoint or a sentence-transformers folder (which gives a sentence-transformers folder).
    ``layers`` come from :func:`select_layers` (checked again here against the parent's depth).
    Returns (and stores as ``guide.json`` in the output) the parent's depth, the kept layers and
    the parameter counts before and after.
    """
    folder, subdir, hf_dir, name, config = _parent_config(parent)
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise InputError(
            f"{name}: model type {config.model_type!r} is not supported for layer selection; "
            f"supported: {list(SUPPORTED_MODEL_TYPES)}"
        )
    depth = int(config.num_hidden_layers)
    try:
        layers = select_layers(depth, layers=list(layers))
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from None
    state = _load_state_dict(hf_dir)
    student_state = _cut_depth(state, config, name, layers)
    stats = {
        "parent": name,
        "model_type": config.model_type,
        "parent_layers": depth,
        "student_layers": len(layers),
        "layers": list(layers),
        "params_parent": _count(state),
        "params_student": _count(student_state),
    }
    _write_student(folder, subdir, hf_dir, config, student_state, stats, out_dir)
    return stats


# ---------------------------------------------------------------------------------------------
# GUIDE (Trinh, Menghani & Vee): a narrower student by PCA projection and uniform selection
# ---------------------------------------------------------------------------------------------
NARROW_MODEL_TYPES = ("bert", "roberta", "xlm-roberta", "mpnet")
PCA_FILE = "guide_pca.safetensors"

# Axis roles of every weight of the supported encoders, by the end of its name (first match
# wins). "h": the hidden size (projected through P); "a": the attention heads' concatenated
# dimensions (h * head_dim; heads and within-head dimensions uniformly selected); "f": the
# feed-forward inner size (uniformly selected); "H": one entry per head (selected heads);
# "-": unchanged (vocabulary, positions, labels, buckets). "gamma": a LayerNorm scale.
_ROLES: tuple[tuple[re.Pattern, tuple[str, ...] | str], ...] = tuple(
    (re.compile(r"(^|\.)" + pattern + "$"), roles)
    for pattern, roles in (
        (r"embeddings\.word_embeddings\.weight", ("-", "h")),
        (r"embeddings\.position_embeddings\.weight", ("-", "h")),
        (r"embeddings\.token_type_embeddings\.weight", ("-", "h")),
        (r"LayerNorm\.weight", "gamma"),
        (r"LayerNorm\.bias", ("h",)),
        # BERT / RoBERTa / XLM-R
        (r"attention\.self\.(query|key|value)\.weight", ("a", "h")),
        (r"attention\.self\.(query|key|value)\.bias", ("a",)),
        (r"attention\.output\.dense\.weight", ("h", "a")),
        (r"attention\.output\.dense\.bias", ("h",)),
        # MPNet
        (r"attention\.attn\.[qkv]\.weight", ("a", "h")),
        (r"attention\.attn\.[qkv]\.bias", ("a",)),
        (r"attention\.attn\.o\.weight", ("h", "a")),
        (r"attention\.attn\.o\.bias", ("h",)),
        (r"encoder\.relative_attention_bias\.weight", ("-", "H")),
        # both
        (r"intermediate\.dense\.weight", ("f", "h")),
        (r"intermediate\.dense\.bias", ("f",)),
        (r"output\.dense\.weight", ("h", "f")),
        (r"output\.dense\.bias", ("h",)),
        (r"pooler\.dense\.weight", ("h", "h")),
        (r"pooler\.dense\.bias", ("h",)),
        # sequence-classification heads
        (r"classifier\.dense\.weight", ("h", "h")),
        (r"classifier\.dense\.bias", ("h",)),
        (r"classifier\.(out_proj\.)?weight", ("-", "h")),
        (r"classifier\.(out_proj\.)?bias", ("-",)),
    )
)
_WORD = re.compile(r"(^|\.)embeddings\.word_embeddings\.weight$")
_POSITION = re.compile(r"(^|\.)embeddings\.position_embeddings\.weight$")
_NARROW_MODULES = ("Transformer", "Pooling", "Normalize")


def uniform_indices(size: int, keep: int) -> list[int]:
    """``keep`` evenly spaced indices of ``range(size)`` from 0: ``floor(i * size / keep)``
    (12 of 12: all; 6 of 12: 0, 2, ..., 10; 16 of 32: every other one)."""
    if not 1 <= keep <= size:
        raise ValueError(f"cannot select {keep} of {size} dimensions")
    return [i * size // keep for i in range(keep)]


def pca_projection(embeddings, keep: int):
    """PCA of the rows of an embedding table (float64): ``(P, mean, eigenvalues)``.

    ``P`` (``d x keep``, orthonormal columns) holds the ``keep`` leading eigenvectors of the
    scatter matrix ``(E - mean)^T (E - mean)``, each signed so that its largest-magnitude entry
    is positive (a deterministic choice); ``eigenvalues`` are all ``d`` of them, descending.
    ``||(E - mean) - (E - mean) P P^T||_F^2`` is then the sum of the discarded eigenvalues.
    """
    import torch

    table = embeddings.detach().to(torch.float64)
    mean = table.mean(dim=0)
    centred = table - mean
    eigenvalues, vectors = torch.linalg.eigh(centred.T @ centred)
    eigenvalues, vectors = eigenvalues.flip(0).clamp_min(0.0), vectors.flip(1)
    peak = vectors.abs().argmax(dim=0)
    signs = torch.sign(vectors[peak, torch.arange(vectors.shape[1])])
    vectors = vectors * torch.where(signs == 0, torch.ones_like(signs), signs)
    return vectors[:, :keep].contiguous(), mean, eigenvalues


def _project_axis(tensor, axis: int, projection):
    """``tensor`` with its ``axis`` (of the parent's hidden size) mapped through ``P^T``."""
    return (tensor.movedim(axis, -1) @ projection).movedim(-1, axis)


def _narrow_tensor(key: str, tensor, roles, projection, mean, select: dict[str, Any]):
    import torch

    if not tensor.is_floating_point():  # position_ids and other index buffers
        return tensor
    work = tensor.to(torch.float64)
    if roles == "gamma":
        # diag(P^T diag(gamma) P) = (P * P)^T gamma: the diagonal of the projected scale
        out = work if projection is None else (projection * projection).T @ work
        return out.to(tensor.dtype).contiguous()
    if len(roles) != work.dim():
        raise InputError(f"weight {key}: expected {len(roles)} dimensions, got {work.dim()}")
    if projection is not None and _WORD.search(key):
        work = work - mean  # the PCA was fitted on centred rows; the mean goes to positions
    for axis, role in enumerate(roles):
        if role == "h" and projection is not None:
            work = _project_axis(work, axis, projection)
        elif role in select and select[role] is not None:
            work = work.index_select(axis, torch.tensor(select[role]))
    if projection is not None and _POSITION.search(key):
        work = work + mean @ projection
    return work.to(tensor.dtype).contiguous()


def _check_shapes(config, state: dict[str, Any], name: str) -> None:
    """The student's weights have exactly the names and shapes its class expects."""
    import torch
    import transformers

    architecture = (getattr(config, "architectures", None) or [None])[0]
    cls = getattr(transformers, architecture, None) if architecture else None
    with torch.device("meta"):
        model = cls(config) if cls is not None else transformers.AutoModel.from_config(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    wrong = [
        f"{k}: {tuple(v.shape)} (expected {expected[k]})"
        for k, v in state.items()
        if k in expected and tuple(v.shape) != expected[k]
    ]
    missing = sorted(set(expected) - set(state) - {"embeddings.position_ids"})
    missing = [k for k in missing if not k.endswith("position_ids")]
    if wrong or missing:
        raise InputError(
            f"{name}: the narrowed weights do not fit {type(model).__name__}: wrong shapes "
            f"{wrong[:4]}, missing {missing[:4]}"
        )


def _pooling_configs(folder: Path) -> list[Path]:
    modules_json = folder / "modules.json"
    if not modules_json.is_file():
        return []
    modules = json.loads(modules_json.read_text(encoding="utf-8"))
    return [
        folder / m.get("path", "") / "config.json"
        for m in modules
        if str(m.get("type", "")).rsplit(".", 1)[-1] == "Pooling"
        and (folder / m.get("path", "") / "config.json").is_file()
    ]


def _check_st_modules(folder: Path, name: str) -> None:
    modules_json = folder / "modules.json"
    if not modules_json.is_file():
        return
    kinds = [
        str(m.get("type", "")).rsplit(".", 1)[-1]
        for m in json.loads(modules_json.read_text(encoding="utf-8"))
    ]
    other = [k for k in kinds if k not in _NARROW_MODULES]
    if other:
        raise InputError(
            f"{name}: sentence-transformers modules {other} have the parent's width and are not "
            f"narrowed; supported modules: {list(_NARROW_MODULES)}"
        )


def build_narrow_student(
    parent: ModelRef | str | os.PathLike,
    out_dir: str | os.PathLike,
    hidden_size: int,
    intermediate_size: int | None = None,
    num_attention_heads: int | None = None,
    layers: list[int] | None = None,
) -> dict[str, Any]:
    """Write a GUIDE student of ``parent``, narrower (and optionally shallower), to ``out_dir``.

    What is implemented (``d``: the parent's hidden size, ``d'`` = ``hidden_size``):

    * **PCA of the embedding table.** ``P`` (``d x d'``) and the mean ``mu`` come from
      :func:`pca_projection` on the parent's token-embedding rows; the student's token table is
      ``(E - mu) P``. ``P``, ``mu`` and the eigenvalues are saved as ``guide_pca.safetensors``
      (``projection``, ``mean``, ``eigenvalues``) and the retained variance in ``guide.json``.
    * **Projection of every hidden-size dimension.** Each weight axis of the hidden size is
      mapped through ``P``: hidden -> hidden matrices become ``P^T W P``, hidden -> inner ones
      ``W P``, inner -> hidden ones ``P^T W``, hidden-size biases ``P^T b``. Position and
      token-type embeddings are ``Pos P`` and ``T P``; ``mu P`` is added to every position row,
      so a token's summed embedding is exactly ``P^T`` of the parent's (the centring of the
      token table is undone where every token passes). Pooler and classification heads are
      projected the same way.
    * **Uniform selection of the other dimensions that shrink** (:func:`uniform_indices`):
      ``num_attention_heads`` heads of the parent's (default: all of them), and within each
      head ``d' / heads`` of its dimensions (the same ones for queries, keys and values, and
      for the attention output's inputs); ``intermediate_size`` feed-forward units (default:
      the parent's, i.e. all); MPNet's relative attention bias keeps the selected heads' columns.
    * **LayerNorm.** Biases are hidden-size vectors and are projected (``P^T beta``, exact for
      the additive part). Scales are not vectors in hidden space but the diagonal operator
      ``diag(gamma)``; projected it is ``P^T diag(gamma) P``, whose diagonal ``(P * P)^T gamma``
      (a weighted mean of ``gamma`` per student dimension, weights summing to 1) is the
      student's scale. ``P^T gamma`` would turn ``gamma = 1`` into arbitrary scales; selecting
      entries would ignore which parent dimensions a student dimension mixes.
    * **Depth.** ``layers`` (default: all) are kept and renumbered first, as in
      :func:`build_student`; ``guide.json`` lists them.
    * **Equal width.** With ``hidden_size`` equal to the parent's, ``P`` is the identity and no
      mean is subtracted (a full-rank PCA is an orthogonal rotation, and LayerNorm's mean and
      variance over the dimensions do not commute with rotations, so the rotated model would not
      be the parent); with all heads, units and layers kept the student is the parent, weight
      for weight.

    Assumptions (the paper's method section was not available here, only summaries of it: PCA
    compression of the embedding table, a ``d x d'`` projection into the teacher-aligned space
    and uniform selection for the remaining dimensions; the summaries describe initialising the
    embedding table and the first transformer block): every block (not the first only) is
    initialised by the projection; the attention scale becomes ``1/sqrt(d'/heads)`` as the
    student's class computes it, and nothing is rescaled for the narrower LayerNorm statistics,
    the fewer heads or the fewer feed-forward units.

    Supported: :data:`NARROW_MODEL_TYPES` (BERT/MiniLM, RoBERTa, XLM-R, MPNet: bare encoders and
    sequence-classification heads); other architectures, weights without a known role (e.g.
    relative-key distance embeddings, MLM heads) and sentence-transformers modules other than
    Transformer, Pooling and Normalize are refused, naming them. A sentence-transformers parent
    gives a sentence-transformers folder whose Pooling dimension is ``hidden_size``.
    """
    import torch

    folder, subdir, hf_dir, name, config = _parent_config(parent)
    if config.model_type not in NARROW_MODEL_TYPES:
        raise InputError(
            f"{name}: model type {config.model_type!r} is not supported by the GUIDE width "
            f"projection (strategy 'guide-pca'); supported: {list(NARROW_MODEL_TYPES)}"
        )
    _check_st_modules(folder, name)
    depth = int(config.num_hidden_layers)
    d, f = int(config.hidden_size), int(config.intermediate_size)
    heads = int(config.num_attention_heads)
    head_dim = d // heads
    d_s = _int_arg(name, "hidden_size", hidden_size)
    f_s = f if intermediate_size is None else _int_arg(name, "intermediate_size", intermediate_size)
    h_s = (
        heads
        if num_attention_heads is None
        else _int_arg(name, "num_attention_heads", num_attention_heads)
    )
    if d_s > d or f_s > f or h_s > heads:
        raise ValueError(
            f"{name}: a GUIDE student is at most as wide as its parent (hidden_size {d}, "
            f"intermediate_size {f}, num_attention_heads {heads}); got {d_s}, {f_s}, {h_s}"
        )
    if d_s % h_s or d_s // h_s > head_dim:
        raise ValueError(
            f"{name}: hidden_size {d_s} must split into {h_s} heads of at most the parent's "
            f"head size {head_dim}"
        )
    try:
        layers = select_layers(depth, layers=list(range(depth) if layers is None else layers))
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from None
    state = _load_state_dict(hf_dir)
    params_parent = _count(state)
    state = _cut_depth(state, config, name, layers)

    word_keys = [k for k in state if _WORD.search(k)]
    if len(word_keys) != 1:
        raise InputError(f"{name}: expected one token embedding table, found {word_keys}")
    projection = mean = eigenvalues = None
    if d_s < d:
        projection, mean, eigenvalues = pca_projection(state[word_keys[0]], d_s)
    head_index = uniform_indices(heads, h_s)
    dim_index = uniform_indices(head_dim, d_s // h_s)
    select = {
        "a": None if (h_s, d_s) == (heads, d) else [h * head_dim + j for h in head_index
                                                    for j in dim_index],
        "f": None if f_s == f else uniform_indices(f, f_s),
        "H": None if h_s == heads else head_index,
    }  # fmt: skip
    student_state: dict[str, Any] = {}
    unknown = []
    for key, tensor in state.items():
        roles = next((r for pattern, r in _ROLES if pattern.search(key)), None)
        if roles is None:
            if tensor.is_floating_point():
                unknown.append(key)
            student_state[key] = tensor.contiguous()
            continue
        student_state[key] = _narrow_tensor(key, tensor, roles, projection, mean, select)
    if unknown:
        raise InputError(
            f"{name}: weights {unknown[:6]} have no known role for the GUIDE width projection "
            f"(supported: bare {list(NARROW_MODEL_TYPES)} encoders and sequence classifiers)"
        )
    config.hidden_size, config.intermediate_size, config.num_attention_heads = d_s, f_s, h_s
    _check_shapes(config, student_state, name)
    stats: dict[str, Any] = {
        "parent": name,
        "model_type": config.model_type,
        "parent_layers": depth,
        "student_layers": len(layers),
        "layers": list(layers),
        "parent_hidden_size": d,
        "hidden_size": d_s,
        "parent_intermediate_size": f,
        "intermediate_size": f_s,
        "parent_num_attention_heads": heads,
        "num_attention_heads": h_s,
        "heads": head_index,
        "head_dims": dim_index,
        "params_parent": params_parent,
        "params_student": _count(student_state),
        "pca": None,
    }
    extra = None
    if projection is not None:
        total = float(eigenvalues.sum())
        kept = float(eigenvalues[:d_s].sum())
        stats["pca"] = {
            "fitted_on": word_keys[0],
            "rows": int(state[word_keys[0]].shape[0]),
            "retained_variance": kept / total if total else 1.0,
            "discarded_eigenvalue_sum": total - kept,
            "mean_norm": float(torch.linalg.vector_norm(mean)),
            "file": PCA_FILE,
        }
        extra = {
            PCA_FILE: {
                "projection": projection.contiguous(),
                "mean": mean.contiguous(),
                "eigenvalues": eigenvalues.contiguous(),
            }
        }
    _write_student(
        folder, subdir, hf_dir, config, student_state, stats, out_dir, extra, embedding_dim=d_s
    )
    return stats


def _int_arg(name: str, key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: {key} must be a positive integer, got {value!r}")
    return value
