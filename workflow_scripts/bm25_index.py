"""Rule bm25_index: build a bm25s index over a corpus."""

from irflow import bm25, job

job.start(snakemake)
params = {k: v for k, v in snakemake.params.bm25.items() if k not in ("kind", "depth")}
bm25.build_index(snakemake.input.corpus, snakemake.output.index, params)
