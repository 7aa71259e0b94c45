"""Staged training of the unified decoder (embedding, then joint embedding + reranking).

**Why a custom loop and not ``transformers.Trainer``**: every joint step needs the two tasks'
gradients *separately* (per-layer gradient cosines, PCGrad) before they are combined into the
one gradient the optimizer sees, batches of the two tasks alternate within a step at a
configurable ratio, and the optimizer and schedule are re-created per stage. In ``Trainer``
that means overriding ``training_step``, the optimizer, the scheduler and the data loading,
i.e. most of it; the loop below is short and does exactly that.

**One optimizer step** of a stage with tasks ``T`` (one or both of embed, rerank): for each task
``t``, ``ratio[t]`` batches of ``t`` go forward and backward (each loss divided by
``ratio[t]``, so ``g_t`` is the mean gradient); ``g_t`` is copied out and the gradients zeroed.
The step's gradient is ``g_embed + λ·g_rerank`` (``λ``: ``lambda_rerank``), i.e. the gradient
of ``L = L_emb + λ·L_rerank``, or with ``pcgrad: true`` the PCGrad combination of
``g_embed`` and ``λ·g_rerank``. Then gradient clipping, the optimizer and the schedule step.
Every ``log_every`` steps of a joint stage the per-layer and per-projection cosines of
``g_embed`` and ``g_rerank`` are recorded (:mod:`.diagnostics`).

**Losses.** Embedding: InfoNCE (``temperature``) of each query against the positives and drawn
hard negatives of the whole batch, other known positives of the same query masked out,
optionally averaged over Matryoshka dimensions. Reranking: BCE of the yes/no score with label 1
for the positive and 0 for each negative, plus ``ranknet_weight`` x RankNet within each sample.
MoE-LoRA adds ``aux_loss_weight`` x the routers' load-balancing term to each task's loss.

**Determinism.** Seeds: LoRA init and dropout from ``torch.manual_seed(seed)``, routers and
the MLP head from their own seeded generators, batches from per-task numpy generators
(:mod:`.samples`), PCGrad's order from a seeded generator. On CPU the run is deterministic
(``torch.use_deterministic_algorithms`` for the duration of training).

**Precision.** On GPU the base weights are bf16 (SDPA attention) and the adapter weights fp32
(peft casts them); losses are computed in fp32. On CPU everything is fp32.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import shutil
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from irflow.io import atomic_output, write_json_atomic

from .spec import DecoderSpec, StageSpec, parse_spec

log = logging.getLogger(__name__)

_PROJECTION = re.compile(r"\.(\w+)\.lora_")


def make_optimizer(entry: dict[str, Any], params, lr: float, device: str):
    """The stage's optimizer from :mod:`irflow.students.optim`'s registry (``entry``: the
    parsed ``training.optimizer``; bitsandbytes optimizers are probed on ``device`` first)."""
    from irflow.students.optim import build_optimizer
    from irflow.students.spec import OptimizerSpec

    spec = OptimizerSpec.from_config({**entry, "lr": lr})
    return build_optimizer(spec, params, device)


def make_schedule(stage: StageSpec, optimizer):
    from transformers import get_scheduler

    warmup = int(round(stage.warmup_ratio * stage.steps))
    return get_scheduler(
        stage.schedule,
        optimizer=optimizer,
        num_warmup_steps=warmup,
        num_training_steps=stage.steps,
    )


@contextlib.contextmanager
def deterministic():
    """Deterministic kernels for the block, restoring the previous setting after."""
    before = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before, warn_only=warn_only)


class ParamGroups:
    """Trainable parameters, their flat-gradient layout, and the (layer, projection) groups."""

    def __init__(self, named: list[tuple[str, torch.nn.Parameter]]):
        from .adapters import _layer_index

        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.offsets = []
        start = 0
        groups: dict[tuple[int, str], list[tuple[int, int]]] = defaultdict(list)
        for name, param in named:
            stop = start + param.numel()
            self.offsets.append((start, stop))
            layer = _layer_index(name)
            if layer >= 0:
                match = _PROJECTION.search(name)
                module = match.group(1) if match else "other"
                groups[(layer, module)].append((start, stop))
                groups[(layer, "all")].append((start, stop))
            start = stop
        self.size = start
        self.groups = {
            key: torch.cat([torch.arange(a, b) for a, b in spans])
            for key, spans in sorted(groups.items())
        }

    def flat_grad(self) -> torch.Tensor:
        parts = [
            p.grad.reshape(-1).float() if p.grad is not None else
            torch.zeros(p.numel(), device=p.device)
            for p in self.params
        ]  # fmt: skip
        return torch.cat(parts)

    def set_grad(self, flat: torch.Tensor) -> None:
        for param, (start, stop) in zip(self.params, self.offsets, strict=True):
            param.grad = flat[start:stop].view_as(param).to(param.dtype).clone()

    def zero(self) -> None:
        for param in self.params:
            param.grad = None


class Trainer:
    def __init__(self, model, spec: DecoderSpec, data, device: str):
        from .samples import TaskSampler

        self.model = model
        self.spec = spec
        self.data = data
        self.device = device
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not named:
            raise RuntimeError("no trainable parameters")
        self.groups = ParamGroups(named)
        self.samplers = {
            "embed": TaskSampler(len(data), spec.embedding.batch_size,
                                 spec.embedding.num_negatives, spec.training.seed, "embed"),
            "rerank": TaskSampler(len(data), spec.reranking.batch_size,
                                  spec.reranking.num_negatives, spec.training.seed, "rerank"),
        }  # fmt: skip
        self.pcgrad_generator = torch.Generator().manual_seed(spec.training.seed + 1)
        self.train_log: list[dict[str, Any]] = []
        self.grad_cosine: list[dict[str, Any]] = []
        self.expert_usage: list[dict[str, Any]] = []
        self.stage_stats: list[dict[str, Any]] = []

    # ---------------------------------------------------------------- losses
    def embed_loss(self, batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        from .losses import matryoshka_info_nce

        data, model, e = self.data, self.model, self.spec.embedding
        qids = [data.query_ids[r] for r in batch.rows]
        doc_ids = [data.pos_ids[r] for r in batch.rows]
        for negatives in batch.negatives:
            doc_ids.extend(negatives)
        prompter = model.prompter
        q = model.embed_ids(prompter.query_ids([data.queries[q] for q in qids]))
        aux = [model.aux_loss()]
        d = model.embed_ids(prompter.document_ids([data.docs[x] for x in doc_ids]))
        aux.append(model.aux_loss())
        exclude = torch.tensor(
            [[j != i and doc in data.positives[qid] for j, doc in enumerate(doc_ids)]
             for i, qid in enumerate(qids)],
            dtype=torch.bool, device=q.device,
        )  # fmt: skip
        targets = torch.arange(len(qids), device=q.device)
        loss = matryoshka_info_nce(q, d, targets, e.temperature, e.matryoshka_dims, exclude)
        return loss, _mean_aux(aux)

    def rerank_loss(self, batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        from .losses import bce, ranknet

        data, model, r = self.data, self.model, self.spec.reranking
        queries, docs, labels, groups = [], [], [], []
        for k, (row, negatives) in enumerate(zip(batch.rows, batch.negatives, strict=True)):
            query = data.queries[data.query_ids[row]]
            for doc, label in [(data.pos_ids[row], 1.0)] + [(n, 0.0) for n in negatives]:
                queries.append(query)
                docs.append(data.docs[doc])
                labels.append(label)
                groups.append(k)
        scores = model.score_ids(model.prompter.pair_ids(queries, docs))
        labels_t = torch.tensor(labels, device=scores.device)
        loss = bce(scores, labels_t)
        if r.ranknet_weight > 0:
            loss = loss + r.ranknet_weight * ranknet(
                scores, labels_t, torch.tensor(groups, device=scores.device)
            )
        return loss, model.aux_loss()

    # ---------------------------------------------------------------- steps
    def task_gradient(self, task: str, repeats: int) -> tuple[torch.Tensor, float, float]:
        """Mean gradient of ``repeats`` batches of ``task``; (flat grad, loss, aux)."""
        total_loss = total_aux = 0.0
        weight = self.spec.adapter.aux_loss_weight
        for _ in range(repeats):
            batch = self.samplers[task].next(self.data)
            loss, aux = (self.embed_loss if task == "embed" else self.rerank_loss)(batch)
            objective = loss + weight * aux if aux is not None and weight > 0 else loss
            (objective / repeats).backward()
            total_loss += float(loss.detach()) / repeats
            total_aux += float(aux.detach()) / repeats if aux is not None else 0.0
        grad = self.groups.flat_grad()
        self.groups.zero()
        return grad, total_loss, total_aux

    def log_cosines(self, stage: StageSpec, step: int, g_embed, g_rerank) -> None:
        from .losses import cosine

        for (layer, module), index in self.groups.groups.items():
            index = index.to(g_embed.device)
            a, b = g_embed.index_select(0, index), g_rerank.index_select(0, index)
            self.grad_cosine.append(
                {
                    "stage": stage.name,
                    "step": step,
                    "layer": layer,
                    "module": module,
                    "cosine": cosine(a, b),
                    "dot": float(torch.dot(a, b)),
                    "norm_embed": float(torch.linalg.vector_norm(a)),
                    "norm_rerank": float(torch.linalg.vector_norm(b)),
                }
            )

    def run_stage(
        self,
        index: int,
        checkpoints: Checkpoints | None = None,
        resume: dict[str, Any] | None = None,
        on_step=None,
    ) -> dict[str, Any]:
        """Train stage ``index``; from ``resume`` (a checkpoint's ``stage`` part) if given.

        ``on_step(global_step)`` runs after each step and its checkpoint (tests use it to kill
        the process at a known step)."""
        from .adapters import expert_usage
        from .losses import cosine, pcgrad

        spec = self.spec.training
        stage = spec.stages[index]
        first_global = sum(s.steps for s in spec.stages[:index])
        optimizer = make_optimizer(spec.optimizer, self.groups.params, stage.lr, self.device)
        schedule = make_schedule(stage, optimizer)
        losses: dict[str, list[float]] = defaultdict(list)
        if resume is None:
            expert_usage(self.model.peft, reset=True)
            start, projections_total, elapsed = 1, 0, 0.0
        else:
            optimizer.load_state_dict(resume["optimizer"])
            schedule.load_state_dict(resume["schedule"])
            # Here, once the stage's optimizer and schedule exist: the point of the
            # uninterrupted run where the checkpoint was taken.
            torch.set_rng_state(resume["torch_rng"])
            if resume["cuda_rng"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(resume["cuda_rng"])
            losses.update({t: list(v) for t, v in resume["losses"].items()})
            start = resume["step"] + 1
            projections_total, elapsed = resume["projections"], resume["seconds"]
        self.model.train()
        began = time.perf_counter() - elapsed
        for step in range(start, stage.steps + 1):
            step_began, step_cpu = time.perf_counter(), time.process_time()
            grads, row = {}, {"stage": stage.name, "step": step, "lr": schedule.get_last_lr()[0]}
            aux_total = 0.0
            for task in stage.tasks:
                grads[task], loss, aux = self.task_gradient(task, stage.ratio[task])
                row[f"loss_{task}"] = loss
                losses[task].append(loss)
                aux_total += aux
            weights = {"embed": 1.0, "rerank": stage.lambda_rerank}
            scaled = [grads[t] * weights[t] for t in stage.tasks]
            row["loss"] = sum(row[f"loss_{t}"] * weights[t] for t in stage.tasks)
            row["aux"] = aux_total if self.model.routing is not None else None
            projections = None
            if len(stage.tasks) == 2:
                row["grad_cosine"] = cosine(grads["embed"], grads["rerank"])
                if (step - 1) % spec.log_every == 0 or step == stage.steps:
                    self.log_cosines(stage, step, grads["embed"], grads["rerank"])
            if stage.pcgrad and len(stage.tasks) > 1:
                combined, projections = pcgrad(scaled, self.pcgrad_generator)
                projections_total += projections
            else:
                combined = torch.stack(scaled).sum(0)
            self.groups.set_grad(combined)
            if spec.max_grad_norm is not None:
                norm = torch.nn.utils.clip_grad_norm_(self.groups.params, spec.max_grad_norm)
            else:
                norm = torch.linalg.vector_norm(combined)
            row["grad_norm"] = float(norm)
            if not math.isfinite(row["grad_norm"]):
                raise FloatingPointError(
                    f"stage {stage.name!r}, step {step}: non-finite gradient norm"
                )
            optimizer.step()
            schedule.step()
            self.groups.zero()
            row["pcgrad_projections"] = projections
            row["seconds"] = time.perf_counter() - step_began
            row["cpu_seconds"] = time.process_time() - step_cpu
            self.train_log.append(row)
            if step == 1 or step % max(1, stage.steps // 10) == 0:
                log.info(
                    "stage %s step %d/%d: %s", stage.name, step, stage.steps,
                    ", ".join(f"{t} {row[f'loss_{t}']:.4f}" for t in stage.tasks),
                )  # fmt: skip
            global_step = first_global + step
            if checkpoints is not None and checkpoints.due(global_step):
                checkpoints.save(
                    global_step,
                    self.state_dict(
                        {
                            "index": index,
                            "step": step,
                            "global_step": global_step,
                            "optimizer": optimizer.state_dict(),
                            "schedule": schedule.state_dict(),
                            "losses": dict(losses),
                            "projections": projections_total,
                            "seconds": time.perf_counter() - began,
                        }
                    ),
                )
            if on_step is not None:
                on_step(global_step)
        seconds = time.perf_counter() - began
        for usage in expert_usage(self.model.peft, reset=True):
            self.expert_usage.append({"stage": stage.name, **usage})
        stats = {
            "name": stage.name,
            "tasks": list(stage.tasks),
            "steps": stage.steps,
            "seconds": seconds,
            "pcgrad_projections": projections_total if stage.pcgrad else None,
            "first_loss": {t: v[0] for t, v in losses.items()},
            "last_loss": {t: v[-1] for t, v in losses.items()},
            "mean_loss": {t: sum(v) / len(v) for t, v in losses.items()},
        }
        self.stage_stats.append(stats)
        return stats

    # ---------------------------------------------------------------- checkpoints
    def state_dict(self, stage: dict[str, Any]) -> dict[str, Any]:
        """Everything a resumed run needs to continue bit for bit: trainable weights, the
        in-progress stage (optimizer, schedule, step), every random state, the samplers'
        positions, the MoE usage counters and the diagnostics rows so far."""
        from .adapters import moe_layers

        state = {
            "params": [p.detach().cpu().clone() for p in self.groups.params],
            "stage": {
                **stage,  # the in-progress stage, with the RNG states (restored by run_stage)
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            },
            "stages_done": list(self.stage_stats),
            "samplers": {t: s.state_dict() for t, s in self.samplers.items()},
            "pcgrad_generator": self.pcgrad_generator.get_state(),
            "usage": {
                name: {
                    task: {k: v.detach().cpu().clone() for k, v in entry.items()}
                    for task, entry in layer.usage.get("default", {}).items()
                }
                for name, layer in moe_layers(self.model.peft)
            },
            "train_log": list(self.train_log),
            "grad_cosine": list(self.grad_cosine),
            "expert_usage": list(self.expert_usage),
        }
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        from .adapters import moe_layers

        with torch.no_grad():
            for param, saved in zip(self.groups.params, state["params"], strict=True):
                if param.shape != saved.shape:
                    raise ValueError("checkpoint does not match the model's trainable parameters")
                param.copy_(saved.to(param.device, param.dtype))
        self.stage_stats = list(state["stages_done"])
        for task, sampler in self.samplers.items():
            sampler.load_state_dict(state["samplers"][task])
        self.pcgrad_generator.set_state(state["pcgrad_generator"])
        for name, layer in moe_layers(self.model.peft):
            saved = state["usage"].get(name, {})
            layer.usage["default"] = {
                task: {k: v.to(self.device) for k, v in entry.items()}
                for task, entry in saved.items()
            }
        self.train_log = list(state["train_log"])
        self.grad_cosine = list(state["grad_cosine"])
        self.expert_usage = list(state["expert_usage"])

    def summary(self) -> dict[str, Any]:
        from .adapters import moe_layers

        layers = sorted({k[0] for k in self.groups.groups})
        modules = sorted({k[1] for k in self.groups.groups})
        steps: dict[str, list[int]] = defaultdict(list)
        for row in self.grad_cosine:
            if row["layer"] == layers[0] and row["module"] == "all":
                steps[row["stage"]].append(row["step"])
        out: dict[str, Any] = {
            "adapter": self.spec.adapter.kind,
            "grad_cosine": {"layers": layers, "modules": modules, "steps": dict(steps)},
            "expert_usage": None,
        }
        moe = moe_layers(self.model.peft)
        if moe:
            config = moe[0][1].moe_config["default"]
            out["expert_usage"] = {
                "stages": list(dict.fromkeys(r["stage"] for r in self.expert_usage)),
                "tasks": list(config.tasks),
                "experts": config.num_experts,
                "kinds": config.expert_kinds(),
                "top_k": config.top_k,
                "layers": sorted({_layer_of(n) for n, _ in moe}),
                "modules": list(config.modules),
            }
        return out


class Checkpoints:
    """Resumable checkpoints of one training run in ``folder``.

    ``run.json`` says which run they belong to (the spec, the samples' sha256 and the base
    model); a folder of a different run is cleared, with a warning, before training starts.
    ``step-<global step>.pt`` holds :meth:`Trainer.state_dict`; it is written to a temporary
    name and renamed, and only then is the previous one deleted, so a job killed at any moment
    leaves one complete checkpoint behind. They are loaded with ``weights_only=True``.
    """

    def __init__(self, folder: str | os.PathLike, run: dict[str, Any], every: int | None):
        self.folder = Path(folder)
        self.run = run
        self.every = every

    def _files(self) -> list[Path]:
        found = self.folder.glob("step-*.pt") if self.folder.is_dir() else []
        return sorted(p for p in found if p.stem[5:].isdigit())

    def due(self, global_step: int) -> bool:
        return bool(self.every) and global_step % self.every == 0

    def latest(self) -> dict[str, Any] | None:
        """The newest checkpoint's state if it belongs to this run; else clear the folder."""
        run_file = self.folder / "run.json"
        previous = json.loads(run_file.read_text(encoding="utf-8")) if run_file.is_file() else None
        for partial in self.folder.glob(".step-*.partial") if self.folder.is_dir() else []:
            partial.unlink()  # a save the job was killed in
        files = self._files()
        if previous != self.run:
            if files:
                log.warning(
                    "%s holds checkpoints of a different run (spec, data or base model "
                    "changed); deleting them and starting from scratch", self.folder,
                )  # fmt: skip
            for path in files:
                path.unlink()
            if self.every:
                self.folder.mkdir(parents=True, exist_ok=True)
                write_json_atomic(run_file, self.run)
            return None
        if not files:
            return None
        try:
            state = torch.load(files[-1], map_location="cpu", weights_only=True)
        except Exception as err:  # truncated by a crash of the machine, or not ours
            log.warning("%s is unreadable (%s); starting from scratch", files[-1], err)
            files[-1].unlink()
            return None
        log.info("resuming from %s", files[-1])
        return state

    def save(self, global_step: int, state: dict[str, Any]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"step-{global_step:08d}.pt"
        partial = path.with_name(f".{path.name}.partial")
        with open(partial, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, path)
        for older in self._files():
            if older != path:
                older.unlink()
        log.info("checkpoint %s", path)

    def clear(self) -> None:
        """Remove the checkpoints once the model is saved (a forced rerun then trains anew)."""
        shutil.rmtree(self.folder, ignore_errors=True)


def _layer_of(name: str) -> int:
    from .adapters import _layer_index

    return _layer_index(name)


def _run_identity(
    spec: DecoderSpec, samples_parquet, queries_parquet, corpus_parquet, base_model_dir
) -> dict[str, Any]:
    """What decides a run's weights: checkpoints of anything else are not resumed from."""
    from irflow.io import sha256_file
    from irflow.provenance import directory_digest

    from .checkpoint import base_identity

    raw = json.loads(json.dumps(spec.raw, sort_keys=True, default=str))
    raw["training"].pop("checkpoint_every_steps", None)  # where checkpoints fall, not weights
    base = base_identity(base_model_dir)
    if base.get("path"):
        base["sha256"] = directory_digest(base["path"])[0]  # the weights, not just config.json
    return {
        "spec": raw,
        "inputs_sha256": [
            sha256_file(p) for p in (samples_parquet, queries_parquet, corpus_parquet)
        ],
        "base": base,
    }


def _mean_aux(values: list) -> torch.Tensor | None:
    present = [v for v in values if v is not None]
    return torch.stack(present).mean() if present else None


def train_unified(
    spec_dict: dict[str, Any],
    samples_parquet: str | os.PathLike,
    queries_parquet: str | os.PathLike,
    corpus_parquet: str | os.PathLike,
    base_model_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    diagnostics_dir: str | os.PathLike,
    device: str | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    on_step=None,
) -> dict[str, Any]:
    """Train one arm and write its model folder and diagnostics folder (both atomically).

    With ``checkpoint_dir`` and ``training.checkpoint_every_steps``, a resumable checkpoint is
    saved every that many optimizer steps (:class:`Checkpoints`), and a rerun of the same run
    continues from the latest one; on CPU its final model equals an uninterrupted run's bit for
    bit. ``on_step(global_step)``: called after every step (tests).

    ``spec_dict``: see :mod:`.spec` (validated before anything is loaded). ``samples_parquet``:
    a scores file (:data:`irflow.training_data.teacher.SCORES_SCHEMA`); ``queries_parquet``:
    ``query_id, text``; ``corpus_parquet``: ``doc_id, title, text``; ``base_model_dir``: a
    ``from_pretrained`` folder (e.g. from :func:`.base.convert_gguf`) or an
    :class:`irflow.models.ModelRef` (``hf_id`` + ``revision``, e.g. Qwen/Qwen3-0.6B-Base).
    Returns the stats, also written to ``out_dir/train_stats.json``.
    """
    from irflow.models import pick_device

    from .base import load_base
    from .checkpoint import build_model, save_unified
    from .diagnostics import write_diagnostics
    from .samples import read_training_set

    spec = parse_spec(spec_dict)
    data = read_training_set(samples_parquet, queries_parquet, corpus_parquet)
    device = device or pick_device()
    began = time.perf_counter()
    with deterministic():
        base, tokenizer = load_base(base_model_dir, device)
        model = build_model(base, tokenizer, spec)
        if spec.training.gradient_checkpointing:
            # Non-reentrant: the frozen embeddings' outputs need no requires_grad hook.
            kwargs = {"use_reentrant": False}
            if hasattr(base, "activation_checkpointing_enable"):
                base.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:  # older transformers
                base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        trainer = Trainer(model, spec, data, device)
        checkpoints = None
        resume = None
        if checkpoint_dir is not None:
            checkpoints = Checkpoints(
                checkpoint_dir,
                _run_identity(
                    spec, samples_parquet, queries_parquet, corpus_parquet, base_model_dir
                ),
                spec.training.checkpoint_every_steps,
            )
            resume = checkpoints.latest()
        first = 0
        resumed_from = None
        if resume is not None:
            trainer.load_state_dict(resume)
            first = resume["stage"]["index"]
            resumed_from = resume["stage"]["global_step"]
        for index in range(first, len(spec.training.stages)):
            stage_resume = resume["stage"] if resume is not None and index == first else None
            trainer.run_stage(index, checkpoints, stage_resume, on_step)
    model.eval()
    trainable = sum(p.numel() for p in trainer.groups.params)
    total = sum(p.numel() for p in model.parameters())
    stats = {
        "device": str(device),
        "seconds": time.perf_counter() - began,
        "samples": data.source,
        "trainable_parameters": trainable,
        "total_parameters": total,
        "gradient_checkpointing": bool(
            getattr(base, "is_activation_checkpointing", None)
            or getattr(base, "is_gradient_checkpointing", False)
        ),
        "stages": trainer.stage_stats,
        "resumed_from_step": resumed_from,
        "examples": {t: s.drawn for t, s in trainer.samplers.items()},
        "tokens": model.describe(),
    }
    with atomic_output(out_dir, directory=True) as tmp:
        save_unified(model, tmp, base_model_dir, extra={"train_stats": stats})
        write_json_atomic(tmp / "train_stats.json", stats)
    write_diagnostics(
        diagnostics_dir,
        trainer.train_log,
        trainer.grad_cosine,
        trainer.expert_usage,
        trainer.summary(),
    )
    if checkpoints is not None:
        checkpoints.clear()
    log.info("trained %s in %.1f s", out_dir, stats["seconds"])
    return stats
