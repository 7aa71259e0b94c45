"""LoRA and task-aware MoE-LoRA adapters on peft, saved and loaded in peft's standard format.

**LoRA** is plain ``peft.LoraConfig`` (``task_type=None``) on the configured projections.

**MoE-LoRA** uses peft's custom-module hook (``LoraConfig._register_custom_module``): the
projections named in ``moe_modules`` (by default the MLP's gate/up/down) become
:class:`MoELoraLinear`, every other target (the attention projections) stays peft's own
``lora.Linear``, i.e. one LoRA shared by both tasks. Nothing in peft is copied or patched.

An :class:`MoELoraLinear` holds ``E = num_shared + len(tasks) * num_task`` experts of rank ``r``
stacked along the rank axis of peft's own ``lora_A``/``lora_B`` (``lora_A``: ``E*r x in``,
``lora_B``: ``out x E*r``), plus a router ``lora_router`` (``in -> E``, no bias). For a token
``x`` of task ``t`` the router's logits are masked to the experts task ``t`` may use (the shared
ones and ``t``'s own), softmaxed, the ``top_k`` largest kept and renormalised to gates ``g``;
the output is::

    base(x) + scaling * lora_B( repeat(g, r) * lora_A(dropout(x)) )

which is ``base(x) + scaling * sum_e g_e B_e A_e dropout(x)``. With a single expert the gate is
exactly 1.0 and this is bit-for-bit plain LoRA. The task (and the attention mask, so padding is
not counted) comes from a :class:`RoutingState` shared by all MoE layers of a model, set by the
caller before each forward pass. Routing is a deterministic function of the inputs (``topk``
breaks ties by index), and router weights are initialised from a generator seeded by
``(router_seed, module name)``, so they do not consume the global RNG: a one-expert MoE-LoRA
model and a LoRA model built after the same ``torch.manual_seed`` get identical LoRA weights.

**Saving/loading.** ``PeftModel.save_pretrained`` writes the standard ``adapter_config.json``
(a plain LoRA config; ``r`` is the per-expert rank) and ``adapter_model.safetensors``; peft
collects every parameter of a tuner layer, so ``lora_router`` and the stacked ``lora_A``/
``lora_B`` are saved under their usual key pattern. :func:`save_adapters` adds
``moe_lora.json`` (tasks, experts, top-k, router seed, which modules). To load,
:func:`load_adapters` reads both, registers :class:`MoELoraLinear` on the ``LoraConfig`` and
calls ``PeftModel.from_pretrained(base, dir, config=config)``. Plain peft without the
registration cannot load a MoE adapter (the stacked shapes and the router have no home); a
plain LoRA adapter loads with plain peft.
"""

from __future__ import annotations

import json
import math
import os
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft.tuners.lora.layer import Linear as _LoraLinear
from torch import nn

from irflow.io import InputError, write_json_atomic

MOE_CONFIG_FILE = "moe_lora.json"
MOE_FORMAT = "irflow-moe-lora/1"


@dataclass(frozen=True)
class MoEConfig:
    """What an MoE-LoRA adapter's layers are made of (saved as ``moe_lora.json``)."""

    tasks: tuple[str, ...]
    modules: tuple[str, ...]
    num_shared_experts: int
    num_task_experts: int
    top_k: int
    router_seed: int = 0
    router_init_std: float = 0.02

    def __post_init__(self):
        if self.num_shared_experts + self.num_task_experts < 1:
            raise ValueError("MoE-LoRA needs at least one expert per task")
        if not 1 <= self.top_k <= self.num_shared_experts + self.num_task_experts:
            raise ValueError(
                f"top_k {self.top_k} must be between 1 and the experts a task can use "
                f"({self.num_shared_experts + self.num_task_experts})"
            )

    @property
    def num_experts(self) -> int:
        return self.num_shared_experts + len(self.tasks) * self.num_task_experts

    def expert_kinds(self) -> list[str]:
        """``shared`` or the owning task, per expert index."""
        kinds = ["shared"] * self.num_shared_experts
        for task in self.tasks:
            kinds += [task] * self.num_task_experts
        return kinds

    def eligible(self, task: str) -> list[bool]:
        return [kind in ("shared", task) for kind in self.expert_kinds()]

    def to_json(self) -> dict[str, Any]:
        return {"format": MOE_FORMAT, **asdict(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str = MOE_CONFIG_FILE) -> MoEConfig:
        if data.get("format") != MOE_FORMAT:
            raise InputError(f"{where}: format {data.get('format')!r}, expected {MOE_FORMAT!r}")
        fields = {k: v for k, v in data.items() if k != "format"}
        fields["tasks"] = tuple(fields["tasks"])
        fields["modules"] = tuple(fields["modules"])
        return cls(**fields)


@dataclass
class RoutingState:
    """Per-forward routing context shared by every MoE layer of one model.

    ``task``: the task of the batch going through; ``token_mask``: ``(batch, seq)`` bool of the
    real tokens (usage is counted over these only); ``recording``: count usage and collect the
    load-balancing terms only while true (the caller switches it off outside its own forward
    pass, so gradient-checkpoint recomputation during backward does not count twice).
    """

    tasks: tuple[str, ...]
    task: str | None = None
    token_mask: torch.Tensor | None = None
    recording: bool = False
    aux_losses: list[torch.Tensor] = field(default_factory=list)


def _module_seed(seed: int, name: str) -> int:
    return (int(seed) * 1_000_003 + zlib.crc32(name.encode())) % (2**63)


class MoELoraLinear(_LoraLinear):
    """A peft LoRA linear layer whose low-rank update is a task-aware mixture of experts."""

    adapter_layer_names = (*_LoraLinear.adapter_layer_names, "lora_router")
    other_param_names = (*_LoraLinear.other_param_names, "moe_config")

    def __init__(self, base_layer, adapter_name, config, *, moe, routing, **kwargs):
        # Set before LoraLayer.__init__ runs update_layer(); plain attributes, not submodules.
        object.__setattr__(self, "_moe_pending", (moe, routing))
        super().__init__(base_layer, adapter_name, config=config, **kwargs)

    def update_layer(self, adapter_name, r, lora_alpha, config, **kwargs):
        moe, routing = self.__dict__.pop("_moe_pending", (None, None))
        if not hasattr(self, "lora_router"):
            # Before peft's update_layer: its set_adapter() walks adapter_layer_names.
            self.lora_router = nn.ModuleDict()
            self.moe_config: dict[str, MoEConfig] = {}
            self.usage: dict[str, dict[str, dict[str, torch.Tensor]]] = {}
        if moe is None:  # a second adapter on the same layer reuses the first one's settings
            moe, routing = next(iter(self.moe_config.values())), self.routing
        self.routing = routing
        self.moe_config[adapter_name] = moe
        self.usage[adapter_name] = {}
        # skip_init: nn.Linear's own init would draw from the global RNG.
        router = nn.utils.skip_init(nn.Linear, self.in_features, moe.num_experts, bias=False)
        generator = torch.Generator().manual_seed(
            _module_seed(moe.router_seed, kwargs.get("target_name", ""))
        )
        with torch.no_grad():
            router.weight.copy_(
                torch.randn(router.weight.shape, generator=generator) * moe.router_init_std
            )
        self.lora_router[adapter_name] = router.to(self.get_base_layer().weight.device)
        super().update_layer(adapter_name, r * moe.num_experts, lora_alpha, config=config, **kwargs)
        # peft stored the stacked rank; the scaling and rank of each expert are those of an
        # r-rank LoRA, so one expert is exactly plain LoRA.
        self.r[adapter_name] = r
        self.scaling[adapter_name] = (
            lora_alpha / math.sqrt(r) if config.use_rslora else lora_alpha / r
        )

    # Merging folds a fixed delta into the weight; a token-dependent mixture has none.
    def merge(self, *args, **kwargs):
        raise NotImplementedError("MoE-LoRA layers cannot be merged: the update depends on x")

    def get_delta_weight(self, adapter):
        raise NotImplementedError("MoE-LoRA layers have no single delta weight")

    def gates(self, adapter: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(gates, probs)``, both ``(..., E)``: sparse top-k gates and the masked softmax."""
        moe = self.moe_config[adapter]
        state = self.routing
        if state is None or state.task is None:
            raise RuntimeError(
                "MoE-LoRA: no task set; call the model through UnifiedModel (or set "
                "routing.task) so the router knows the task"
            )
        if state.task not in moe.tasks:
            raise RuntimeError(f"MoE-LoRA: task {state.task!r} is not one of {moe.tasks}")
        router = self.lora_router[adapter]
        logits = router(x.to(router.weight.dtype))
        allowed = torch.tensor(moe.eligible(state.task), device=logits.device)
        logits = logits.masked_fill(~allowed, float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        top = torch.topk(probs, moe.top_k, dim=-1)
        kept = top.values / top.values.sum(dim=-1, keepdim=True)
        gates = torch.zeros_like(probs).scatter(-1, top.indices, kept)
        # The autograd graph must not depend on `recording` or on the current token mask:
        # gradient checkpointing re-runs this forward during backward (recording off, and
        # possibly another batch's mask current) and requires the same saved tensors.
        balance = None
        if self.training and torch.is_grad_enabled():
            balance = self._balance(probs, top.indices, allowed)
        if state.recording:
            self._record(adapter, state, probs, top.indices)
            if balance is not None:
                state.aux_losses.append(balance)
        return gates, probs

    @staticmethod
    def _balance(probs, chosen, allowed) -> torch.Tensor:
        """Switch-Transformer load balancing over the experts the task may use:
        ``n * sum_i f_i * P_i`` (``f``: share of routed top-k slots, no gradient; ``P``: mean
        router probability); 1 when balanced. Taken over all positions, padding included,
        so that the graph is the same whichever batch's mask is current (see above)."""
        flat = probs.reshape(-1, probs.shape[-1])
        counts = torch.zeros(flat.shape[-1], dtype=flat.dtype, device=flat.device)
        counts.scatter_add_(
            0, chosen.reshape(-1).detach(), torch.ones_like(chosen.reshape(-1), dtype=flat.dtype)
        )
        share = counts / counts.sum()
        return allowed.sum() * (share * flat.mean(0)).sum()

    def _record(self, adapter, state, probs, chosen):
        """Add this forward pass's routing of real tokens to the usage counters."""
        moe = self.moe_config[adapter]
        mask = state.token_mask
        with torch.no_grad():
            flat_probs = probs.detach().reshape(-1, probs.shape[-1])
            flat_chosen = chosen.reshape(-1, chosen.shape[-1])
            if mask is not None and mask.numel() == flat_probs.shape[0]:
                keep = mask.reshape(-1).to(flat_probs.device)
                flat_probs, flat_chosen = flat_probs[keep], flat_chosen[keep]
            device = flat_probs.device
            entry = self.usage[adapter].setdefault(
                state.task,
                {
                    "tokens": torch.zeros((), dtype=torch.float64, device=device),
                    "counts": torch.zeros(moe.num_experts, dtype=torch.float64, device=device),
                    "prob_sum": torch.zeros(moe.num_experts, dtype=torch.float64, device=device),
                },
            )
            entry["tokens"] += flat_probs.shape[0]
            entry["counts"].scatter_add_(
                0,
                flat_chosen.reshape(-1),
                torch.ones(flat_chosen.numel(), dtype=torch.float64, device=device),
            )
            entry["prob_sum"] += flat_probs.double().sum(0)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if self.disable_adapters or self.merged:
            return self.base_layer(x, *args, **kwargs)
        result = self.base_layer(x, *args, **kwargs)
        result_dtype = result.dtype
        for adapter in self.active_adapters:
            if adapter not in self.lora_A:
                continue
            lora_A, lora_B = self.lora_A[adapter], self.lora_B[adapter]
            gates, _ = self.gates(adapter, x)
            xa = self._cast_input_dtype(x, lora_A.weight.dtype)
            hidden = lora_A(self.lora_dropout[adapter](xa))
            hidden = hidden * gates.to(hidden.dtype).repeat_interleave(self.r[adapter], dim=-1)
            result = result + lora_B(hidden) * self.scaling[adapter]
        return result.to(result_dtype)

    def __repr__(self) -> str:
        return "moe_" + super().__repr__()


def _moe_dispatcher(moe: MoEConfig, routing: RoutingState):
    """peft's custom-module hook: MoE layers for ``moe.modules``; None hands every other target
    to peft's default dispatch (plain ``lora.Linear``)."""

    def dispatch(target, adapter_name, config, **kwargs):
        name = kwargs.get("target_name") or ""
        if name.rsplit(".", 1)[-1] not in moe.modules:
            return None
        return MoELoraLinear(target, adapter_name, config, moe=moe, routing=routing, **kwargs)

    return dispatch


def _register_moe(config, moe: MoEConfig, routing: RoutingState) -> None:
    config._register_custom_module({nn.Linear: _moe_dispatcher(moe, routing)})


def lora_config(adapter_spec, inference_mode: bool = False):
    from peft import LoraConfig

    return LoraConfig(
        r=adapter_spec.r,
        lora_alpha=adapter_spec.alpha,
        lora_dropout=adapter_spec.dropout,
        target_modules=list(adapter_spec.target_modules),
        bias="none",
        task_type=None,
        inference_mode=inference_mode,
    )


def moe_config_for(adapter_spec, tasks: tuple[str, ...], seed: int) -> MoEConfig:
    return MoEConfig(
        tasks=tuple(tasks),
        modules=tuple(adapter_spec.moe_modules),
        num_shared_experts=adapter_spec.num_shared_experts,
        num_task_experts=adapter_spec.num_task_experts,
        top_k=adapter_spec.top_k,
        router_seed=seed,
        router_init_std=adapter_spec.router_init_std,
    )


def attach_adapters(model, adapter_spec, tasks: tuple[str, ...], seed: int = 0):
    """Wrap a causal LM in a trainable ``PeftModel``; returns ``(peft_model, routing or None)``.

    ``adapter_spec`` is an :class:`irflow.decoder.spec.AdapterSpec`. LoRA weights are drawn from
    the global torch RNG (seed it first); MoE routers from ``seed`` and the module name.
    """
    from peft import get_peft_model

    config = lora_config(adapter_spec)
    routing = None
    if adapter_spec.kind == "moe-lora":
        routing = RoutingState(tasks=tuple(tasks))
        _register_moe(config, moe_config_for(adapter_spec, tasks, seed), routing)
    peft_model = get_peft_model(model, config)
    _check_targets(peft_model, adapter_spec)
    return peft_model, routing


def _check_targets(peft_model, adapter_spec) -> None:
    from peft.tuners.lora import LoraLayer

    found = {name.rsplit(".", 1)[-1] for name, m in peft_model.named_modules()
             if isinstance(m, LoraLayer)}  # fmt: skip
    missing = sorted(set(adapter_spec.target_modules) - found)
    if missing:
        raise InputError(
            f"adapter.target_modules: {missing} match no linear layer of the base model"
        )
    if adapter_spec.kind == "moe-lora":
        moe_found = {name.rsplit(".", 1)[-1] for name, m in peft_model.named_modules()
                     if isinstance(m, MoELoraLinear)}  # fmt: skip
        if moe_found != set(adapter_spec.moe_modules):
            raise InputError(
                f"adapter.moe_modules: {sorted(adapter_spec.moe_modules)} but MoE layers were "
                f"built for {sorted(moe_found)}"
            )


def moe_layers(model) -> list[tuple[str, MoELoraLinear]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, MoELoraLinear)]


def save_adapters(peft_model, out_dir: str | os.PathLike) -> None:
    """``save_pretrained`` (standard peft files) plus ``moe_lora.json`` for an MoE adapter."""
    out_dir = Path(out_dir)
    peft_model.save_pretrained(str(out_dir), safe_serialization=True)
    layers = moe_layers(peft_model)
    if layers:
        moe = layers[0][1].moe_config["default"]
        write_json_atomic(out_dir / MOE_CONFIG_FILE, moe.to_json())


def load_adapters(base_model, adapter_dir: str | os.PathLike, trainable: bool = False):
    """Load an adapter saved by :func:`save_adapters` onto ``base_model``.

    Returns ``(peft_model, routing or None)``. A plain LoRA adapter is loaded by
    ``PeftModel.from_pretrained`` as is; an MoE adapter after registering
    :class:`MoELoraLinear` on its ``LoraConfig`` (see the module docstring).
    """
    from peft import LoraConfig, PeftModel

    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise InputError(f"{adapter_dir}: no adapter_config.json (not a peft adapter folder)")
    config = LoraConfig.from_pretrained(str(adapter_dir))
    config.inference_mode = not trainable
    routing = None
    moe_file = adapter_dir / MOE_CONFIG_FILE
    if moe_file.is_file():
        moe = MoEConfig.from_json(json.loads(moe_file.read_text()), where=str(moe_file))
        routing = RoutingState(tasks=moe.tasks)
        _register_moe(config, moe, routing)
    peft_model = PeftModel.from_pretrained(
        base_model, str(adapter_dir), config=config, is_trainable=trainable
    )
    return peft_model, routing


def expert_usage(model, reset: bool = False) -> list[dict[str, Any]]:
    """Rows ``{module, layer, task, expert, kind, tokens, count, fraction, mean_prob}``.

    ``count``: tokens that picked the expert among their top-k; ``fraction``: count divided by
    all routed slots of that task in that module (sums to 1 over experts); ``mean_prob``: mean
    router probability (before top-k).
    """
    rows = []
    for name, layer in moe_layers(model):
        moe = layer.moe_config["default"]
        kinds = moe.expert_kinds()
        layer_index = _layer_index(name)
        short = name.rsplit(".", 1)[-1]
        for task, entry in sorted(layer.usage.get("default", {}).items()):
            tokens = float(entry["tokens"])
            counts = entry["counts"].cpu().tolist()
            probs = entry["prob_sum"].cpu().tolist()
            slots = sum(counts)
            for expert, (count, prob) in enumerate(zip(counts, probs, strict=True)):
                rows.append(
                    {
                        "module": short,
                        "layer": layer_index,
                        "task": task,
                        "expert": expert,
                        "kind": kinds[expert],
                        "tokens": int(tokens),
                        "count": int(count),
                        "fraction": count / slots if slots else 0.0,
                        "mean_prob": prob / tokens if tokens else 0.0,
                    }
                )
        if reset:
            layer.usage["default"] = {}
    return rows


def _layer_index(name: str) -> int:
    parts = name.split(".")
    for before, after in zip(parts, parts[1:], strict=False):
        if before in ("layers", "h", "blocks") and after.isdigit():
            return int(after)
    return -1
