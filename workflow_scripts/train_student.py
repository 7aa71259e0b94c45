"""Rule train_student: train a cross-encoder or bi-encoder student on teacher-scored samples.

With ``gpus: N > 1`` in the rule's resources the training runs in N torchrun processes
(irflow.launch), one model, the global batch split across them."""

from irflow import job, launch
from irflow.io import write_json_atomic
from irflow.models import ModelRef, configure_threads
from irflow.students import StudentTrainingSpec

job.start(snakemake)
configure_threads(snakemake.threads)
student = snakemake.params.student
training = {
    **student["training"],
    "seed": student["seed"],
    "checkpoint_every_steps": snakemake.resources.checkpoint_every_steps or None,
}
try:
    StudentTrainingSpec.from_config(training)
except ValueError as err:
    raise ValueError(f"config students.{snakemake.wildcards.student}.training: {err}") from None
init = dict(student["init"])
init_ref = ModelRef.from_config(init.pop("name"), init)
call = {
    "kind": student["kind"],
    "training": training,
    "init_dir": str(init_ref.name_or_path),
    # A hub init loads at its entry's pinned revision, with its trust_remote_code.
    "revision": init_ref.revision if init_ref.hf_id and not init_ref.path else None,
    "trust_remote_code": init_ref.trust_remote_code,
    "scores_parquet": snakemake.input.data,
    "queries_parquet": snakemake.input.queries,
    "corpus_parquet": snakemake.input.corpus,
    "out_dir": snakemake.output.model,
    "checkpoint_dir": snakemake.params.checkpoints,
    "curves_path": snakemake.output.curves,
}
processes = int(snakemake.resources.get("gpu", 0) or 0)
stats = launch.call(processes, "irflow.students.train:train_from_config", call, snakemake.threads)
write_json_atomic(snakemake.output.stats, {"student": snakemake.wildcards.student, **stats})
