"""Staged training of the unified decoder (embedding, then joint embedding + reranking).

**Why a custom loop and not ``transformers.Trainer``**: every joint step needs the two tasks'
gradients *separately* (per-layer gradient cosines, PCGrad) before they are combined into the
one gradient the optimizer sees, batches of the two tasks alternate within a step at a
configurable ratio, and the optimizer and schedule are re-created per stage. In ``Trainer``
that means overriding ``training_step``, the optimizer, the scheduler and the data loading,
i.e. most of it; the loop below is short and does exactly that.

**One optimizer step** of a stage with tasks ``T`` (one or both of embed, rerank): for each task
``t``, ``n_t = ratio[t] x gradient_accumulation_steps`` batches of ``t`` go forward and
backward (each loss divided by ``n_t``, so ``g_t`` is the mean gradient); ``g_t`` is copied
out and the gradients zeroed.
The step's gradient is ``g_embed + λ·g_rerank`` (``λ``: ``lambda_rerank``), i.e. the gradient
of ``L = L_emb + λ·L_rerank``, or with ``pcgrad: true`` the PCGrad combination of
``g_embed`` and ``λ·g_rerank``. Then gradient clipping, the optimizer and the schedule step.
Every ``log_every`` steps of a joint stage the per-layer and per-projection cosines of
``g_embed`` and ``g_rerank`` are recorded (:mod:`.diagnostics`).

**Gradient accumulation** (``training.gradient_accumulation_steps``, ``k``): an optimizer step
averages the gradients of ``k`` times as many batches; steps, schedules, ``log_every`` and
checkpoints count optimizer steps, never batches, so a checkpoint always falls between two
optimizer steps. Samples per step: ``batch_size x ratio[t] x k``, whatever the number of
processes (``batch_size`` is the global batch). For the reranking loss (a mean over pairs)
``k`` batches of ``b`` samples give the gradient of one batch of ``k x b`` when every sample
has the same number of negatives; for InfoNCE they do not: each query's negatives are those of
its own batch, so accumulation averages ``k`` losses over ``b x (1 + num_negatives)`` documents
each, while a batch of ``k x b`` contrasts every query with ``k`` times as many. A larger
contrastive batch needs a larger ``embedding.batch_size``, which gradient caching makes
affordable.

**Gradient caching** (``embedding.mini_batch_size``, ``reranking.mini_batch_size``): the whole
batch's loss and gradient with the activations of only that many rows in memory at once
(:meth:`Trainer.cached_backward`, GradCache): every mini-batch is encoded without gradients,
the loss of the whole batch is backpropagated to the (detached) embeddings or scores, then
every mini-batch is encoded again with gradients from the random state of its first pass
(identical dropout masks) and the cached output gradients are backpropagated through it. The
gradient equals that of the whole batch encoded in mini-batches at once (to float rounding),
at the cost of one more forward pass. It happens inside one task's gradient, so the
per-task gradients, cosines and PCGrad are unchanged; it composes with gradient
checkpointing, accumulation, checkpoints and every optimizer. MoE-LoRA's load-balancing term
is taken per mini-batch (as with accumulation), so with ``aux_loss_weight > 0`` the gradient
differs from the uncached one by that term's batch dependence.

**Several processes** (torchrun, ``WORLD_SIZE`` = ``W`` > 1; :mod:`.distributed`): every
process draws the same global batches and encodes its contiguous share of each batch's
queries, documents and pairs (with gradient caching, in mini-batches of its share); the other
processes' outputs are gathered, so the loss is the global batch's (InfoNCE negatives from
every process), and the flat gradient of each task is summed over the processes once per
optimizer step, before cosines, PCGrad and clipping: one model, the one-process weights to
float rounding (the test's tolerance: ``tests/test_decoder_distributed.py``). The documented
differences: with dropout > 0 each process draws its own masks (ranks > 0 reseed from
``seed``), and MoE-LoRA's load-balancing term is taken per process's share and averaged (as
per mini-batch with caching), so ``aux_loss_weight > 0`` changes the gradient by that term's
batch dependence. The usage counters are summed over processes at each stage's end. Only rank
0 writes the model, the diagnostics and the checkpoints (one random state and one set of
usage counters per process inside).

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


class RandState:
    """The random state that dropout draws from (CPU and, on a GPU, the device's), captured at
    construction and put back by :meth:`restore` (as sentence-transformers' ``RandContext``):
    the gradient-caching pass re-runs a mini-batch with the very dropout masks of its first
    pass."""

    def __init__(self, device: str | torch.device):
        device = torch.device(device)
        self.cpu = torch.get_rng_state()
        self.cuda = None
        if device.type == "cuda":
            self.device = device
            self.cuda = torch.cuda.get_rng_state(device)

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda, self.device)


@contextlib.contextmanager
def usage_paused(peft_model):
    """MoE-LoRA usage counters as they were before the block: the gradient-caching pass without
    gradients routes the same tokens as the pass with them, and only that one counts."""
    from .adapters import moe_layers

    saved = [
        (layer, {task: {k: v.clone() for k, v in entry.items()}
                 for task, entry in layer.usage.get("default", {}).items()})
        for _, layer in moe_layers(peft_model)
    ]  # fmt: skip
    try:
        yield
    finally:
        for layer, usage in saved:
            layer.usage["default"] = usage


class Trainer:
    def __init__(self, model, spec: DecoderSpec, data, device: str):
        from . import distributed
        from .samples import TaskSampler

        self.model = model
        self.spec = spec
        self.data = data
        self.device = device
        self.world = distributed.world_size()
        self.rank = distributed.rank()
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
    def embed_inputs(self, batch):
        """Token ids of the batch's queries and documents (positives, then every sample's
        negatives), each query's target and the mask of other known positives."""
        data, prompter = self.data, self.model.prompter
        qids = [data.query_ids[r] for r in batch.rows]
        doc_ids = [data.pos_ids[r] for r in batch.rows]
        for negatives in batch.negatives:
            doc_ids.extend(negatives)
        where: dict[str, list[int]] = defaultdict(list)
        for j, doc in enumerate(doc_ids):
            where[doc].append(j)
        exclude = torch.zeros((len(qids), len(doc_ids)), dtype=torch.bool)
        for i, qid in enumerate(qids):
            masked = [j for pos in data.positives[qid] for j in where.get(pos, ()) if j != i]
            exclude[i, masked] = True
        targets = torch.arange(len(qids))
        return (
            prompter.query_ids([data.queries[q] for q in qids]),
            prompter.document_ids([data.docs[x] for x in doc_ids]),
            targets.to(self.device),
            exclude.to(self.device),
        )

    def embed_objective(self, q, d, targets, exclude) -> torch.Tensor:
        from .losses import matryoshka_info_nce

        e = self.spec.embedding
        return matryoshka_info_nce(q, d, targets, e.temperature, e.matryoshka_dims, exclude)

    def embed_loss(self, batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        query_ids, document_ids, targets, exclude = self.embed_inputs(batch)
        q = self.model.embed_ids(query_ids)
        aux = [self.model.aux_loss()]
        d = self.model.embed_ids(document_ids)
        aux.append(self.model.aux_loss())
        return self.embed_objective(q, d, targets, exclude), _mean_aux(aux)

    def rerank_inputs(self, batch):
        """Token ids of every (query, document) pair of the batch, its label and its sample."""
        data = self.data
        queries, docs, labels, groups = [], [], [], []
        for k, (row, negatives) in enumerate(zip(batch.rows, batch.negatives, strict=True)):
            query = data.queries[data.query_ids[row]]
            for doc, label in [(data.pos_ids[row], 1.0)] + [(n, 0.0) for n in negatives]:
                queries.append(query)
                docs.append(data.docs[doc])
                labels.append(label)
                groups.append(k)
        return (
            self.model.prompter.pair_ids(queries, docs),
            torch.tensor(labels, device=self.device),
            torch.tensor(groups, device=self.device),
        )

    def rerank_objective(self, scores, labels, groups) -> torch.Tensor:
        from .losses import bce, ranknet

        loss = bce(scores, labels)
        weight = self.spec.reranking.ranknet_weight
        if weight > 0:
            loss = loss + weight * ranknet(scores, labels, groups)
        return loss

    def rerank_loss(self, batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        pair_ids, labels, groups = self.rerank_inputs(batch)
        scores = self.model.score_ids(pair_ids)
        return self.rerank_objective(scores, labels, groups), self.model.aux_loss()

    def cached_backward(
        self, parts: list[list[list[int]]], encode, objective, divisor: int, mini: int
    ) -> tuple[float, float | None]:
        """Gradient caching (GradCache, Gao et al. 2021): backpropagate the loss / ``divisor`` of
        a whole batch holding the activations of only ``mini`` rows at a time.

        ``parts``: the batch's inputs (queries and documents, or pairs), each a list of token-id
        rows; ``encode``: rows -> outputs (embeddings or scores); ``objective``: the loss of
        the whole batch from every part's outputs. (1) every mini-batch is encoded without
        gradients, its random state kept; (2) the loss of the concatenated, detached outputs is
        backpropagated to them (the cache: d loss / d output, one row each); (3) every
        mini-batch is encoded again, from its kept random state (the same dropout masks), and
        ``torch.autograd.backward(outputs, cached gradient)`` adds its share of the parameter
        gradients. The result is the gradient of the whole batch's loss; the random state after
        is that after step (1). The MoE load-balancing term is taken per mini-batch in step
        (3) and averaged (mini-batches of a part equally, then the parts, as the parts are
        averaged without caching); the usage counters count step (3) only.

        With several processes (:mod:`.distributed`) each encodes only its share of every part,
        in mini-batches; step (2) gathers every process's outputs, so the loss is the global
        batch's, and step (3) backpropagates this process's rows of the cache; the
        load-balancing term of each process is weighted ``1 / world size``, so the summed
        gradients hold the mean of the processes' terms.

        Returns (loss, aux or None), not divided (the aux of this process's share)."""
        from . import distributed

        counts = [distributed.sizes(len(rows), self.world) for rows in parts]
        if self.world > 1:
            parts = [rows[distributed.shard(len(rows), self.world, self.rank)] for rows in parts]
        chunks = [(k, rows[i : i + mini]) for k, rows in enumerate(parts)
                  for i in range(0, len(rows), mini)]  # fmt: skip
        states, outputs = [], [[] for _ in parts]
        with torch.no_grad(), usage_paused(self.model.peft):
            for k, rows in chunks:
                states.append(RandState(self.device))
                outputs[k].append(encode(rows))
        after = RandState(self.device)
        local = [torch.cat(out).detach() for out in outputs]
        if self.world > 1:
            whole = [distributed.gather_rows(o, c) for o, c in zip(local, counts, strict=True)]
        else:
            whole = local
        cached = [w.detach().requires_grad_() for w in whole]
        loss = objective(*cached)
        (loss / divisor).backward()
        mine = [c.grad[distributed.shard(c.shape[0], self.world, self.rank)] for c in cached]
        grads = [iter(g.split(mini)) for g in mine]
        per_part = [sum(1 for k, _ in chunks if k == part) for part in range(len(parts))]
        weight = self.spec.adapter.aux_loss_weight
        aux_total, has_aux = 0.0, False
        for (k, rows), state in zip(chunks, states, strict=True):
            state.restore()
            out = encode(rows)
            tensors, grad_tensors = [out], [next(grads[k])]
            aux = self.model.aux_loss()
            if aux is not None:
                share = 1.0 / (len(parts) * per_part[k])
                aux_total += float(aux.detach()) * share
                has_aux = True
                if weight > 0:
                    tensors.append(aux * (weight * share / (divisor * self.world)))
                    grad_tensors.append(None)
            torch.autograd.backward(tensors, grad_tensors)
        after.restore()
        return float(loss.detach()), aux_total if has_aux else None

    # ---------------------------------------------------------------- steps
    def sharded_backward(
        self, parts: list[list[list[int]]], encode, objective, divisor: int
    ) -> tuple[float, float | None]:
        """With several processes and no gradient caching: this process encodes its share of
        every part with gradients, the other processes' outputs are gathered without, and the
        global batch's loss / ``divisor`` is backpropagated into this process's rows (its
        load-balancing term weighted ``1 / world size``, see :meth:`cached_backward`).
        Returns (loss, aux of this process's share or None), not divided."""
        from . import distributed

        whole, auxes = [], []
        for rows in parts:
            counts = distributed.sizes(len(rows), self.world)
            out = encode(rows[distributed.shard(len(rows), self.world, self.rank)])
            auxes.append(self.model.aux_loss())
            whole.append(distributed.gather_rows(out, counts))
        loss = objective(*whole)
        aux = _mean_aux(auxes)
        weight = self.spec.adapter.aux_loss_weight
        total = loss + weight * aux / self.world if aux is not None and weight > 0 else loss
        (total / divisor).backward()
        return float(loss.detach()), None if aux is None else float(aux.detach())

    def micro_batch(self, task: str, divisor: int) -> tuple[float, float | None]:
        """Forward and backward the loss / ``divisor`` of one batch of ``task`` (gradients
        accumulate in ``.grad``); (loss, aux or None), not divided. With several processes,
        this process's share of the batch (:mod:`.distributed`)."""
        batch = self.samplers[task].next(self.data)
        mini = (self.spec.embedding if task == "embed" else self.spec.reranking).mini_batch_size
        if mini is not None or self.world > 1:
            if task == "embed":
                query_ids, document_ids, targets, exclude = self.embed_inputs(batch)
                parts = [query_ids, document_ids]
                encode = self.model.embed_ids

                def objective(q, d):
                    return self.embed_objective(q, d, targets, exclude)
            else:
                pair_ids, labels, groups = self.rerank_inputs(batch)
                parts, encode = [pair_ids], self.model.score_ids

                def objective(scores):
                    return self.rerank_objective(scores, labels, groups)

            if mini is None:
                return self.sharded_backward(parts, encode, objective, divisor)
            return self.cached_backward(parts, encode, objective, divisor, mini)
        loss, aux = (self.embed_loss if task == "embed" else self.rerank_loss)(batch)
        weight = self.spec.adapter.aux_loss_weight
        objective = loss + weight * aux if aux is not None and weight > 0 else loss
        (objective / divisor).backward()
        return float(loss.detach()), None if aux is None else float(aux.detach())

    def batches_per_step(self, stage: StageSpec, task: str) -> int:
        """Batches of ``task`` accumulated into one optimizer step of ``stage``."""
        return stage.ratio[task] * self.spec.training.gradient_accumulation_steps

    def task_gradient(self, task: str, repeats: int) -> tuple[torch.Tensor, float, float]:
        """Mean gradient of ``repeats`` batches of ``task``; (flat grad, loss, aux). With
        several processes the flat gradient is summed over them (each holds its rows' part of
        the global batch's gradient) and the aux averaged."""
        from . import distributed

        total_loss = total_aux = 0.0
        for _ in range(repeats):
            loss, aux = self.micro_batch(task, repeats)
            total_loss += loss / repeats
            total_aux += aux / repeats if aux is not None else 0.0
        grad = self.groups.flat_grad()
        self.groups.zero()
        if self.world > 1:
            distributed.all_reduce_sum(grad)
            total_aux = distributed.mean_scalar(total_aux, grad.device)
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
        batching = self.stage_batching(stage)
        log.info(
            "stage %s: %d optimizer steps; per step %s", stage.name, stage.steps,
            "; ".join(
                f"{t} {b['batches_per_step']} x {b['batch_size']} samples "
                f"(mini-batch {b['mini_batch_size'] or 'off'})"
                for t, b in batching.items()
            ),
        )  # fmt: skip
        began = time.perf_counter() - elapsed
        for step in range(start, stage.steps + 1):
            step_began, step_cpu = time.perf_counter(), time.process_time()
            grads, row = {}, {"stage": stage.name, "step": step, "lr": schedule.get_last_lr()[0]}
            aux_total = 0.0
            for task in stage.tasks:
                grads[task], loss, aux = self.task_gradient(
                    task, self.batches_per_step(stage, task)
                )
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
        if self.world > 1:
            self.reduce_usage(stage)
        for usage in expert_usage(self.model.peft, reset=True):
            self.expert_usage.append({"stage": stage.name, **usage})
        stats = {
            "name": stage.name,
            "tasks": list(stage.tasks),
            "steps": stage.steps,
            "seconds": seconds,
            "pcgrad_projections": projections_total if stage.pcgrad else None,
            "gradient_accumulation_steps": spec.gradient_accumulation_steps,
            "batching": batching,
            "first_loss": {t: v[0] for t, v in losses.items()},
            "last_loss": {t: v[-1] for t, v in losses.items()},
            "mean_loss": {t: sum(v) / len(v) for t, v in losses.items()},
        }
        self.stage_stats.append(stats)
        return stats

    def reduce_usage(self, stage: StageSpec) -> None:
        """Sum the MoE-LoRA usage counters of every process into each (so that the
        diagnostics count the global batches' tokens)."""
        from . import distributed
        from .adapters import moe_layers

        for _, layer in moe_layers(self.model.peft):
            experts = layer.moe_config["default"].num_experts
            usage = layer.usage.setdefault("default", {})
            for task in sorted(stage.tasks):
                entry = usage.setdefault(
                    task,
                    {
                        "tokens": torch.zeros((), dtype=torch.float64, device=self.device),
                        "counts": torch.zeros(experts, dtype=torch.float64, device=self.device),
                        "prob_sum": torch.zeros(experts, dtype=torch.float64, device=self.device),
                    },
                )
                for key in ("tokens", "counts", "prob_sum"):
                    distributed.all_reduce_sum(entry[key])

    def stage_batching(self, stage: StageSpec) -> dict[str, dict[str, Any]]:
        """Per task of ``stage``: the samples of one batch (``batch_size``, capped at the
        training set's size; the global batch, whatever the number of processes), batches per
        optimizer step (``ratio`` x ``gradient_accumulation_steps``), samples per optimizer
        step (their product) and the gradient-caching mini-batch (per process). The InfoNCE
        negatives of a query are those of its own (global) batch only."""
        out = {}
        for task in stage.tasks:
            section = self.spec.embedding if task == "embed" else self.spec.reranking
            size = self.samplers[task].batch_size
            per_step = self.batches_per_step(stage, task)
            out[task] = {
                "batch_size": size,
                "batches_per_step": per_step,
                "samples_per_step": size * per_step,
                "mini_batch_size": section.mini_batch_size,
            }
        return out

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
        if self.world > 1:
            # Every process's own random state (its dropout masks) and usage counters (its
            # share's tokens, summed at the stage's end): a collective call, on every rank.
            from . import distributed

            state["ranks"] = distributed.all_gather_object(
                {
                    "torch_rng": state["stage"]["torch_rng"],
                    "cuda_rng": [t.cpu() for t in state["stage"]["cuda_rng"]],
                    "usage": state["usage"],
                }
            )
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a checkpoint (with several processes: :func:`_for_rank` of it)."""
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
    With several processes only rank 0 (``writer``) writes, deletes and clears; the others
    only read (after rank 0 has looked, :func:`train_unified`).
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        run: dict[str, Any],
        every: int | None,
        writer: bool = True,
    ):
        self.folder = Path(folder)
        self.run = run
        self.every = every
        self.writer = writer

    def _files(self) -> list[Path]:
        found = self.folder.glob("step-*.pt") if self.folder.is_dir() else []
        return sorted(p for p in found if p.stem[5:].isdigit())

    def due(self, global_step: int) -> bool:
        return bool(self.every) and global_step % self.every == 0

    def latest(self) -> dict[str, Any] | None:
        """The newest checkpoint's state if it belongs to this run; else clear the folder."""
        run_file = self.folder / "run.json"
        previous = json.loads(run_file.read_text(encoding="utf-8")) if run_file.is_file() else None
        files = self._files()
        if not self.writer:  # a reader: what the writer left
            if previous != self.run or not files:
                return None
            return torch.load(files[-1], map_location="cpu", weights_only=True)
        for partial in self.folder.glob(".step-*.partial") if self.folder.is_dir() else []:
            partial.unlink()  # a save the job was killed in
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
        if not self.writer:
            return
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
        if self.writer:
            shutil.rmtree(self.folder, ignore_errors=True)


def _layer_of(name: str) -> int:
    from .adapters import _layer_index

    return _layer_index(name)


def _run_identity(
    spec: DecoderSpec, samples_parquet, queries_parquet, corpus_parquet, base_model_dir
) -> dict[str, Any]:
    """What decides a run's weights: checkpoints of anything else are not resumed from."""
    from irflow.plan import deciding
    from irflow.run_identity import run_identity

    raw = json.loads(json.dumps(spec.raw, sort_keys=True, default=str))
    return run_identity(
        deciding(raw, "decoders"),
        (samples_parquet, queries_parquet, corpus_parquet),
        base_model_dir,
    )


def _for_rank(state: dict[str, Any], rank: int) -> dict[str, Any]:
    """A checkpoint of a several-process run as process ``rank`` resumes it: its own random
    state and usage counters (``state["ranks"]``) in place of rank 0's."""
    if "ranks" not in state:
        return state
    mine = state["ranks"][rank]
    stage = {**state["stage"], "torch_rng": mine["torch_rng"], "cuda_rng": mine["cuda_rng"]}
    return {**state, "stage": stage, "usage": mine["usage"]}


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

    Under torchrun (``WORLD_SIZE > 1``, e.g. from :mod:`irflow.launch`) every process trains
    its share of each global batch (:mod:`.distributed`) and only rank 0 writes the outputs
    and checkpoints; every process returns the stats.

    ``spec_dict``: see :mod:`.spec` (validated before anything is loaded). ``samples_parquet``:
    a scores file (:data:`irflow.training_data.teacher.SCORES_SCHEMA`); ``queries_parquet``:
    ``query_id, text``; ``corpus_parquet``: ``doc_id, title, text``; ``base_model_dir``: a
    ``from_pretrained`` folder (e.g. from :func:`.base.convert_gguf`) or an
    :class:`irflow.models.ModelRef` (``hf_id`` + ``revision``, e.g. Qwen/Qwen3-0.6B-Base).
    Returns the stats, also written to ``out_dir/train_stats.json``.
    """
    from irflow.models import pick_device

    from . import distributed

    spec = parse_spec(spec_dict)
    device = distributed.process_device(device or pick_device())
    with distributed.process_group(device):
        return _train(
            spec, samples_parquet, queries_parquet, corpus_parquet, base_model_dir,
            out_dir, diagnostics_dir, device, checkpoint_dir, on_step,
        )  # fmt: skip


def train_unified_from_config(
    spec_dict: dict[str, Any],
    samples_parquet: str,
    queries_parquet: str,
    corpus_parquet: str,
    base: dict[str, Any],
    out_dir: str,
    diagnostics_dir: str,
    checkpoint_dir: str | None = None,
) -> dict[str, Any]:
    """:func:`train_unified` with JSON arguments (``base``: the base model's config entry with
    its ``name``), the call that :mod:`irflow.launch` makes in every process."""
    from irflow.models import ModelRef

    entry = dict(base)
    ref = ModelRef.from_config(entry.pop("name"), entry)
    return train_unified(
        spec_dict, samples_parquet, queries_parquet, corpus_parquet, ref, out_dir,
        diagnostics_dir, checkpoint_dir=checkpoint_dir,
    )  # fmt: skip


def _train(
    spec: DecoderSpec,
    samples_parquet,
    queries_parquet,
    corpus_parquet,
    base_model_dir,
    out_dir,
    diagnostics_dir,
    device: str,
    checkpoint_dir,
    on_step,
) -> dict[str, Any]:
    from . import distributed
    from .base import load_base
    from .checkpoint import build_model, save_unified
    from .diagnostics import write_diagnostics
    from .samples import read_training_set

    world, rank = distributed.world_size(), distributed.rank()
    data = read_training_set(samples_parquet, queries_parquet, corpus_parquet)
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
        if world > 1:
            _check_shares(spec, trainer, world)
            distributed.broadcast_params(trainer.groups.params)
            if rank > 0:  # dropout masks of their own (rank 0 keeps the one-process stream)
                torch.manual_seed(spec.training.seed + 1_000_003 * rank)
        checkpoints = None
        resume = None
        if checkpoint_dir is not None:
            identity = _run_identity(
                spec, samples_parquet, queries_parquet, corpus_parquet, base_model_dir
            )
            if world > 1:  # a checkpoint holds one random state per process
                identity = {**identity, "world_size": world}
            checkpoints = Checkpoints(
                checkpoint_dir, identity, spec.training.checkpoint_every_steps, rank == 0
            )
            if rank == 0:
                resume = checkpoints.latest()
            if world > 1:
                distributed.barrier()  # rank 0 has cleaned up; the others read what is left
                if rank > 0:
                    resume = checkpoints.latest()
                steps = distributed.all_gather_object(
                    None if resume is None else resume["stage"]["global_step"]
                )
                if len(set(steps)) != 1:
                    raise RuntimeError(f"the processes found different checkpoints: {steps}")
        first = 0
        resumed_from = None
        if resume is not None:
            resume = _for_rank(resume, rank)
            trainer.load_state_dict(resume)
            first = resume["stage"]["index"]
            resumed_from = resume["stage"]["global_step"]
        for index in range(first, len(spec.training.stages)):
            stage_resume = resume["stage"] if resume is not None and index == first else None
            trainer.run_stage(index, checkpoints, stage_resume, on_step)
    if world > 1:
        _check_replicas(trainer.groups.params)
    model.eval()
    trainable = sum(p.numel() for p in trainer.groups.params)
    total = sum(p.numel() for p in model.parameters())
    stats = {
        "device": str(device),
        "world_size": world,
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
    if rank == 0:
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
    if world > 1:
        distributed.barrier()  # no process leaves before the outputs are in place
    return stats


def _check_shares(spec: DecoderSpec, trainer: Trainer, world: int) -> None:
    """Every process needs at least one sample of every batch it trains."""
    for stage in spec.training.stages:
        for task in stage.tasks:
            size = trainer.samplers[task].batch_size
            if size < world:
                section = "embedding" if task == "embed" else "reranking"
                raise ValueError(
                    f"{section}.batch_size {size} (the global batch, capped at the "
                    f"{len(trainer.data)} training samples) is smaller than the {world} "
                    f"training processes: every process needs a share of each batch"
                )


def _check_replicas(params: list[torch.nn.Parameter]) -> None:
    """The processes' trainable weights are bit-identical (each applied the same summed
    gradient with the same optimizer): compared by a checksum of their bytes."""
    import zlib

    from . import distributed

    checksum = 0
    for param in params:
        data = param.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes()
        checksum = zlib.crc32(data, checksum)
    found = distributed.all_gather_object(checksum)
    if len(set(found)) != 1:
        raise RuntimeError(f"the training processes' weights diverged (checksums {found})")
