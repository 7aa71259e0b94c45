"""Building, saving and reloading a unified decoder model.

A saved model folder holds the peft adapter in peft's standard files
(``adapter_config.json``, ``adapter_model.safetensors``; plus ``moe_lora.json`` for MoE-LoRA,
see :mod:`.adapters`), ``score_head.safetensors`` for the MLP-head ablation, and
``unified.json``: the complete spec (templates, lengths, heads), the resolved token ids
(yes/no, pad, BOS/EOS) and the base model it was trained on (path and sha256 of its
``config.json``). The base weights are not copied: :func:`load_unified` takes the base model
folder, and refuses one whose tokenizer gives different yes/no ids.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from irflow.io import InputError, sha256_file

from .spec import TASKS, DecoderSpec, parse_spec

log = logging.getLogger(__name__)

UNIFIED_FILE = "unified.json"
SCORE_HEAD_FILE = "score_head.safetensors"


def build_model(base_model, tokenizer, spec: DecoderSpec, seed: int | None = None):
    """A fresh trainable :class:`UnifiedModel`: adapters (and MLP head) on a loaded base LM.

    LoRA weights are drawn after ``torch.manual_seed(seed)`` (default: the training seed).
    """
    import torch

    from .adapters import attach_adapters
    from .model import UnifiedModel, make_score_head

    seed = spec.training.seed if seed is None else seed
    torch.manual_seed(seed)
    peft_model, routing = attach_adapters(base_model, spec.adapter, TASKS, seed=seed)
    head = None
    if spec.reranking.head == "mlp":
        hidden = base_model.get_output_embeddings().in_features
        head = make_score_head(hidden, spec.reranking.mlp_hidden, seed)
        head.to(base_model.get_output_embeddings().weight.device)
    return UnifiedModel(peft_model, tokenizer, spec, routing=routing, score_head=head)


def base_identity(base_model) -> dict[str, Any]:
    """What identifies the base model: its folder (and config.json's sha256) or hub id."""
    from irflow.models import ModelRef

    if base_model is None:
        return {}
    if isinstance(base_model, ModelRef):
        if not base_model.path:
            return {"hf_id": base_model.hf_id, "revision": base_model.revision}
        base_model = base_model.path
    config = Path(base_model) / "config.json"
    return {
        "path": str(base_model),
        "config_sha256": sha256_file(config) if config.is_file() else None,
    }


def save_unified(
    model, out_dir: str | os.PathLike, base_model_dir=None, extra: dict | None = None
) -> None:
    """Write the model folder's files into ``out_dir`` (an existing, e.g. temporary, folder)."""
    from safetensors.torch import save_file

    from .adapters import save_adapters

    out_dir = Path(out_dir)
    save_adapters(model.peft, out_dir)
    if model.score_head is not None:
        state = {k: v.detach().cpu().contiguous() for k, v in model.score_head.state_dict().items()}
        save_file(state, str(out_dir / SCORE_HEAD_FILE))
    record = {
        "format": "irflow-unified-decoder/1",
        "spec": model.spec.as_dict(),
        "tokens": model.describe(),
        "base_model": base_identity(base_model_dir),
        **(extra or {}),
    }
    (out_dir / UNIFIED_FILE).write_text(
        json.dumps(record, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    for path in out_dir.iterdir():
        if path.is_file():
            path.chmod(0o644)


def read_record(model_dir: str | os.PathLike) -> dict[str, Any]:
    path = Path(model_dir) / UNIFIED_FILE
    if not path.is_file():
        raise InputError(f"{model_dir}: no {UNIFIED_FILE} (not a unified decoder model folder)")
    return json.loads(path.read_text(encoding="utf-8"))


def load_unified(model_dir: str | os.PathLike, base_model_dir, device: str | None = None):
    """Reload a saved model for inference (eval mode) on ``device`` (default: pick_device)."""
    from safetensors.torch import load_file

    from irflow.models import pick_device

    from .adapters import load_adapters
    from .base import load_base
    from .model import UnifiedModel, make_score_head

    device = device or pick_device()
    record = read_record(model_dir)
    spec = parse_spec(record["spec"], where=f"{model_dir}/{UNIFIED_FILE}")
    recorded_sha = record.get("base_model", {}).get("config_sha256")
    current = base_identity(base_model_dir).get("config_sha256")
    if recorded_sha and current and recorded_sha != current:
        log.warning(
            "%s was trained on a base model whose config.json differs from %s/config.json",
            model_dir, base_model_dir,
        )  # fmt: skip
    base, tokenizer = load_base(base_model_dir, device)
    peft_model, routing = load_adapters(base, model_dir)
    head = None
    if spec.reranking.head == "mlp":
        hidden = base.get_output_embeddings().in_features
        head = make_score_head(hidden, spec.reranking.mlp_hidden, spec.training.seed)
        head.load_state_dict(load_file(str(Path(model_dir) / SCORE_HEAD_FILE)))
        head.to(device)
    model = UnifiedModel(peft_model, tokenizer, spec, routing=routing, score_head=head)
    tokens = record.get("tokens", {})
    for key in ("yes_id", "no_id", "pad_id"):
        if key in tokens and tokens[key] != model.describe().get(key):
            raise InputError(
                f"{model_dir}: trained with {key} {tokens[key]}, but the tokenizer of "
                f"{base_model_dir} gives {model.describe().get(key)}; wrong base model?"
            )
    return model.eval()


def load_arm(model_dir: str | os.PathLike, base_entry: dict[str, Any], device: str | None = None):
    """:func:`load_unified` for a rule: ``base_entry`` is the arm's base model as the rules pass
    it (a ``models:`` entry plus its ``name``)."""
    from irflow.models import ModelRef

    entry = dict(base_entry)
    return load_unified(model_dir, ModelRef.from_config(entry.pop("name"), entry), device)


def batching_options(inference: dict[str, Any]) -> dict[str, Any]:
    """The arm's ``inference:`` section as keyword arguments of :mod:`.inference`'s functions."""
    from .model import DEFAULT_MAX_BATCH

    return {
        "batch_tokens": inference.get("batch_tokens"),
        "max_batch": inference.get("max_batch", DEFAULT_MAX_BATCH),
    }
