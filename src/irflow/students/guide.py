"""GUIDE-style students: a shallower copy of a model that keeps a chosen subset of its layers.

A student of ``L'`` layers is built from an ``L``-layer parent by copying layers ``layers``
(renumbered ``0..L'-1`` in order) together with everything that is not a layer: embeddings,
final norms, pooler, classification or language-model heads. The result is an ordinary
Hugging Face checkpoint (``config.json`` with ``num_hidden_layers = L'`` and per-layer
attributes such as ``layer_types`` cut to the kept layers, ``model.safetensors``) that
``from_pretrained`` loads with the parent's own model class; a student keeping every layer
is the parent, weight for weight.

Layer selection strategies (:data:`STRATEGIES`):

``uniform``   layers at a uniform integer interval from layer 0: stride ``s = ceil(L / L')``
              (22 -> 6 gives 0, 4, 8, 12, 16, 20; 12 -> 6 gives 0, 2, ..., 10; 12 -> 3 gives
              0, 4, 8). When that stride would run past the last layer (e.g. 10 -> 6), the
              indices are ``floor(i * L / L')``, as even as integers allow, still from layer 0.
``first``     layers ``0..L'-1`` (the ablation baseline).
``explicit``  a sorted list of distinct indices given in the config.

Why the weights are edited as a state dict rather than through a model class: the parent may be
a bare encoder, a sequence classifier or a causal LM, and the checkpoint must keep whatever
head it has; renaming the tensors of the kept layers copies them exactly, needs no knowledge of
the model class, and never runs model code.

Supported families (:data:`SUPPORTED_MODEL_TYPES`): BERT-style encoders (BERT/MiniLM, RoBERTa,
XLM-R, ELECTRA), MPNet, ModernBERT, and Llama/Mistral/Qwen2/Qwen3 decoders. A sentence-transformers
folder (``modules.json``) stays one: its Transformer module is cut, every other module (pooling,
normalisation, dense layers) is copied unchanged, so ``SentenceTransformer(out)`` and
``CrossEncoder(out)`` both load the student.
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
) -> dict[str, Any]:
    """:func:`select_layers` on the parent's depth, then :func:`build_student`; the stats add
    the strategy. Errors name the parent and its depth."""
    depth = model_depth(parent)
    name = parent.name if isinstance(parent, ModelRef) else str(parent)
    try:
        chosen = select_layers(depth, num_student_layers, strategy, layers)
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from None
    stats = build_student(parent, chosen, out_dir)
    return {**stats, "strategy": "explicit" if layers is not None else strategy}


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
    from safetensors.torch import save_file

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
    stats = {
        "parent": name,
        "model_type": config.model_type,
        "parent_layers": depth,
        "student_layers": len(layers),
        "layers": list(layers),
        "params_parent": _count(state),
        "params_student": _count(student_state),
    }
    with atomic_output(out_dir, directory=True) as tmp:
        for entry in sorted(folder.iterdir()):
            # The parent's model card describes the parent, not the student.
            if entry.name.startswith(".") or entry.name in (STATS_FILE, "README.md"):
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
        config.save_pretrained(target)
        save_file(student_state, target / "model.safetensors", metadata={"format": "pt"})
        (tmp / STATS_FILE).write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")
    return stats
