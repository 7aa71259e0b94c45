"""Rule decoder_diagnostics: heatmaps of a decoder's gradient cosines and expert usage
(grad_cosine.svg and expert_usage.svg, both in the outputs' folder)."""

from pathlib import Path

from irflow import job
from irflow.decoder.diagnostics import plot_diagnostics

job.start(snakemake)
plot_diagnostics(snakemake.input.diagnostics, Path(snakemake.output.grad_cosine).parent)
