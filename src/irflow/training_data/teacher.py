"""Teacher scoring of mined samples, sharded, streamed, and merged back in order.

A teacher scores every (query, positive) and (query, negative) pair of a ``negatives.parquet``
(:mod:`.negatives`). Three kinds, each with its score kind (recorded in the Parquet metadata and
the stats):

===============  ======================  ===================================================
kind             score kind              what
===============  ======================  ===================================================
bi-encoder       ``cosine``              cosine of L2-normalised ``SentenceTransformer``
                                         embeddings (``encode_query``/``encode_document``,
                                         so a model's own prompts apply; overridable)
cross-encoder    ``logit``               ``CrossEncoder`` raw output (activation Identity);
                                         one-label models only
causal-lm        ``yes_minus_no_logit``  ``logit(yes) - logit(no)`` of the next token after an
                                         instruction template, ``AutoModelForCausalLM``
===============  ======================  ===================================================

Scores equal the plain library calls to float32 rounding, well within 1e-4:
``SentenceTransformer.encode_query``/``encode_document`` with ``normalize_embeddings=True``
and a dot product (both are ``encode`` for a model without prompts),
``CrossEncoder.predict(activation_fn=Identity())``, and an unpadded forward pass of the causal
LM. The model calls are the library's own; only *what goes into a batch* changes.

**Speed** (what differs from the library default): within a chunk of samples, texts are
deduplicated (a bi-encoder embeds each query and each document once, however many pairs use
it; the pair kinds score each distinct pair once), sorted by token length and cut into batches
by a *token budget* (``batch_tokens`` padded tokens, at most ``max_batch`` rows) instead of a
fixed count, so short inputs go in large batches and long ones in small batches; everything runs
under ``torch.inference_mode()``. The batching (and its defaults) lives in
:mod:`irflow.batching`, shared with the encoding and reranking of :mod:`irflow.dense` and
:mod:`irflow.cross_encoder`. On GPU the models load in bf16 with SDPA attention
(:func:`irflow.models.model_kwargs`).

**Memory** is bounded by one chunk: the shard's sample ids (Arrow), the Arrow text of the
documents the shard needs (read once from the corpus Parquet, filtered by id; at most the
corpus), the query texts, and the Python strings and embeddings of one chunk
(``chunk_samples`` samples), plus activations bounded by ``batch_tokens``. It does not grow
with the number of pairs scored: freed heap memory is handed back after every chunk (glibc
``malloc_trim``), without which heap fragmentation makes the resident size creep.

**Sharding.** Samples are grouped into chunks of ``chunk_samples`` consecutive rows of the
samples file; shard ``i`` of ``n`` scores the contiguous run of chunks ``[i*C//n, (i+1)*C//n)``
(``C`` chunks in all; :func:`shard_rows`). Contiguous blocks rather than ``row % n``: a shard's
samples share queries (dedupe works), the shard reads a contiguous row range, and because a
chunk is scored identically whichever shard holds it, merged shards are *bit-identical* to an
unsharded run with the same chunk size and batch settings. Shard sizes differ by at most one
chunk; a shard may be empty when there are fewer chunks than shards.

Schema of a scores file (:data:`SCORES_SCHEMA`; shard, merged and filtered files alike), rows in
the samples file's order:

============  ==============  ==========================================================
column        type            meaning
============  ==============  ==========================================================
query_id      string          training query
pos_id        string          positive document
pos_score     float32         teacher score of (query, positive)
neg_ids       list<string>    negatives, as in the samples file
neg_scores    list<float32>   teacher scores of (query, negative), aligned with neg_ids
============  ==============  ==========================================================

The ``irflow`` schema metadata holds ``artifact`` (``teacher-scores-shard`` or
``teacher-scores``), ``teacher`` (the spec: kind, model reference, prompts/template),
``score_kind``, ``samples`` (sha256 and row count of the samples file), ``scoring``
(``chunk_samples``, ``batch_tokens``, ``max_batch``) and, for a shard, ``shard``
(``index``, ``count``, ``row_start``, ``row_stop``). :func:`merge_shards` checks all of these.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from irflow.batching import (
    DEFAULT_MAX_BATCH,
    Counters,
    default_batch_tokens,
    encode_texts,
    plan_batches,
    predict_pairs,
)
from irflow.batching import tokenizer_max_length as _tokenizer_max_length
from irflow.batching import unique as _unique
from irflow.io import InputError, open_parquet, sha256_file, write_json_atomic
from irflow.logs import Progress
from irflow.models import ModelRef
from irflow.training_data.artifacts import (
    ParquetSink,
    check_columns,
    check_finite_scores,
    read_meta,
)
from irflow.training_data.pairs import SHOW

log = logging.getLogger(__name__)

SCORES_SCHEMA = pa.schema(
    [
        pa.field("query_id", pa.string(), nullable=False),
        pa.field("pos_id", pa.string(), nullable=False),
        pa.field("pos_score", pa.float32(), nullable=False),
        pa.field("neg_ids", pa.list_(pa.string()), nullable=False),
        pa.field("neg_scores", pa.list_(pa.float32()), nullable=False),
    ]
)

SCORE_KINDS = {
    "bi-encoder": "cosine",
    "cross-encoder": "logit",
    "causal-lm": "yes_minus_no_logit",
}

# A generic relevance prompt; the next token after it is the answer. Chat-format rerankers
# (e.g. Qwen3-Reranker) need their own template and yes_token="yes", no_token="no".
DEFAULT_TEMPLATE = (
    "Query: {query}\nDocument: {document}\n"
    "Is the document relevant to the query? Answer yes or no.\nAnswer:"
)

DEFAULT_CHUNK_SAMPLES = 256
# Batching by token budget is shared with the bi-encoder paths (irflow.batching), and so are
# its defaults (DEFAULT_BATCH_TOKENS per device, DEFAULT_MAX_BATCH rows).


@dataclass(frozen=True)
class TeacherSpec:
    """One configured teacher: its kind, its model and how its inputs are built."""

    name: str
    kind: str
    model: ModelRef
    query_prompt: str | None = None
    document_prompt: str | None = None
    template: str = DEFAULT_TEMPLATE
    yes_token: str = " yes"
    no_token: str = " no"
    batch_tokens: int | None = None  # None: DEFAULT_BATCH_TOKENS for the device
    max_batch: int = DEFAULT_MAX_BATCH

    def __post_init__(self):
        if self.kind not in SCORE_KINDS:
            raise ValueError(
                f"teacher {self.name!r}: kind {self.kind!r} is not one of {sorted(SCORE_KINDS)}"
            )
        if self.kind == "causal-lm":
            for key in ("{query}", "{document}"):
                if self.template.count(key) != 1:
                    raise ValueError(
                        f"teacher {self.name!r}: the template must contain {key} exactly once"
                    )
        if self.batch_tokens is not None and self.batch_tokens < 1:
            raise ValueError(f"teacher {self.name!r}: batch_tokens must be >= 1")
        if self.max_batch < 1:
            raise ValueError(f"teacher {self.name!r}: max_batch must be >= 1")

    @classmethod
    def from_config(cls, name: str, entry: dict[str, Any], model: ModelRef) -> TeacherSpec:
        """``entry`` is a ``teachers:`` config entry (its ``model`` key names the model whose
        resolved reference is ``model``); unknown keys are refused."""
        entry = {k: v for k, v in entry.items() if k not in ("model", "description")}
        known = set(cls.__dataclass_fields__) - {"name", "model"}
        unknown = sorted(set(entry) - known)
        if unknown:
            raise ValueError(f"teacher {name!r}: unknown keys {unknown}")
        return cls(name=name, model=model, **entry)

    def describe(self) -> dict[str, Any]:
        """What determines the scores (stored in the artifacts' metadata)."""
        out: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind,
            "model": {
                "name": self.model.name,
                "hf_id": self.model.hf_id,
                "path": self.model.path,
                "revision": self.model.revision,
                "max_length": self.model.max_length,
                "trust_remote_code": self.model.trust_remote_code,
            },
        }
        if self.kind == "bi-encoder":
            out["query_prompt"] = self.query_prompt
            out["document_prompt"] = self.document_prompt
        if self.kind == "causal-lm":
            out.update(template=self.template, yes_token=self.yes_token, no_token=self.no_token)
        return out


# ---------------------------------------------------------------------------------------------
# Teachers
# ---------------------------------------------------------------------------------------------
@dataclass
class Teacher:
    """A loaded teacher: :meth:`score` maps aligned lists of query and document texts to scores."""

    spec: TeacherSpec
    model: Any
    device: str = "cpu"
    tokenizer: Any = None  # causal-lm only (the other kinds carry theirs inside the model)
    counters: Counters = field(default_factory=Counters)

    def __post_init__(self):
        """Checks that the model fits the kind (subclasses)."""

    @property
    def score_kind(self) -> str:
        return SCORE_KINDS[self.spec.kind]

    @property
    def batch_tokens(self) -> int:
        if self.spec.batch_tokens:
            return self.spec.batch_tokens
        return default_batch_tokens(self.device)

    def scoring(self) -> dict[str, Any]:
        return {"batch_tokens": self.batch_tokens, "max_batch": self.spec.max_batch}

    def score(self, queries: Sequence[str], docs: Sequence[str]) -> np.ndarray:
        import torch

        if len(queries) != len(docs):
            raise ValueError(f"{len(queries)} queries but {len(docs)} documents")
        self.counters.pairs += len(queries)
        if not queries:
            return np.zeros(0, dtype=np.float32)
        with torch.inference_mode():
            return np.asarray(self._score(list(queries), list(docs)), dtype=np.float32)

    def _score(self, queries: list[str], docs: list[str]) -> np.ndarray:
        raise NotImplementedError


class BiEncoderTeacher(Teacher):
    """Cosine similarity of normalised ``SentenceTransformer`` embeddings."""

    def embed(self, texts: list[str], role: str = "document") -> np.ndarray:
        """Normalised embeddings, via ``encode_query`` or ``encode_document`` (``role``).

        Those are ``encode`` with the model's own query/document prompt and task routing (for
        symmetric models such as MiniLM they are exactly ``encode``); the spec's
        ``query_prompt``/``document_prompt`` override the model's prompts.
        """
        return encode_texts(
            self.model,
            texts,
            role=role,
            prompt=self.spec.query_prompt if role == "query" else self.spec.document_prompt,
            batch_tokens=self.batch_tokens,
            max_batch=self.spec.max_batch,
            counters=self.counters,
        )

    def _score(self, queries: list[str], docs: list[str]) -> np.ndarray:
        unique_q, q_index = _unique(queries)
        unique_d, d_index = _unique(docs)
        q_emb = self.embed(unique_q, "query")
        d_emb = self.embed(unique_d, "document")
        return np.einsum("ij,ij->i", q_emb[q_index], d_emb[d_index])


class CrossEncoderTeacher(Teacher):
    """Raw logit of a one-label ``CrossEncoder`` (activation Identity)."""

    def __post_init__(self):
        labels = getattr(self.model, "num_labels", 1)
        if labels != 1:
            raise InputError(
                f"teacher {self.spec.name!r}: the cross-encoder has {labels} output labels; "
                f"a teacher needs a one-label (relevance logit) model"
            )

    def _score(self, queries: list[str], docs: list[str]) -> np.ndarray:
        return predict_pairs(
            self.model,
            list(zip(queries, docs, strict=True)),
            batch_tokens=self.batch_tokens,
            max_batch=self.spec.max_batch,
            counters=self.counters,
        )


class CausalLMTeacher(Teacher):
    """``logit(yes) - logit(no)`` for the token after the template, from a causal LM.

    The template is split at ``{document}`` and its pieces, the query and the document are
    tokenized separately (without special tokens; a BOS token is prepended when the tokenizer
    adds one by itself), so truncation to the model's maximum length only ever shortens the
    document and never cuts the template or the answer position. Batches are left-padded with
    explicit position ids (``cumsum(attention_mask) - 1``), so each row computes what the same
    token ids compute alone; only the last position's logits are materialised.
    """

    def __post_init__(self):
        tok = self.tokenizer
        if tok is None:
            raise ValueError("a causal-lm teacher needs its tokenizer")
        self.yes_id = self._single_token(self.spec.yes_token)
        self.no_id = self._single_token(self.spec.no_token)
        if self.yes_id == self.no_id:
            raise InputError(f"teacher {self.spec.name!r}: yes and no are the same token")
        probe = tok("a").input_ids
        self.bos = (
            [tok.bos_token_id]
            if tok.bos_token_id is not None and probe[:1] == [tok.bos_token_id]
            else []
        )
        self.pad_id = next((i for i in (tok.pad_token_id, tok.eos_token_id) if i is not None), 0)
        config_limit = getattr(getattr(self.model, "config", None), "max_position_embeddings", None)
        self.max_length = self.spec.model.max_length or _tokenizer_max_length(tok, config_limit)
        head, tail = self.spec.template.split("{document}")
        self.head, self.tail = head, tail
        import inspect

        self.keep_last = "logits_to_keep" in inspect.signature(self.model.forward).parameters

    def _single_token(self, text: str) -> int:
        ids = self.tokenizer(text, add_special_tokens=False).input_ids
        if len(ids) != 1:
            pieces = self.tokenizer.convert_ids_to_tokens(ids)
            raise InputError(
                f"teacher {self.spec.name!r}: answer {text!r} is {len(ids)} tokens {pieces} in "
                f"the tokenizer of {self.spec.model.hf_id or self.spec.model.path}, it must be "
                f"exactly one; set yes_token/no_token (e.g. 'yes' without the space)"
            )
        return ids[0]

    def input_ids(self, queries: list[str], docs: list[str]) -> list[list[int]]:
        """The token ids the model sees for each (query, document) pair."""
        tok = self.tokenizer

        def pieces(texts):
            return tok(texts, add_special_tokens=False, return_attention_mask=False)["input_ids"]

        heads = pieces([self.head.replace("{query}", q) for q in queries])
        tails = pieces([self.tail.replace("{query}", q) for q in queries])
        bodies = pieces(docs)
        out = []
        for query, head, body, tail in zip(queries, heads, bodies, tails, strict=True):
            room = self.max_length - len(self.bos) - len(head) - len(tail)
            if room < 0:
                raise InputError(
                    f"teacher {self.spec.name!r}: the template with query {query[:80]!r} is "
                    f"{len(head) + len(tail)} tokens, longer than max_length {self.max_length}"
                )
            out.append(self.bos + head + body[:room] + tail)
        return out

    def forward(self, batch_ids: list[list[int]]) -> np.ndarray:
        import torch

        longest = max(len(ids) for ids in batch_ids)
        input_ids = torch.full((len(batch_ids), longest), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch_ids), longest), dtype=torch.long)
        for row, ids in enumerate(batch_ids):
            input_ids[row, longest - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            mask[row, longest - len(ids) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        kwargs = {"logits_to_keep": 1} if self.keep_last else {}
        out = self.model(
            input_ids=input_ids.to(self.device),
            attention_mask=mask.to(self.device),
            position_ids=positions.to(self.device),
            use_cache=False,
            **kwargs,
        )
        last = out.logits[:, -1, :].float()
        return (last[:, self.yes_id] - last[:, self.no_id]).cpu().numpy()

    def _score(self, queries: list[str], docs: list[str]) -> np.ndarray:
        pairs, index = _unique(list(zip(queries, docs, strict=True)))
        ids = self.input_ids([q for q, _ in pairs], [d for _, d in pairs])
        lengths = [len(x) for x in ids]
        batches = plan_batches(lengths, self.batch_tokens, self.spec.max_batch)
        self.counters.add_batches(lengths, batches)
        scores = np.empty(len(pairs), dtype=np.float32)
        for batch in batches:
            scores[batch] = self.forward([ids[i] for i in batch])
        return scores[index]


def _load_causal_lm(ref: ModelRef, device: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from irflow.models import model_kwargs

    tokenizer = AutoTokenizer.from_pretrained(
        ref.name_or_path, revision=ref.revision, trust_remote_code=ref.trust_remote_code
    )
    model = AutoModelForCausalLM.from_pretrained(
        ref.name_or_path,
        revision=ref.revision,
        trust_remote_code=ref.trust_remote_code,
        **model_kwargs(device),
    )
    return model.to(device).eval(), tokenizer


def load_teacher(spec: TeacherSpec, device: str | None = None) -> Teacher:
    """Load ``spec``'s model on ``device`` (default :func:`irflow.models.pick_device`).

    Raises :class:`InputError` naming the teacher and its model when the model cannot be loaded
    or does not fit the kind (a multi-label cross-encoder, a multi-token yes/no answer).
    """
    from irflow.models import pick_device

    device = device or pick_device()
    try:
        if spec.kind == "bi-encoder":
            from irflow.models import load_sentence_transformer

            return BiEncoderTeacher(spec, load_sentence_transformer(spec.model, device), device)
        if spec.kind == "cross-encoder":
            from irflow.cross_encoder import load_cross_encoder

            return CrossEncoderTeacher(spec, load_cross_encoder(spec.model, device), device)
        try:
            model, tokenizer = _load_causal_lm(spec.model, device)
        except InputError:
            raise
        except Exception as err:  # many library error types; the user needs the model's name
            raise InputError(
                f"model {spec.model.name!r} ({spec.model.hf_id or spec.model.path}) could not "
                f"be loaded: {err}"
            ) from err
        return CausalLMTeacher(spec, model, device, tokenizer=tokenizer)
    except InputError as err:
        if str(err).startswith(f"teacher {spec.name!r}"):
            raise
        raise InputError(f"teacher {spec.name!r}: {err}") from err


def causal_lm_teacher(spec: TeacherSpec, model, tokenizer, device: str = "cpu") -> Teacher:
    """A causal-LM teacher around an already loaded model and tokenizer."""
    return CausalLMTeacher(spec, model, device, tokenizer=tokenizer)


# ---------------------------------------------------------------------------------------------
# Sharded scoring
# ---------------------------------------------------------------------------------------------
def shard_rows(
    num_rows: int, shard_index: int, num_shards: int, chunk_samples: int
) -> tuple[int, int]:
    """The row range ``[start, stop)`` of the samples that shard ``shard_index`` scores."""
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise ValueError(f"shard {shard_index} of {num_shards}: need 0 <= shard < num_shards")
    if chunk_samples < 1:
        raise ValueError(f"chunk_samples must be >= 1, got {chunk_samples}")
    chunks = math.ceil(num_rows / chunk_samples)
    first = shard_index * chunks // num_shards
    last = (shard_index + 1) * chunks // num_shards
    return min(first * chunk_samples, num_rows), min(last * chunk_samples, num_rows)


def _read_rows(path: str, start: int, stop: int, columns: list[str]) -> pa.Table:
    """Rows ``[start, stop)`` of a Parquet file, reading only the row groups that hold them."""
    parquet = pq.ParquetFile(path)
    parts = []
    offset = 0
    for group in range(parquet.num_row_groups):
        rows = parquet.metadata.row_group(group).num_rows
        if offset < stop and offset + rows > start:
            table = parquet.read_row_group(group, columns=columns)
            first, last = max(start, offset), min(stop, offset + rows)
            parts.append(table.slice(first - offset, last - first))
        offset += rows
    if not parts:
        return parquet.schema_arrow.empty_table().select(columns)
    return pa.concat_tables(parts)


class CorpusTexts:
    """The texts of a set of documents, read once from the corpus Parquet and kept as Arrow."""

    def __init__(self, corpus_parquet: str, needed: pa.Array, batch: int = 65_536):
        needed = pc.unique(needed)
        parts = []
        parquet = open_parquet(corpus_parquet)
        for record_batch in parquet.iter_batches(
            batch_size=batch, columns=["doc_id", "title", "text"]
        ):
            keep = pc.is_in(record_batch.column("doc_id"), value_set=needed)
            if pc.any(keep).as_py():
                parts.append(pa.Table.from_batches([record_batch.filter(keep)]))
        self.table = (
            pa.concat_tables(parts).combine_chunks()
            if parts
            else parquet.schema_arrow.empty_table().select(["doc_id", "title", "text"])
        )
        self.row = {d: i for i, d in enumerate(self.table.column("doc_id").to_pylist())}
        self.missing = sorted(set(needed.to_pylist()) - set(self.row))

    def texts(self, doc_ids: list[str]) -> dict[str, str]:
        from irflow.data import doc_texts

        unique = list(dict.fromkeys(doc_ids))
        rows = self.table.take(pa.array([self.row[d] for d in unique], type=pa.int64()))
        return dict(zip(unique, doc_texts(rows), strict=True))


def _missing_docs_error(samples: pa.Table, missing: list[str], corpus_parquet: str) -> InputError:
    missing_set = set(missing)
    found: list[str] = []
    for qid, pos, negs in zip(
        samples.column("query_id").to_pylist(),
        samples.column("pos_id").to_pylist(),
        samples.column("neg_ids").to_pylist(),
        strict=True,
    ):
        if pos in missing_set:
            found.append(f"positive {pos!r} of query {qid!r}")
        found.extend(
            f"negative {d!r} of sample ({qid!r}, {pos!r})" for d in negs if d in missing_set
        )
        if len(found) >= SHOW:
            break
    return InputError(
        f"{len(missing)} documents of the samples are not in the corpus {corpus_parquet}: "
        + "; ".join(found[:SHOW])
    )


def score_shard(
    samples_parquet: str | os.PathLike,
    shard_index: int,
    num_shards: int,
    teacher: Teacher | TeacherSpec,
    corpus_parquet: str | os.PathLike,
    queries_parquet: str | os.PathLike,
    out_parquet: str | os.PathLike,
    stats_json: str | os.PathLike | None = None,
    chunk_samples: int = DEFAULT_CHUNK_SAMPLES,
    device: str | None = None,
) -> dict[str, Any]:
    """Score shard ``shard_index`` of ``num_shards`` of a samples file into a shard Parquet.

    ``samples_parquet`` is a ``negatives.parquet`` (only ``query_id``, ``pos_id`` and
    ``neg_ids`` are read). ``teacher`` is a loaded :class:`Teacher`, or a :class:`TeacherSpec`
    that is loaded (on ``device``) only after the inputs have been checked. Every query of the
    shard must have text and every document must be in the corpus (:class:`InputError` naming
    the first offending samples otherwise); nothing is written on error. Returns the stats
    (also written to ``stats_json``).
    """
    samples_parquet, corpus_parquet = str(samples_parquet), str(corpus_parquet)
    from irflow.data import read_queries

    total = open_parquet(samples_parquet).metadata.num_rows
    start, stop = shard_rows(total, shard_index, num_shards, chunk_samples)
    samples = _read_rows(samples_parquet, start, stop, ["query_id", "pos_id", "neg_ids"])
    queries = read_queries(str(queries_parquet))
    absent = sorted(set(samples.column("query_id").to_pylist()) - set(queries))
    if absent:
        raise InputError(
            f"{len(absent)} queries of {samples_parquet} have no text in {queries_parquet}: "
            f"{absent[:SHOW]}"
        )
    needed = pa.concat_arrays(
        [
            samples.column("pos_id").combine_chunks(),
            pc.list_flatten(samples.column("neg_ids")).combine_chunks(),
        ]
    )
    corpus = CorpusTexts(corpus_parquet, needed)
    if corpus.missing:
        raise _missing_docs_error(samples, corpus.missing, corpus_parquet)
    if isinstance(teacher, TeacherSpec):
        teacher = load_teacher(teacher, device)
    teacher.counters = Counters()
    meta = {
        "artifact": "teacher-scores-shard",
        "teacher": teacher.spec.describe(),
        "score_kind": teacher.score_kind,
        "samples": {"sha256": sha256_file(samples_parquet), "rows": total},
        "scoring": {"chunk_samples": chunk_samples, **teacher.scoring()},
        "shard": {"index": shard_index, "count": num_shards, "row_start": start, "row_stop": stop},
    }
    began = time.perf_counter()
    progress = Progress(
        f"teacher {teacher.spec.name}, shard {shard_index}/{num_shards}",
        samples.num_rows,
        unit="samples",
        logger=log,
    )
    with ParquetSink(out_parquet, SCORES_SCHEMA, meta) as sink:
        for offset in range(0, samples.num_rows, chunk_samples):
            chunk = samples.slice(offset, chunk_samples)
            sink.write(_score_chunk(teacher, chunk, queries, corpus, start + offset))
            _release_free_memory()
            elapsed = time.perf_counter() - began
            pairs_rate = teacher.counters.pairs / elapsed if elapsed > 0 else 0.0
            progress.update(offset + chunk.num_rows, f"{pairs_rate:.1f} pairs/s")
    seconds = time.perf_counter() - began
    counts = teacher.counters.as_dict()
    log.info(
        "teacher %s, shard %d/%d: %d samples, %d pairs in %.1f s (%.1f pairs/s)",
        teacher.spec.name,
        shard_index,
        num_shards,
        samples.num_rows,
        counts["pairs"],
        seconds,
        counts["pairs"] / seconds if seconds else 0.0,
    )
    stats = {
        "teacher": teacher.spec.name,
        "score_kind": teacher.score_kind,
        "shard": meta["shard"],
        "samples": samples.num_rows,
        **counts,
    }
    if stats_json is not None:
        write_json_atomic(stats_json, stats)
    return stats


def _release_free_memory() -> None:
    """Hand freed heap pages back to the OS (glibc ``malloc_trim``; a no-op elsewhere).

    Batches of varying shapes fragment glibc's heap, so without this the resident size creeps
    up chunk after chunk although nothing is kept; with it, it stays flat.
    """
    global _MALLOC_TRIM
    if _MALLOC_TRIM is None:
        try:
            import ctypes

            _MALLOC_TRIM = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _MALLOC_TRIM = False
    if _MALLOC_TRIM:
        _MALLOC_TRIM(0)


_MALLOC_TRIM: Any = None


def _score_chunk(
    teacher: Teacher, chunk: pa.Table, queries: dict[str, str], corpus: CorpusTexts, first: int
) -> pa.Table:
    qids = chunk.column("query_id").to_pylist()
    pos_ids = chunk.column("pos_id").to_pylist()
    neg_ids = chunk.column("neg_ids").to_pylist()
    texts = corpus.texts(pos_ids + [d for negs in neg_ids for d in negs])
    pair_q: list[str] = []
    pair_d: list[str] = []
    for qid, pos, negs in zip(qids, pos_ids, neg_ids, strict=True):
        for doc in (pos, *negs):
            pair_q.append(queries[qid])
            pair_d.append(texts[doc])
    scores = teacher.score(pair_q, pair_d)
    bad = np.flatnonzero(~np.isfinite(scores))
    if bad.size:
        # Find the sample of the first bad pair for the message.
        sizes = np.cumsum([1 + len(n) for n in neg_ids])
        row = int(np.searchsorted(sizes, bad[0], side="right"))
        raise InputError(
            f"teacher {teacher.spec.name!r} gave {bad.size} non-finite scores, first for sample "
            f"#{first + row} (query {qids[row]!r}, positive {pos_ids[row]!r})"
        )
    pos_scores, neg_scores, at = [], [], 0
    for negs in neg_ids:
        pos_scores.append(scores[at])
        neg_scores.append(scores[at + 1 : at + 1 + len(negs)])
        at += 1 + len(negs)
    offsets = np.cumsum([0] + [len(n) for n in neg_ids], dtype=np.int32)
    flat = np.concatenate(neg_scores) if neg_scores else np.zeros(0, np.float32)
    return pa.table(
        {
            "query_id": chunk.column("query_id"),
            "pos_id": chunk.column("pos_id"),
            "pos_score": pa.array(np.asarray(pos_scores, dtype=np.float32)),
            "neg_ids": chunk.column("neg_ids"),
            "neg_scores": pa.ListArray.from_arrays(
                pa.array(offsets), pa.array(flat.astype(np.float32))
            ),
        },
        schema=SCORES_SCHEMA,
    )


_SHARED_KEYS = ("teacher", "score_kind", "samples", "scoring")


def merge_shards(
    paths: Sequence[str | os.PathLike],
    out_parquet: str | os.PathLike,
    stats_json: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Reassemble shard files into one scores file in the samples file's row order.

    Refuses (:class:`InputError`, nothing written) shards of different teachers, score kinds,
    samples files, scoring settings or shard counts, a missing or duplicated shard index, and
    a shard whose rows do not match its recorded range. The merged file is byte-identical
    whatever the number of shards. Returns stats (also written to ``stats_json``): samples,
    pairs, and the distribution of teacher scores (for choosing a consistency margin).
    """
    if not paths:
        raise InputError("merge_shards: no shard files given")
    metas = [(str(p), read_meta(p, "teacher-scores-shard")) for p in paths]
    first_path, first = metas[0]
    for path, meta in metas:
        check_columns(path, SCORES_SCHEMA)
        for key in (*_SHARED_KEYS, "count"):
            mine = meta["shard"]["count"] if key == "count" else meta[key]
            theirs = first["shard"]["count"] if key == "count" else first[key]
            if mine != theirs:
                raise InputError(
                    f"{path}: shard {key} {mine!r} differs from {theirs!r} in {first_path}"
                )
    count = first["shard"]["count"]
    by_index: dict[int, str] = {}
    shard_of: dict[str, dict[str, Any]] = {}
    for path, meta in metas:
        index = meta["shard"]["index"]
        if index in by_index:
            raise InputError(f"shard {index} of {count} given twice: {by_index[index]} and {path}")
        by_index[index] = path
        shard_of[path] = meta["shard"]
    missing = sorted(set(range(count)) - set(by_index))
    if missing:
        raise InputError(f"shards {missing} of {count} are missing (got {sorted(by_index)})")
    expected_start = 0
    for index in range(count):
        path = by_index[index]
        shard = shard_of[path]
        rows = pq.ParquetFile(path).metadata.num_rows
        if shard["row_start"] != expected_start or rows != shard["row_stop"] - shard["row_start"]:
            raise InputError(
                f"{path}: shard {index} holds {rows} rows for range "
                f"[{shard['row_start']}, {shard['row_stop']}), expected to start at "
                f"{expected_start}"
            )
        expected_start = shard["row_stop"]
    if expected_start != first["samples"]["rows"]:
        raise InputError(f"shards cover {expected_start} of the {first['samples']['rows']} samples")
    meta = {"artifact": "teacher-scores", **{k: first[k] for k in _SHARED_KEYS}, "filters": []}
    summary = _ScoreSummary()
    with ParquetSink(out_parquet, SCORES_SCHEMA, meta) as sink:
        for index in range(count):
            row = 0
            for batch in pq.ParquetFile(by_index[index]).iter_batches(batch_size=8192):
                table = pa.Table.from_batches([batch])
                check_finite_scores(table, by_index[index], row)
                row += table.num_rows
                summary.add(table)
                sink.write(table)
    stats = {
        "teacher": first["teacher"]["name"],
        "score_kind": first["score_kind"],
        "shards": count,
        **summary.as_dict(),
    }
    if stats_json is not None:
        write_json_atomic(stats_json, stats)
    return stats


class _ScoreSummary:
    """Samples, pairs and score quantiles (from a bounded reservoir) of a scores file."""

    def __init__(self, keep: int = 100_000):
        self.samples = self.negatives = self.at_or_above_pos = 0
        self.keep = keep
        self.pos: list[np.ndarray] = []
        self.neg: list[np.ndarray] = []

    def add(self, table: pa.Table) -> None:
        pos = table.column("pos_score").to_numpy()
        lists = table.column("neg_scores").combine_chunks()
        neg = lists.flatten().to_numpy()
        lengths = pc.list_value_length(lists).to_numpy()
        self.samples += table.num_rows
        self.negatives += neg.size
        self.at_or_above_pos += int((neg >= np.repeat(pos, lengths)).sum())
        if sum(a.size for a in self.pos) < self.keep:
            self.pos.append(pos)
        if sum(a.size for a in self.neg) < self.keep:
            self.neg.append(neg)

    def as_dict(self) -> dict[str, Any]:
        def quantiles(parts):
            values = np.concatenate(parts) if parts else np.zeros(0)
            if not values.size:
                return None
            qs = np.quantile(values.astype(np.float64), [0.0, 0.25, 0.5, 0.75, 1.0])
            return dict(zip(["min", "q25", "median", "q75", "max"], map(float, qs), strict=True))

        return {
            "samples": self.samples,
            "negatives": self.negatives,
            "pairs": self.samples + self.negatives,
            "negatives_at_or_above_positive": self.at_or_above_pos,
            "pos_score_quantiles": quantiles(self.pos),
            "neg_score_quantiles": quantiles(self.neg),
        }


def score_samples(
    samples_parquet: str | os.PathLike,
    teacher: Teacher | TeacherSpec,
    corpus_parquet: str | os.PathLike,
    queries_parquet: str | os.PathLike,
    out_parquet: str | os.PathLike,
    stats_json: str | os.PathLike | None = None,
    chunk_samples: int = DEFAULT_CHUNK_SAMPLES,
    device: str | None = None,
) -> dict[str, Any]:
    """Unsharded scoring: one shard (0 of 1), merged into ``out_parquet``."""
    out = Path(out_parquet)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as tmp:
        shard = Path(tmp) / "shard-0-of-1.parquet"
        score_shard(
            samples_parquet,
            0,
            1,
            teacher,
            corpus_parquet,
            queries_parquet,
            shard,
            chunk_samples=chunk_samples,
            device=device,
        )
        stats = merge_shards([shard], out, stats_json)
        with contextlib.suppress(FileNotFoundError):
            shard.unlink()
    return stats
