"""Rule encode_corpus: L2-normalised bi-encoder embeddings of every document.

With ``gpus: N > 1`` in the rule's resources the corpus's chunks are encoded by N torchrun
processes, one per GPU (irflow.dense.encode_corpus_split); the folder is the same."""

from irflow import job
from irflow.dense import encode_corpus, encode_corpus_split
from irflow.models import ModelRef, configure_threads, load_sentence_transformer, pick_device

job.start(snakemake)
configure_threads(snakemake.threads)
entry = dict(snakemake.params.model)
batch_size = entry.get("batch_size", 64)
processes = int(snakemake.resources.get("gpu", 0) or 0)
if processes > 1:
    encode_corpus_split(
        entry,
        snakemake.input.corpus,
        snakemake.output.embeddings,
        processes,
        batch_size=batch_size,
        threads_per_process=max(1, snakemake.threads // processes),
    )
else:
    spec = dict(entry)
    model = load_sentence_transformer(ModelRef.from_config(spec.pop("name"), spec), pick_device())
    encode_corpus(model, snakemake.input.corpus, snakemake.output.embeddings, batch_size=batch_size)
