"""Rule init_student: a student cut from a parent model (GUIDE-style layer selection, or the
GUIDE width projection with strategy guide-pca)."""

from irflow import job
from irflow.io import write_json_atomic
from irflow.models import ModelRef
from irflow.students.guide import init_student

job.start(snakemake)
entry = dict(snakemake.params.parent)
parent = ModelRef.from_config(entry.pop("name"), entry)
# The width keys are params only for the rules that pass them (absent: a depth-only init).
width = {
    key: snakemake.params.get(key)
    for key in ("hidden_size", "intermediate_size", "num_attention_heads")
    if snakemake.params.get(key) is not None
}
try:
    stats = init_student(
        parent,
        snakemake.output.model,
        snakemake.params.num_layers,
        strategy=snakemake.params.strategy,
        layers=snakemake.params.layers,
        **width,
    )
except ValueError as err:
    raise ValueError(f"config inits.{snakemake.wildcards.init}: {err}") from None
write_json_atomic(snakemake.output.stats, {"init": snakemake.wildcards.init, **stats})
