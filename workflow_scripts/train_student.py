"""Rule train_student: train a cross-encoder or bi-encoder student on teacher-scored samples."""

from irflow import job
from irflow.io import write_json_atomic
from irflow.models import ModelRef, configure_threads
from irflow.students import StudentTrainingSpec, train_bi_encoder, train_cross_encoder

job.start(snakemake)
configure_threads(snakemake.threads)
student = snakemake.params.student
try:
    spec = StudentTrainingSpec.from_config(
        {
            **student["training"],
            "seed": student["seed"],
            "checkpoint_every_steps": snakemake.resources.checkpoint_every_steps or None,
        }
    )
except ValueError as err:
    raise ValueError(f"config students.{snakemake.wildcards.student}.training: {err}") from None
init = dict(student["init"])
init_ref = ModelRef.from_config(init.pop("name"), init)
train = train_cross_encoder if student["kind"] == "cross-encoder" else train_bi_encoder
stats = train(
    spec,
    snakemake.input.data,
    snakemake.input.queries,
    snakemake.input.corpus,
    init_ref.name_or_path,
    snakemake.output.model,
    snakemake.params.checkpoints,
    snakemake.output.curves,
)
write_json_atomic(snakemake.output.stats, {"student": snakemake.wildcards.student, **stats})
