"""Optimizers by name or by class path, so that swapping one is a config change.

=============  ============================================  ==============================
name           class                                         state
=============  ============================================  ==============================
``adamw``      ``torch.optim.AdamW`` (fused)                 fp32
``lion``       ``bitsandbytes.optim.Lion`` (optim_bits 32)   fp32
``adamw8bit``  ``bitsandbytes.optim.AdamW8bit``              8-bit blockwise quantised
``lion8bit``   ``bitsandbytes.optim.Lion8bit``               8-bit blockwise quantised
=============  ============================================  ==============================

Or ``class: "pkg.module.Class"`` (any ``torch.optim.Optimizer`` subclass) with its
``kwargs``, in the style of lightning-ir. The Hugging Face Trainer builds the optimizer from the
class and keyword arguments (:func:`resolve_optimizer`), with its usual parameter groups (no
weight decay on biases and norm weights).

A bitsandbytes optimizer is probed before training (:func:`check_runnable`): one step on a
parameter on the training device, and for the 8-bit ones a check that the state really is 8-bit.
If the build or the device cannot run it, training stops with a message naming the optimizer,
the bitsandbytes version and the device; it is never replaced by another optimizer silently.
(bitsandbytes' paged variants are left out because on CPU they fall back to unpaged ones.)
"""

from __future__ import annotations

import importlib
from typing import Any

from irflow.students.spec import OptimizerSpec

OPTIMIZERS: dict[str, tuple[str, dict[str, Any]]] = {
    # Fused kernel: what the Hugging Face Trainer uses by default (torch >= 2.8), CPU and CUDA.
    "adamw": ("torch.optim.AdamW", {"fused": True}),
    "lion": ("bitsandbytes.optim.Lion", {"optim_bits": 32}),
    "adamw8bit": ("bitsandbytes.optim.AdamW8bit", {}),
    "lion8bit": ("bitsandbytes.optim.Lion8bit", {}),
}
_NO_EPS = ("lion", "lion8bit")
_EIGHT_BIT = ("adamw8bit", "lion8bit")
# bitsandbytes keeps tensors smaller than this (min_8bit_size) in 32-bit state; the probe must
# be at least this large to exercise the 8-bit path.
_PROBE_NUMEL = 8192


def _import(path: str):
    module_name, _, attr = path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise RuntimeError(f"optimizer class {path}: cannot import {module_name} ({err})") from err
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ValueError(f"optimizer class {path}: {module_name} has no {attr!r}") from None


def resolve_optimizer(spec: OptimizerSpec) -> tuple[type, dict[str, Any]]:
    """The optimizer class and its keyword arguments (without ``params`` and ``weight_decay``,
    which the Trainer's parameter groups carry).

    Raises :class:`ValueError` for an unknown name (listing the allowed ones), a class path
    that is not a ``torch.optim.Optimizer``, or an argument the optimizer does not take.
    """
    import torch

    if spec.class_path is not None:
        cls = _import(spec.class_path)
        if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
            raise ValueError(f"optimizer class {spec.class_path} is not a torch.optim.Optimizer")
        fixed: dict[str, Any] = {}
    else:
        if spec.name not in OPTIMIZERS:
            raise ValueError(
                f"unknown optimizer {spec.name!r}; allowed: {sorted(OPTIMIZERS)} (or 'class: "
                f"pkg.module.Class' with kwargs)"
            )
        path, fixed = OPTIMIZERS[spec.name]
        if spec.name in _NO_EPS and spec.eps is not None:
            raise ValueError(f"optimizer {spec.name!r} takes no eps")
        try:
            cls = _import(path)
        except RuntimeError as err:
            raise RuntimeError(
                f"optimizer {spec.name!r} needs {path.split('.')[0]}, which cannot be imported "
                f"here: {err}"
            ) from err
    kwargs: dict[str, Any] = {"lr": spec.lr, **fixed}
    if spec.betas is not None:
        kwargs["betas"] = tuple(spec.betas)
    if spec.eps is not None:
        kwargs["eps"] = spec.eps
    kwargs.update({k: list(v) if isinstance(v, tuple) else v for k, v in spec.kwargs})
    return cls, kwargs


def describe_optimizer(spec: OptimizerSpec) -> str:
    return spec.class_path or OPTIMIZERS[spec.name][0]


def check_runnable(spec: OptimizerSpec, device: str) -> None:
    """Take one step with the optimizer on ``device``; raise RuntimeError if it cannot.

    Only bitsandbytes optimizers are probed (their support depends on the build and device).
    """
    import torch

    cls, kwargs = resolve_optimizer(spec)
    if not cls.__module__.startswith("bitsandbytes"):
        return
    import bitsandbytes

    label = spec.name or spec.class_path
    try:
        probe = torch.nn.Parameter(torch.linspace(-1, 1, _PROBE_NUMEL, device=device))
        optimizer = cls([probe], **kwargs)
        probe.grad = torch.full_like(probe, 0.5)
        optimizer.step()
        if not torch.isfinite(probe).all():
            raise RuntimeError("the probe step produced non-finite values")
        if spec.name in _EIGHT_BIT:
            state = optimizer.state[probe]
            if state.get("state1") is None or state["state1"].dtype != torch.uint8:
                raise RuntimeError("the optimizer state is not 8-bit (bitsandbytes fell back)")
    except Exception as err:  # the library raises many types; the user needs the cause
        raise RuntimeError(
            f"optimizer {label!r} ({cls.__module__}.{cls.__name__}, bitsandbytes "
            f"{bitsandbytes.__version__}) cannot run on device {device!r}: {err}. Choose another "
            f"optimizer in the config; none is substituted automatically."
        ) from err


def build_optimizer(spec: OptimizerSpec, params, device: str = "cpu"):
    """An optimizer instance over ``params`` (checked with :func:`check_runnable` first)."""
    check_runnable(spec, device)
    cls, kwargs = resolve_optimizer(spec)
    return cls(params, weight_decay=spec.weight_decay, **kwargs)
