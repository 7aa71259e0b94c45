"""Training samples from a teacher-scores file and the texts they need, as ``datasets.Dataset``.

Input files:

* scores Parquet (:data:`irflow.training_data.SCORES_SCHEMA`: ``query_id``, ``pos_id``,
  ``pos_score``, ``neg_ids``, ``neg_scores``; a merged or filtered ``teacher-scores`` artifact,
  whose ``irflow`` metadata gives the teacher's ``score_kind``), one row per sample;
* queries Parquet (``query_id``, ``text``);
* corpus Parquet (``doc_id``, ``title``, ``text``), of which only the documents the samples use
  are read (:class:`irflow.training_data.teacher.CorpusTexts`); a document's text is its title
  and body joined as everywhere else in irflow (:func:`irflow.data.doc_texts`).

A sample uses its first ``num_negatives`` negatives in file order (the miner's seeded order);
samples with fewer are dropped and counted. Dataset formats (one per objective, see
:mod:`irflow.students.losses`), with ``k = num_negatives``:

``pairs``          ``query``, ``document``, ``label`` (float32: 1.0 positive, 0.0 negative);
                   ``1 + k`` rows per sample, the positive first
``ntuple``         ``query``, ``positive``, ``negative_1`` ... ``negative_k``
``ntuple_scores``  as ``ntuple`` plus ``label`` (list<float32>): the teacher's raw scores
                   ``[pos_score, neg_score_1, ..., neg_score_k]``

Rows keep the scores file's sample order; shuffling is the batch sampler's job.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from sentence_transformers.base.sampler import DefaultBatchSampler

from irflow.io import InputError
from irflow.training_data.artifacts import SCORES_SCHEMA, check_columns, read_meta
from irflow.training_data.pairs import SHOW
from irflow.training_data.teacher import CorpusTexts

DATA_FORMATS = ("pairs", "ntuple", "ntuple_scores")


@dataclass
class TrainingSamples:
    """Texts and teacher scores of the samples used, each with exactly ``num_negatives``."""

    queries: list[str]
    positives: list[str]
    negatives: list[list[str]]
    pos_scores: np.ndarray  # float32, (n,)
    neg_scores: np.ndarray  # float32, (n, k)
    score_kind: str | None
    stats: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.queries)

    @property
    def num_negatives(self) -> int:
        return self.neg_scores.shape[1]


def load_samples(
    scores_parquet: str | os.PathLike,
    queries_parquet: str | os.PathLike,
    corpus_parquet: str | os.PathLike,
    num_negatives: int,
) -> TrainingSamples:
    """Read the samples and the texts they use (see the module docstring).

    Raises :class:`InputError` naming the file for a file that is not a scores artifact, a
    query without text, a document missing from the corpus, or no sample left with
    ``num_negatives`` negatives.
    """
    scores_parquet, corpus_parquet = str(scores_parquet), str(corpus_parquet)
    meta = read_meta(scores_parquet, "teacher-scores")
    check_columns(scores_parquet, SCORES_SCHEMA)
    table = pq.read_table(scores_parquet)
    lengths = pc.list_value_length(table.column("neg_ids")).to_numpy(zero_copy_only=False)
    keep = lengths >= num_negatives
    stats: dict[str, Any] = {
        "samples_in": table.num_rows,
        "samples_dropped_too_few_negatives": int((~keep).sum()),
        "num_negatives": num_negatives,
        "score_kind": meta.get("score_kind"),
        "teacher": (meta.get("teacher") or {}).get("name"),
    }
    table = table.filter(pa.array(keep))
    if table.num_rows == 0:
        raise InputError(
            f"{scores_parquet}: no sample has {num_negatives} negatives (the most any has is "
            f"{int(lengths.max()) if lengths.size else 0}); lower num_negatives"
        )
    qids = table.column("query_id").to_pylist()
    pos_ids = table.column("pos_id").to_pylist()
    neg_ids = [negs[:num_negatives] for negs in table.column("neg_ids").to_pylist()]
    neg_scores = np.array(
        [s[:num_negatives] for s in table.column("neg_scores").to_pylist()], dtype=np.float32
    ).reshape(len(qids), num_negatives)
    pos_scores = table.column("pos_score").to_numpy().astype(np.float32)

    from irflow.data import read_queries

    query_text = read_queries(str(queries_parquet))
    absent = sorted(set(qids) - set(query_text))
    if absent:
        raise InputError(
            f"{len(absent)} queries of {scores_parquet} have no text in {queries_parquet}: "
            f"{absent[:SHOW]}"
        )
    needed = pa.array(pos_ids + [d for negs in neg_ids for d in negs], type=pa.string())
    corpus = CorpusTexts(corpus_parquet, needed)
    if corpus.missing:
        raise InputError(
            f"{len(corpus.missing)} documents of {scores_parquet} are not in the corpus "
            f"{corpus_parquet}: {corpus.missing[:SHOW]}"
        )
    texts = corpus.texts(needed.to_pylist())
    stats["samples_used"] = len(qids)
    stats["queries"] = len(set(qids))
    stats["documents"] = len(texts)
    return TrainingSamples(
        queries=[query_text[q] for q in qids],
        positives=[texts[d] for d in pos_ids],
        negatives=[[texts[d] for d in negs] for negs in neg_ids],
        pos_scores=pos_scores,
        neg_scores=neg_scores,
        score_kind=meta.get("score_kind"),
        stats=stats,
    )


def to_dataset(samples: TrainingSamples, data_format: str):
    """The samples as a ``datasets.Dataset`` in ``data_format`` (module docstring)."""
    import datasets

    k = samples.num_negatives
    if data_format == "pairs":
        queries, documents, labels = [], [], []
        for query, pos, negs in zip(
            samples.queries, samples.positives, samples.negatives, strict=True
        ):
            queries.extend([query] * (1 + k))
            documents.extend([pos, *negs])
            labels.extend([1.0] + [0.0] * k)
        features = datasets.Features(
            {
                "query": datasets.Value("string"),
                "document": datasets.Value("string"),
                "label": datasets.Value("float32"),
            }
        )
        return datasets.Dataset.from_dict(
            {"query": queries, "document": documents, "label": labels}, features=features
        )
    if data_format not in DATA_FORMATS:
        raise ValueError(f"unknown data format {data_format!r}; allowed: {list(DATA_FORMATS)}")
    columns: dict[str, list] = {"query": samples.queries, "positive": samples.positives}
    spec: dict[str, Any] = {"query": datasets.Value("string"), "positive": datasets.Value("string")}
    for i in range(k):
        columns[f"negative_{i + 1}"] = [negs[i] for negs in samples.negatives]
        spec[f"negative_{i + 1}"] = datasets.Value("string")
    if data_format == "ntuple_scores":
        scores = np.concatenate([samples.pos_scores[:, None], samples.neg_scores], axis=1)
        columns["label"] = scores.tolist()
        spec["label"] = datasets.Sequence(datasets.Value("float32"))
    return datasets.Dataset.from_dict(columns, features=datasets.Features(spec))


def rows_per_sample(data_format: str, num_negatives: int) -> int:
    return 1 + num_negatives if data_format == "pairs" else 1


def text_lengths(dataset) -> list[int]:
    """Characters of text per row (all string columns): the length proxy for grouping."""
    names = [n for n, f in dataset.features.items() if getattr(f, "dtype", None) == "string"]
    total = np.zeros(len(dataset), dtype=np.int64)
    for name in names:
        total += np.fromiter((len(t) for t in dataset[name]), dtype=np.int64, count=len(dataset))
    return total.tolist()


class EpochSeededBatchSampler(DefaultBatchSampler):
    """Shuffled batches, optionally grouped by length, whose order depends only on the seed and
    the epoch (reseeded with ``seed + epoch``, as the library's samplers are), so a run resumed
    in a later epoch sees the same batches.

    Written here because sentence-transformers' trainers have no length grouping (the Hugging
    Face ``group_by_length`` needs tokenized inputs, and sentence-transformers tokenizes in the
    collator). With ``group_by_length``, rows are sorted by text length (characters) inside
    shuffled mega-batches of ``megabatch_batches`` batches and the batches are then shuffled, so
    batches hold similar lengths (less padding) without ordering the epoch by length.

    Pass ``functools.partial(EpochSeededBatchSampler, group_by_length=...)`` as the training
    arguments' ``batch_sampler`` (a module-level class, so checkpoints can pickle the arguments).
    """

    def __init__(
        self,
        dataset,
        batch_size: int,
        drop_last: bool,
        valid_label_columns=None,
        generator=None,
        seed: int = 0,
        group_by_length: bool = False,
        megabatch_batches: int = 50,
    ):
        super().__init__(dataset, batch_size, drop_last, valid_label_columns, None, seed)
        self.size = len(dataset)
        self.lengths = text_lengths(dataset) if group_by_length else None
        self.megabatch_batches = megabatch_batches

    def __iter__(self):
        import torch

        generator = torch.Generator()
        generator.manual_seed(int(self.seed or 0) + int(self.epoch))
        order = torch.randperm(self.size, generator=generator).tolist()
        if self.lengths is not None:
            span = self.batch_size * self.megabatch_batches
            order = [
                i
                for start in range(0, self.size, span)
                for i in sorted(order[start : start + span], key=lambda j: -self.lengths[j])
            ]
        batches = [
            order[start : start + self.batch_size] for start in range(0, self.size, self.batch_size)
        ]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        if self.lengths is not None:
            shuffle = torch.randperm(len(batches), generator=generator).tolist()
            batches = [batches[i] for i in shuffle]
        yield from batches
