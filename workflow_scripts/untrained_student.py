"""Rule untrained_student: the exact model a student's training starts from (its baseline)."""

from irflow import job
from irflow.models import ModelRef, configure_threads
from irflow.students import StudentTrainingSpec, save_untrained

job.start(snakemake)
configure_threads(snakemake.threads)
kind = snakemake.params.kind
# save_untrained reads only the seed and max_length of the spec; the objective is a placeholder
# that the spec requires.
spec = StudentTrainingSpec.from_config(
    {
        "objective": {"name": "bce" if kind == "cross-encoder" else "margin_mse"},
        "seed": snakemake.params.seed,
        "max_length": snakemake.params.max_length,
    }
)
init = dict(snakemake.params.init)
init_ref = ModelRef.from_config(init.pop("name"), init)
save_untrained(
    kind,
    spec,
    init_ref.name_or_path,
    snakemake.output.model,
    revision=init_ref.revision if init_ref.hf_id and not init_ref.path else None,
    trust_remote_code=init_ref.trust_remote_code,
)
