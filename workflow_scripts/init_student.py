"""Rule init_student: a shallower student cut from a deeper model (GUIDE layer selection)."""

from irflow import job
from irflow.io import write_json_atomic
from irflow.models import ModelRef
from irflow.students.guide import init_student

job.start(snakemake)
entry = dict(snakemake.params.parent)
parent = ModelRef.from_config(entry.pop("name"), entry)
try:
    stats = init_student(
        parent,
        snakemake.output.model,
        snakemake.params.num_layers,
        strategy=snakemake.params.strategy,
        layers=snakemake.params.layers,
    )
except ValueError as err:
    raise ValueError(f"config inits.{snakemake.wildcards.init}: {err}") from None
write_json_atomic(snakemake.output.stats, {"init": snakemake.wildcards.init, **stats})
