"""Training data for distillation: pairs, mined hard negatives, teacher scores, filtering.

One module per workflow stage; each is a set of pure functions over dicts and files that the
workflow scripts call (nothing here sees a Snakemake object):

============================  =================================================================
module                        stage
============================  =================================================================
:mod:`.pairs`                 training (query, positive) pairs from qrels; train/test leakage
:mod:`.negatives`             hard negatives sampled from a first-stage run (NV-Retriever's
                              positive-aware filter), ``negatives.parquet``
:mod:`.teacher`               sharded teacher scoring of every (query, positive) and
                              (query, negative) pair, shard merging
:mod:`.consistency`           consistency filtering on the teacher's scores (Gecko / Nomic)
:mod:`.artifacts`             deterministic Parquet writing and artifact metadata
============================  =================================================================

Every artifact is written atomically (:func:`irflow.io.atomic_output`) beside a small stats JSON,
and is byte-identical when rebuilt from the same inputs and parameters: Parquet is written with
fixed compression and row-group sizes, and carries its parameters (never a timestamp) in the
schema metadata under the key ``irflow``.

Heavy libraries (torch, transformers, sentence-transformers) are imported inside the functions
that need them, so importing this package stays cheap.
"""

from irflow.training_data.consistency import filter_consistency, filter_scores
from irflow.training_data.negatives import NEGATIVES_SCHEMA, mine_negatives, write_negatives
from irflow.training_data.pairs import (
    TrainingPairs,
    check_leakage,
    normalise_query,
    training_pairs,
)
from irflow.training_data.teacher import (
    SCORES_SCHEMA,
    TeacherSpec,
    load_teacher,
    merge_shards,
    score_samples,
    score_shard,
    shard_rows,
)

__all__ = [
    "NEGATIVES_SCHEMA",
    "SCORES_SCHEMA",
    "TeacherSpec",
    "TrainingPairs",
    "check_leakage",
    "filter_consistency",
    "filter_scores",
    "load_teacher",
    "merge_shards",
    "mine_negatives",
    "normalise_query",
    "score_samples",
    "score_shard",
    "shard_rows",
    "training_pairs",
    "write_negatives",
]
