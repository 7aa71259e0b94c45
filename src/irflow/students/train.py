"""Training entry points: a cross-encoder or bi-encoder student from teacher-scored samples.

:func:`train_student` (shorthands :func:`train_cross_encoder`, :func:`train_bi_encoder`) runs
sentence-transformers' ``CrossEncoderTrainer`` / ``SentenceTransformerTrainer`` (the Hugging
Face Trainer underneath) with the objective, optimizer and schedule of a
:class:`~irflow.students.spec.StudentTrainingSpec` on the samples of a scores Parquet
(:mod:`irflow.students.data`). What is added around the library:

* **Initialisation.** The model is loaded after seeding (``transformers.set_seed(seed)``). A
  cross-encoder student is ``CrossEncoder(init_dir, num_labels=1)``: from a sentence-transformers
  bi-encoder folder (or a bare encoder) that is the encoder with a fresh, seeded one-logit head.
  A bi-encoder student is ``SentenceTransformer(init_dir)``. :func:`save_untrained` writes
  exactly the model training starts from (the "untrained" baseline).
* **Teacher score scale.** For kd (a softmax over the teacher's scores) a missing
  ``objective.temperature`` becomes the default for the scores file's ``score_kind`` (0.05 for
  a bi-encoder teacher's cosines, 1 for logits; :func:`resolve_temperature`). The mean entropy
  of the teacher distribution against its maximum (log of the list length) is logged at the
  start and kept in the stats (``teacher_entropy``); above :data:`NEAR_UNIFORM` of the maximum
  a WARNING says the distribution is near uniform and names ``objective.temperature``.
* **Determinism.** Batches are shuffled by the library's samplers, reseeded with
  ``seed + epoch`` at every epoch (accelerate's seedable sampler; the no-duplicates sampler
  reseeds itself), or with ``group_by_length`` by
  :class:`~irflow.students.data.EpochSeededBatchSampler`, seeded the same way; dropout and
  in-batch negative sampling use the seeded global RNGs. Two runs with the same spec and
  inputs give byte-identical weights on CPU.
* **Checkpoints and resume.** With ``checkpoint_every_steps`` the Trainer saves model,
  optimizer, scheduler, RNG states and step to ``checkpoint_dir/checkpoint-<step>``; a
  checkpoint counts only once a completion marker is written after it (the Trainer writes them
  in place, so a job killed while saving leaves an incomplete one, which is discarded). If
  ``checkpoint_dir`` holds a complete checkpoint of the *same* run (``run.json``: the kind, the
  spec, and hashes of the training samples and the initial weights), training resumes from the
  latest one (``resume_from_checkpoint``: data position, RNG and optimizer states restored) and
  the final weights equal an uninterrupted run's bit for bit on CPU; checkpoints of a different
  run are deleted first, and the folder is removed once the final model is saved.
* **Outputs.** The final model goes to ``out_dir`` atomically, as a sentence-transformers folder
  (``CrossEncoder(out_dir)`` / ``SentenceTransformer(out_dir)``; LoRA adapters are merged into
  the weights first) without a model card (it holds dates, and the stats say what trained it).
  The training curves go to ``curves_path`` as JSONL, one line per logging step: ``step``,
  ``epoch``, ``loss`` (mean over the logging interval), ``lr``, ``grad_norm`` (before
  clipping), ``samples``, ``seconds``, ``samples_per_second``, ``pairs_per_second``. They are
  kept in ``checkpoint_dir/curves.jsonl`` while training, so a resumed run's curve is complete.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from irflow.io import atomic_output, write_json_atomic, write_text_atomic
from irflow.logs import Progress
from irflow.plan import deciding
from irflow.run_identity import run_identity
from irflow.students.data import (
    EpochSeededBatchSampler,
    load_samples,
    rows_per_sample,
    to_dataset,
)
from irflow.students.losses import Objective, get_objective
from irflow.students.optim import check_runnable, describe_optimizer, resolve_optimizer
from irflow.students.spec import (
    SCHEDULES,
    LoraSpec,
    StudentTrainingSpec,
    default_kd_temperature,
)

log = logging.getLogger(__name__)

RUN_FILE = "run.json"
LIVE_CURVES = "curves.jsonl"
COMPLETE_MARKER = "irflow-complete"
CHECKPOINTS_KEPT = 2
_HEAD_NAMES = ("classifier", "score", "head")
# Above this share of its maximum (log of the list length) the teacher's mean entropy is near
# uniform: the distilled distribution says little about which document is better.
NEAR_UNIFORM = 0.95


# ---------------------------------------------------------------------------------------------
# Teacher score scale
# ---------------------------------------------------------------------------------------------
def resolve_temperature(
    spec: StudentTrainingSpec, objective: Objective, score_kind: str | None
) -> StudentTrainingSpec:
    """``spec`` with the temperature of a teacher-softmax objective (kd) made explicit: the
    given ``objective.temperature``, else the default for the teacher's ``score_kind``
    (:func:`~irflow.students.spec.default_kd_temperature`: 0.05 for cosines, 1 for logits)."""
    if not (objective.uses_teacher and "temperature" in objective.params):
        return spec
    if spec.objective.temperature is not None:
        return spec
    temperature = default_kd_temperature(score_kind)
    log.info(
        "objective %s: temperature %g, the default for teacher scores of kind %r",
        objective.name, temperature, score_kind,
    )  # fmt: skip
    return dataclasses.replace(
        spec, objective=dataclasses.replace(spec.objective, temperature=temperature)
    )


def teacher_entropy(pos_scores, neg_scores, temperature: float) -> dict[str, float]:
    """Mean entropy (nats) of the teacher's softmax(scores / T) over each sample's list, its
    maximum ``log(list length)`` (a uniform distribution) and their ratio."""
    import numpy as np

    scores = np.concatenate(
        [np.asarray(pos_scores, dtype=np.float64)[:, None], np.asarray(neg_scores, np.float64)],
        axis=1,
    )
    z = scores / temperature
    z -= z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    mean = float(-(np.exp(log_p) * log_p).sum(axis=1).mean())
    maximum = math.log(scores.shape[1])
    return {
        "temperature": temperature,
        "mean": round(mean, 6),
        "max": round(maximum, 6),
        "ratio": round(mean / maximum, 6) if maximum > 0 else 1.0,
    }


def log_teacher_entropy(entropy: dict[str, float], objective: str) -> None:
    """Log the teacher distribution's entropy; a WARNING when it is near uniform."""
    log.info(
        "teacher distribution at temperature %g: mean entropy %.4f nats of at most %.4f "
        "(log of the list length), ratio %.3f",
        entropy["temperature"], entropy["mean"], entropy["max"], entropy["ratio"],
    )  # fmt: skip
    if entropy["ratio"] > NEAR_UNIFORM:
        log.warning(
            "objective %s: the teacher's softmax at temperature %g is near uniform (mean "
            "entropy %.1f%% of its maximum), so distillation teaches almost nothing; lower "
            "objective.temperature (a bi-encoder teacher's cosines need about 0.05)",
            objective, entropy["temperature"], 100 * entropy["ratio"],
        )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------
def load_student(
    kind: str,
    init_dir: str | os.PathLike,
    spec: StudentTrainingSpec,
    device: str,
    *,
    revision: str | None = None,
    trust_remote_code: bool = False,
):
    """The model a student's training starts from (seeded; see the module docstring).

    ``init_dir`` is a folder or a hub id; ``revision`` (a hub id's pinned commit, branch or tag)
    and ``trust_remote_code`` are the init model entry's and go to the library's loader."""
    from transformers import set_seed

    from irflow.io import InputError

    set_seed(spec.seed)
    try:
        if kind == "cross-encoder":
            from sentence_transformers import CrossEncoder

            model = CrossEncoder(
                str(init_dir),
                num_labels=1,
                max_length=spec.max_length,
                device=device,
                revision=revision,
                trust_remote_code=trust_remote_code,
            )
            if model.num_labels != 1:
                raise InputError(
                    f"{init_dir}: a cross-encoder student needs one output, the model has "
                    f"{model.num_labels}"
                )
            return model
        if kind == "bi-encoder":
            from sentence_transformers import SentenceTransformer

            model = SentenceTransformer(
                str(init_dir),
                device=device,
                revision=revision,
                trust_remote_code=trust_remote_code,
            )
            if spec.max_length:
                model.max_seq_length = spec.max_length
            return model
    except InputError:
        raise
    except Exception as err:  # many library error types; the user needs the folder
        raise InputError(f"student initialisation {init_dir} could not be loaded: {err}") from err
    raise ValueError(f"unknown student kind {kind!r}; allowed: ['cross-encoder', 'bi-encoder']")


def save_model(model, out_dir: str | os.PathLike) -> None:
    """Save a CrossEncoder/SentenceTransformer atomically, without a (dated) model card."""
    with atomic_output(out_dir, directory=True) as tmp:
        model.save(str(tmp), create_model_card=False)


def save_untrained(
    kind: str,
    spec: StudentTrainingSpec,
    init_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    device: str | None = None,
    *,
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """Write the model that training with ``spec`` starts from (same seed, same fresh head);
    ``revision`` and ``trust_remote_code`` as for :func:`load_student`."""
    device = _device(device)
    model = load_student(
        kind, init_dir, spec, device, revision=revision, trust_remote_code=trust_remote_code
    )
    save_model(model, out_dir)
    return {
        "kind": kind,
        "init": str(init_dir),
        **({"init_revision": revision} if revision else {}),
        "seed": spec.seed,
        **_param_counts(model),
    }


def _param_counts(model) -> dict[str, int]:
    params = list(model.parameters())
    return {
        "params_total": sum(p.numel() for p in params),
        "params_trainable": sum(p.numel() for p in params if p.requires_grad),
    }


def apply_lora(model, kind: str, lora: LoraSpec) -> None:
    """Add a LoRA adapter (peft) to the model; a cross-encoder's head stays fully trainable."""
    from peft import LoraConfig

    hf_model = model.transformers_model
    heads = None
    if kind == "cross-encoder":
        heads = [n for n, _ in hf_model.named_children() if n in _HEAD_NAMES] or None
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules) if lora.target_modules else None,
        modules_to_save=heads,
    )
    try:
        model.add_adapter(config)
    except ValueError as err:
        raise ValueError(f"lora: {err}") from err


def merge_lora(model) -> None:
    """Fold LoRA weights into the base layers and drop the adapter, so the saved model is a
    plain checkpoint. Written here because transformers' adapter integration (which
    sentence-transformers uses) has no merge; peft's per-layer ``merge`` does the arithmetic.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils import ModulesToSaveWrapper

    hf_model = model.transformers_model
    for name, module in list(hf_model.named_modules()):
        if isinstance(module, BaseTunerLayer | ModulesToSaveWrapper):
            parent_name, _, child = name.rpartition(".")
            parent = hf_model.get_submodule(parent_name) if parent_name else hf_model
            if isinstance(module, ModulesToSaveWrapper):
                replacement = module.modules_to_save[module.active_adapter]
            else:
                module.merge()
                replacement = module.get_base_layer()
            setattr(parent, child, replacement)
    hf_model._hf_peft_config_loaded = False
    if hasattr(hf_model, "peft_config"):
        del hf_model.peft_config


# ---------------------------------------------------------------------------------------------
# Checkpoints, curves, fingerprints
# ---------------------------------------------------------------------------------------------
def _rank() -> int:
    """This process's rank under torchrun/accelerate (0 when not distributed)."""
    return int(os.environ.get("RANK", "0"))


def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def _device(device: str | None) -> str:
    from irflow.models import pick_device

    return device or pick_device()


def _checkpoints(folder: Path) -> list[tuple[int, Path]]:
    out = []
    for entry in folder.iterdir() if folder.is_dir() else ():
        name = entry.name
        if entry.is_dir() and name.startswith("checkpoint-") and name[11:].isdigit():
            out.append((int(name[11:]), entry))
    return sorted(out)


def _prepare_checkpoints(folder: Path, run: dict[str, Any], modify: bool = True) -> Path | None:
    """The latest complete checkpoint of this run in ``folder``, after clearing what is not
    (only when ``modify``; other processes of a distributed run just look)."""
    run_file = folder / RUN_FILE
    previous = json.loads(run_file.read_text(encoding="utf-8")) if run_file.is_file() else None
    if not modify:
        if previous != run:
            return None
        complete = [p for _, p in _checkpoints(folder) if (p / COMPLETE_MARKER).is_file()]
        return complete[-1] if complete else None
    folder.mkdir(parents=True, exist_ok=True)
    if previous != run:
        stale = _checkpoints(folder)
        if stale or previous is not None:
            log.warning(
                "%s holds %d checkpoints of a different run (spec, data or initialisation "
                "changed); deleting them and starting from scratch",
                folder,
                len(stale),
            )
        for _, path in stale:
            shutil.rmtree(path)
        with contextlib.suppress(FileNotFoundError):
            (folder / LIVE_CURVES).unlink()
        write_json_atomic(run_file, run)
    latest = None
    for _, path in _checkpoints(folder):
        if (path / COMPLETE_MARKER).is_file():
            latest = path
        else:
            log.warning("discarding incomplete checkpoint %s", path)
            shutil.rmtree(path)
    return latest


def _curve_rows(path: Path, up_to_step: int | None) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    return [r for r in rows if up_to_step is not None and r["step"] <= up_to_step]


class _SampleCount:
    """Samples trained after a given number of optimizer steps (for curves and stats).

    Each step takes ``per_step`` samples, except that the last step of an epoch takes what is
    left unless the last partial batch is dropped (the Trainer drops it under DDP). The steps
    per epoch are read from the data loader when training starts.
    """

    def __init__(self, samples: int, per_step: int):
        self.samples, self.per_step, self.per_epoch = samples, per_step, samples
        self.steps_per_epoch = math.ceil(samples / per_step)

    def set_loader(self, batches: int, args) -> None:
        self.steps_per_epoch = max(1, math.ceil(batches / args.gradient_accumulation_steps))
        if args.dataloader_drop_last:
            self.per_epoch = min(self.samples, self.steps_per_epoch * self.per_step)

    def done(self, step: int) -> int:
        epochs, rest = divmod(step, self.steps_per_epoch)
        return epochs * self.per_epoch + min(rest * self.per_step, self.per_epoch)


def _jsonl(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)


def _trainer_callbacks(
    live_curves: Path | None,
    rows: list[dict[str, Any]],
    count: _SampleCount,
    pairs_per_sample: int,
):
    from transformers import TrainerCallback

    class Curves(TrainerCallback):
        """One JSONL row per logging step, appended to the live curves file; progress (step,
        rate, ETA, last loss) in the job's log every 30 s and at the end."""

        def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
            if train_dataloader is not None:
                count.set_loader(len(train_dataloader), args)
            self.last_time = time.perf_counter()
            self.last_step = self.first_step = state.global_step
            self.loss: float | None = None
            self.progress = Progress(
                "training", state.max_steps, unit="steps", initial=state.global_step, logger=log
            )

        def report(self, state):
            if not state.is_world_process_zero:
                return
            elapsed = time.perf_counter() - self.progress.started
            samples = count.done(state.global_step) - count.done(self.first_step)
            extra = [f"{samples / elapsed:.1f} samples/s" if elapsed > 0 else ""]
            extra.append(f"epoch {float(state.epoch or 0.0):.2f}")
            if self.loss is not None:
                extra.append(f"loss {self.loss:.4f}")
            self.progress.update(state.global_step, ", ".join(e for e in extra if e))

        def on_step_end(self, args, state, control, **kwargs):
            if not control.should_log:  # a logging step reports in on_log, with its loss
                self.report(state)

        def on_train_end(self, args, state, control, **kwargs):
            self.report(state)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs or "loss" not in logs:
                return
            now = time.perf_counter()
            seconds = now - self.last_time
            samples = count.done(state.global_step) - count.done(self.last_step)
            row = {
                "step": state.global_step,
                "epoch": round(float(state.epoch or 0.0), 6),
                "loss": float(logs["loss"]),
                "lr": logs.get("learning_rate"),
                "grad_norm": None if logs.get("grad_norm") is None else float(logs["grad_norm"]),
                "samples": samples,
                "seconds": round(seconds, 6),
                "samples_per_second": round(samples / seconds, 3) if seconds > 0 else None,
                "pairs_per_second": round(samples * pairs_per_sample / seconds, 3)
                if seconds > 0
                else None,
            }
            rows.append(row)
            self.loss = row["loss"]
            self.report(state)
            if not state.is_world_process_zero:
                return
            if live_curves is not None:
                with open(live_curves, "a", encoding="utf-8") as handle:
                    handle.write(json.dumps(row, sort_keys=True) + "\n")
            self.last_time, self.last_step = now, state.global_step

    class MarkComplete(TrainerCallback):
        """Mark a checkpoint complete once the Trainer has written all of it."""

        def on_save(self, args, state, control, **kwargs):
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if state.is_world_process_zero and folder.is_dir():
                (folder / COMPLETE_MARKER).write_text(f"{state.global_step}\n", encoding="utf-8")

    return [Curves(), MarkComplete()]


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------
def _training_args(
    kind: str,
    spec: StudentTrainingSpec,
    output_dir: Path,
    rows: int,
    use_cuda: bool,
    checkpointing: bool,
):
    if kind == "cross-encoder":
        from sentence_transformers.cross_encoder import (
            CrossEncoderTrainingArguments as Arguments,
        )
    else:
        from sentence_transformers import SentenceTransformerTrainingArguments as Arguments
    if spec.group_by_length:
        batch_sampler: Any = functools.partial(EpochSeededBatchSampler, group_by_length=True)
    elif spec.batch_sampler == "no_duplicates":
        batch_sampler = "no_duplicates"
    else:
        batch_sampler = "batch_sampler"
    return Arguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=spec.batch_size // _world_size() * rows,
        gradient_accumulation_steps=spec.gradient_accumulation_steps,
        num_train_epochs=spec.epochs,
        max_steps=spec.max_steps or -1,
        learning_rate=spec.optimizer.lr,
        weight_decay=spec.optimizer.weight_decay,
        lr_scheduler_type=SCHEDULES[spec.schedule.name],
        warmup_steps=spec.schedule.warmup_ratio,  # < 1: a fraction of the steps
        # No clipping still reports the gradient norm: clipping at infinity scales by 1.0.
        max_grad_norm=spec.grad_clip or math.inf,
        seed=spec.seed,
        data_seed=spec.seed,
        bf16=bool(spec.bf16 and use_cuda),
        use_cpu=not use_cuda,
        logging_steps=spec.log_every_steps,
        logging_strategy="steps",
        save_strategy="steps" if checkpointing else "no",
        save_steps=spec.checkpoint_every_steps or 500,
        save_total_limit=CHECKPOINTS_KEPT,
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        batch_sampler=batch_sampler,
        # Under DDP: a cross-encoder uses every parameter, and the Trainer's default search for
        # unused ones makes sentence-transformers 6.2's CrossEncoderTrainer fail ("marked as
        # ready twice"); a bi-encoder leaves e.g. BERT's pooler unused, so it keeps the search.
        ddp_find_unused_parameters=False if kind == "cross-encoder" else None,
    )


def train_student(
    kind: str,
    spec: StudentTrainingSpec,
    scores_parquet: str | os.PathLike,
    queries_parquet: str | os.PathLike,
    corpus_parquet: str | os.PathLike,
    init_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    checkpoint_dir: str | os.PathLike | None,
    curves_path: str | os.PathLike,
    device: str | None = None,
    *,
    callbacks: list | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """Train a ``kind`` (``cross-encoder`` or ``bi-encoder``) student; see the module docstring.
    Returns the stats.

    ``callbacks`` are extra ``transformers.TrainerCallback`` objects (tests, benchmarks).
    ``revision`` and ``trust_remote_code`` are the init model entry's (a hub id's pinned
    revision), passed to the loader (:func:`load_student`).
    """
    objective = get_objective(kind, spec.objective)
    resolve_optimizer(spec.optimizer)  # an unknown name fails before anything loads
    device = _device(device)
    use_cuda = device.startswith("cuda")
    check_runnable(spec.optimizer, device)

    if spec.batch_size % _world_size():
        raise ValueError(
            f"batch_size {spec.batch_size} (the global batch) is not divisible by the "
            f"{_world_size()} training processes"
        )
    samples = load_samples(scores_parquet, queries_parquet, corpus_parquet, spec.num_negatives)
    spec = resolve_temperature(spec, objective, samples.score_kind)
    entropy = None
    if objective.uses_teacher and "temperature" in objective.params:
        entropy = teacher_entropy(
            samples.pos_scores, samples.neg_scores, spec.objective.temperature
        )
        if _rank() == 0:
            log_teacher_entropy(entropy, objective.name)
    dataset = to_dataset(samples, objective.data)
    rows = rows_per_sample(objective.data, spec.num_negatives)
    pairs_per_sample = 1 + spec.num_negatives
    n = len(samples)
    count = _SampleCount(n, spec.batch_size * spec.gradient_accumulation_steps)

    run = run_identity(
        deciding(spec.describe(), "students.training"),
        (scores_parquet, queries_parquet, corpus_parquet),
        init_dir,
        kind=kind,
        **({"init_revision": revision} if revision else {}),
    )
    scratch = None
    if checkpoint_dir is not None:
        checkpoint_dir = Path(checkpoint_dir)
        live_curves: Path | None = checkpoint_dir / LIVE_CURVES
        output_dir = checkpoint_dir
    else:
        live_curves = None
        scratch = Path(tempfile.mkdtemp(prefix="irflow-train-"))
        output_dir = scratch
    main = _rank() == 0
    try:
        args = _training_args(
            kind, spec, output_dir, rows, use_cuda,
            checkpoint_dir is not None and bool(spec.checkpoint_every_steps),
        )  # fmt: skip
        resume = None
        if checkpoint_dir is not None:
            # Under torchrun the main process clears stale checkpoints first; the others then
            # find the same checkpoint to resume from.
            with args.main_process_first(local=False, desc="checkpoints"):
                resume = _prepare_checkpoints(checkpoint_dir, run, modify=main)
        resumed_step = int(resume.name.split("-")[1]) if resume else 0
        curve_rows = _curve_rows(live_curves, resumed_step) if live_curves else []
        if live_curves is not None and main:
            write_text_atomic(live_curves, _jsonl(curve_rows))

        model = load_student(
            kind, init_dir, spec, device, revision=revision, trust_remote_code=trust_remote_code
        )
        if spec.lora is not None:
            apply_lora(model, kind, spec.lora)
        loss = objective.build(model, spec.objective)
        if kind == "cross-encoder":
            from sentence_transformers.cross_encoder import CrossEncoderTrainer as Trainer
        else:
            from sentence_transformers import SentenceTransformerTrainer as Trainer
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=dataset,
            loss=loss,
            callbacks=[
                *_trainer_callbacks(live_curves, curve_rows, count, pairs_per_sample),
                *(callbacks or []),
            ],
            optimizer_cls_and_kwargs=resolve_optimizer(spec.optimizer),
        )
        # The curves file and this module's log replace the Trainer's printed log dicts.
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)
        began = time.perf_counter()
        result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        seconds = time.perf_counter() - began
        if main:
            if spec.lora is not None:
                merge_lora(model)
            save_model(model, out_dir)
            write_text_atomic(curves_path, _jsonl(curve_rows))
        trainer.accelerator.wait_for_everyone()
        if main and checkpoint_dir is not None:
            # The model is saved, so the checkpoints have served; a forced rerun trains anew.
            shutil.rmtree(checkpoint_dir, ignore_errors=True)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    steps = int(result.global_step)
    trained = count.done(steps) - count.done(resumed_step)
    return {
        "kind": kind,
        **({"init_revision": revision} if revision else {}),
        "objective": spec.objective.name,
        "data_format": objective.data,
        **samples.stats,
        **({"teacher_entropy": entropy} if entropy else {}),
        "pairs_per_sample": pairs_per_sample,
        "steps": steps,
        "steps_per_epoch": count.steps_per_epoch,
        "epochs": round(steps / count.steps_per_epoch, 6),
        "samples_seen": count.done(steps),
        "resumed_from_step": resumed_step or None,
        "train_seconds": round(seconds, 3),
        "samples_per_second": round(trained / seconds, 3) if seconds > 0 else None,
        "pairs_per_second": round(trained * pairs_per_sample / seconds, 3) if seconds > 0 else None,
        "mean_loss": float(result.training_loss),
        "final_loss": curve_rows[-1]["loss"] if curve_rows else None,
        "device": device,
        "world_size": _world_size(),
        "bf16": bool(spec.bf16 and use_cuda),
        "optimizer": describe_optimizer(spec.optimizer),
        "lora": spec.lora is not None,
        **_param_counts(model),
        "spec": spec.describe(),
    }


def train_cross_encoder(*args, **kwargs) -> dict[str, Any]:
    """Train a cross-encoder (reranker) student: :func:`train_student` of that kind."""
    return train_student("cross-encoder", *args, **kwargs)


def train_bi_encoder(*args, **kwargs) -> dict[str, Any]:
    """Train a bi-encoder (embedding) student: :func:`train_student` of that kind."""
    return train_student("bi-encoder", *args, **kwargs)


def train_from_config(
    kind: str,
    training: dict[str, Any],
    init_dir: str,
    revision: str | None = None,
    trust_remote_code: bool = False,
    **paths: str,
) -> dict[str, Any]:
    """:func:`train_student` from the plain config dict of the training spec (JSON-friendly:
    what :mod:`irflow.launch` hands each torchrun worker). ``paths``: scores_parquet,
    queries_parquet, corpus_parquet, out_dir, checkpoint_dir, curves_path; ``revision`` and
    ``trust_remote_code``: the init model entry's."""
    spec = StudentTrainingSpec.from_config(training)
    return train_student(
        kind,
        spec,
        init_dir=init_dir,
        revision=revision,
        trust_remote_code=trust_remote_code,
        **paths,
    )
