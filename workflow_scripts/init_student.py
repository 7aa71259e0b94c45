"""Rule init_student: a shallower student cut from a deeper model (GUIDE layer selection)."""

import json

from transformers import AutoConfig

from irflow import job
from irflow.io import write_json_atomic
from irflow.models import ModelRef
from irflow.students.guide import build_student, select_layers

job.start(snakemake)
entry = dict(snakemake.params.parent)
parent = ModelRef.from_config(entry.pop("name"), entry)
# The parent's depth, from its config (a sentence-transformers folder keeps it at the top).
depth = AutoConfig.from_pretrained(
    parent.name_or_path, revision=parent.revision, trust_remote_code=parent.trust_remote_code
).num_hidden_layers
try:
    layers = select_layers(
        depth,
        snakemake.params.num_layers,
        strategy=snakemake.params.strategy,
        layers=snakemake.params.layers,
    )
except ValueError as err:
    raise ValueError(f"config inits.{snakemake.wildcards.init}: {err}") from None
stats = build_student(parent, layers, snakemake.output.model)
write_json_atomic(snakemake.output.stats, {"init": snakemake.wildcards.init, **stats})
print(json.dumps(stats))
