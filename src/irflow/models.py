"""Model references, device choice and safe loading.

A model in the config has exactly one of ``hf_id`` (a Hugging Face hub id, optionally with a
pinned ``revision``) or ``path`` (a local directory). Loading never runs remote code and reads
safetensors only unless the config says otherwise (``trust_remote_code: true``), in which case
the provenance records it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from irflow.io import InputError


@dataclass(frozen=True)
class ModelRef:
    name: str
    hf_id: str | None = None
    path: str | None = None
    revision: str | None = None
    max_length: int | None = None
    trust_remote_code: bool = False

    @classmethod
    def from_config(cls, name: str, entry: dict[str, Any]) -> ModelRef:
        return cls(
            name=name,
            hf_id=entry.get("hf_id"),
            path=entry.get("path"),
            revision=entry.get("revision"),
            max_length=entry.get("max_length"),
            trust_remote_code=bool(entry.get("trust_remote_code", False)),
        )

    @property
    def name_or_path(self) -> str:
        if self.path:
            if not Path(self.path).exists():
                raise InputError(
                    f"model {self.name!r}: local path {self.path} does not exist (run the set-up "
                    f"command, or set 'models: {self.name}: hf_id' to load from the hub)"
                )
            return self.path
        return self.hf_id


def pick_device() -> str:
    """CUDA when present, else CPU; ``IRFLOW_DEVICE`` overrides (e.g. ``cpu`` on a GPU node)."""
    import torch

    forced = os.environ.get("IRFLOW_DEVICE")
    if forced:
        return forced
    return "cuda" if torch.cuda.is_available() else "cpu"


def configure_threads(threads: int) -> None:
    """Use exactly the cores the scheduler gave this job."""
    import torch

    torch.set_num_threads(max(1, int(threads)))


def model_kwargs(device: str) -> dict[str, Any]:
    """bf16 weights and SDPA attention on GPU; fp32 on CPU, where bf16 matmuls are slower."""
    import torch

    kwargs: dict[str, Any] = {"use_safetensors": True}
    if device.startswith("cuda"):
        kwargs["torch_dtype"] = torch.bfloat16
        kwargs["attn_implementation"] = "sdpa"
    return kwargs


def load_sentence_transformer(ref: ModelRef, device: str):
    from sentence_transformers import SentenceTransformer

    try:
        model = SentenceTransformer(
            ref.name_or_path,
            device=device,
            revision=ref.revision,
            trust_remote_code=ref.trust_remote_code,
            model_kwargs=model_kwargs(device),
        )
    except InputError:
        raise
    except Exception as err:  # the library raises many types; the user needs the model's name
        raise InputError(
            f"model {ref.name!r} ({ref.hf_id or ref.path}) could not be loaded: {err}"
        ) from err
    if ref.max_length:
        model.max_seq_length = ref.max_length
    return model
