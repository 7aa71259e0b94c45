"""Dataset registry: every configured dataset is read through ir_datasets.

A dataset in the config is either an ``ir_datasets`` id (the real loading path, e.g.
``beir/scifact/test`` or ``msmarco-passage/trec-dl-2019/judged``) or a local folder in BEIR's
layout (``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``, optional ``runs/*.trec``).
Local folders are registered with ir_datasets under ``irflow-local/<name>`` by the classes below,
which validate every line and name the file and line of any fault.

The normalised artifacts the workflow works from are written by :func:`write_corpus`,
:func:`write_topics` and :func:`write_candidates`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq

from irflow.io import (
    InputError,
    atomic_output,
    check_id,
    open_parquet,
    read_qrels,
    read_trec_run,
    sha256_file,
    whitespace_problem,
    write_json_atomic,
    write_trec_qrels,
    write_trec_run,
)

CORPUS_SCHEMA = pa.schema([("doc_id", pa.string()), ("title", pa.string()), ("text", pa.string())])
QUERIES_SCHEMA = pa.schema([("query_id", pa.string()), ("text", pa.string())])


class LocalDoc(NamedTuple):
    doc_id: str
    text: str
    title: str

    def default_text(self) -> str:
        return f"{self.title} {self.text}".strip()


class LocalQuery(NamedTuple):
    query_id: str
    text: str

    def default_text(self) -> str:
        return self.text


def _check_ids(source: DatasetSource, part: str, number: int, **ids: str) -> None:
    """Refuse an empty id or one with whitespace in record ``number`` of ``part``; the
    location is only spelled out for a bad id (corpora have millions of records)."""
    for what, value in ids.items():
        if not isinstance(value, str) or whitespace_problem(value):
            check_id(value, what.replace("_", " "), source.record(part, number))


def _jsonl_records(path: Path, required: tuple[str, ...], id_what: str) -> Iterator[dict[str, Any]]:
    """The JSON objects of a JSONL file, each with its string fields ``required``; the ``_id``
    must be a usable id (non-empty, no whitespace). Errors name the file and line."""
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise InputError(f"{path}:{number}: not valid UTF-8 ({err.reason})") from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise InputError(f"{path}:{number}: invalid JSON ({err.msg})") from None
            if not isinstance(record, dict):
                raise InputError(f"{path}:{number}: expected a JSON object")
            for key in required:
                if not isinstance(record.get(key), str):
                    raise InputError(f"{path}:{number}: field {key!r} missing or not a string")
            if record.get("title") is not None and not isinstance(record["title"], str):
                raise InputError(f"{path}:{number}: field 'title' is not a string")
            check_id(record["_id"], id_what, f"{path}:{number}")
            yield record


def _local_classes():
    # ir_datasets is imported lazily: importing it is slow and the workflow's DAG code
    # must not pay for it.
    import ir_datasets
    from ir_datasets.formats import BaseDocs, BaseQrels, BaseQueries, BaseScoredDocs
    from ir_datasets.formats.base import GenericScoredDoc
    from ir_datasets.formats.trec import TrecQrel

    class LocalBeirDocs(BaseDocs):
        def __init__(self, path: Path):
            self._path = path

        def docs_iter(self):
            for record in _jsonl_records(self._path, ("_id", "text"), "document id"):
                yield LocalDoc(record["_id"], record["text"], record.get("title") or "")

        def docs_cls(self):
            return LocalDoc

        def docs_count(self):
            return None

        def docs_namespace(self):
            return str(self._path)

        def docs_lang(self):
            return "en"

    class LocalBeirQueries(BaseQueries):
        def __init__(self, path: Path):
            self._path = path

        def queries_iter(self):
            for record in _jsonl_records(self._path, ("_id", "text"), "query id"):
                yield LocalQuery(record["_id"], record["text"])

        def queries_cls(self):
            return LocalQuery

        def queries_namespace(self):
            return str(self._path)

        def queries_lang(self):
            return "en"

    class LocalQrels(BaseQrels):
        def __init__(self, path: Path):
            self._path = path

        def qrels_iter(self):
            for qid, docs in read_qrels(self._path).items():
                for docid, label in docs.items():
                    yield TrecQrel(qid, docid, label, "0")

        def qrels_cls(self):
            return TrecQrel

        def qrels_defs(self):
            return {}

    class LocalScoredDocs(BaseScoredDocs):
        def __init__(self, path: Path):
            self._path = path

        def scoreddocs_iter(self):
            for row in read_trec_run(self._path):
                yield GenericScoredDoc(row.query_id, row.doc_id, row.score)

        def scoreddocs_cls(self):
            return GenericScoredDoc

    return ir_datasets, LocalBeirDocs, LocalBeirQueries, LocalQrels, LocalScoredDocs


@dataclass(frozen=True)
class DatasetSource:
    """Where one configured dataset comes from (one ``datasets:`` entry of the config)."""

    name: str
    ir_datasets_id: str | None = None
    beir_folder: str | None = None
    split: str = "test"
    candidates: str | None = None  # path inside a BEIR folder, e.g. runs/bm25.trec

    @classmethod
    def from_config(cls, name: str, entry: dict[str, Any]) -> DatasetSource:
        return cls(
            name=name,
            ir_datasets_id=entry.get("ir_datasets"),
            beir_folder=entry.get("beir_folder"),
            split=entry.get("split", "test"),
            candidates=entry.get("candidates"),
        )

    def describe(self) -> dict[str, Any]:
        if self.ir_datasets_id:
            return {"ir_datasets": self.ir_datasets_id}
        return {"beir_folder": self.beir_folder, "split": self.split, "candidates": self.candidates}

    def load(self):
        """Return the ir_datasets dataset object for this source."""
        ir_datasets, docs_cls, queries_cls, qrels_cls, scored_cls = _local_classes()
        if self.ir_datasets_id:
            return ir_datasets.load(self.ir_datasets_id)
        folder = Path(self.beir_folder)
        if not folder.is_dir():
            raise InputError(
                f"dataset {self.name!r}: folder {folder} does not exist. Point "
                f"'datasets: {self.name}: beir_folder' in the config at a BEIR-layout folder "
                f"(corpus.jsonl, queries.jsonl, qrels/{self.split}.tsv), or use "
                f"'ir_datasets: <id>' instead."
            )
        parts = [
            docs_cls(folder / "corpus.jsonl"),
            queries_cls(folder / "queries.jsonl"),
            qrels_cls(folder / "qrels" / f"{self.split}.tsv"),
        ]
        if self.candidates:
            parts.append(scored_cls(folder / self.candidates))
        from ir_datasets.datasets.base import Dataset

        # The id is keyed by everything that defines the source, so registering the same
        # name twice in one process (tests do) never aliases two different folders.
        key = hashlib.sha256(json.dumps(self.describe(), sort_keys=True).encode()).hexdigest()[:12]
        registry_id = f"irflow-local/{self.name}/{key}"
        if registry_id not in list(ir_datasets.registry):
            ir_datasets.registry.register(registry_id, Dataset(*parts))
        return ir_datasets.load(registry_id)

    def where(self, part: str) -> str:
        """For messages: the local file of ``part`` (corpus, queries, candidates) or the
        ir_datasets id."""
        if not self.beir_folder:
            return f"ir_datasets {self.ir_datasets_id!r}"
        if part == "candidates":
            return str(Path(self.beir_folder) / (self.candidates or ""))
        return str(Path(self.beir_folder) / f"{part}.jsonl")

    def record(self, part: str, number: int) -> str:
        """For messages: record ``number`` (1-based) of ``part`` (corpus, queries, qrels,
        candidates), in the local file or the ir_datasets dataset."""
        if not self.beir_folder:
            where = f"ir_datasets {self.ir_datasets_id!r}"
        elif part == "qrels":
            where = str(Path(self.beir_folder) / "qrels" / f"{self.split}.tsv")
        else:
            where = self.where(part)
        return f"dataset {self.name!r} ({where}) {part} record #{number}"

    def source_files(self) -> list[Path]:
        """Local files this source reads (for checksums); empty for ir_datasets ids."""
        if not self.beir_folder:
            return []
        folder = Path(self.beir_folder)
        files = [
            folder / "corpus.jsonl",
            folder / "queries.jsonl",
            folder / "qrels" / f"{self.split}.tsv",
        ]
        if self.candidates:
            files.append(folder / self.candidates)
        return files


def _doc_fields(doc) -> tuple[str, str]:
    title = getattr(doc, "title", "") or ""
    text = getattr(doc, "text", None)
    if text is None:
        text = doc.default_text()
    return title, text


def write_corpus(source: DatasetSource, out_parquet: str, manifest_path: str, batch: int = 50_000):
    """Stream the corpus into Parquet (doc_id, title, text); refuse duplicate or empty ids and
    ids containing whitespace."""
    dataset = source.load()
    if not dataset.has_docs():
        raise InputError(f"dataset {source.name!r}: its source has no documents")
    seen: set[str] = set()
    digest = hashlib.sha256()
    count = 0
    with atomic_output(out_parquet) as tmp:
        writer = pq.ParquetWriter(tmp, CORPUS_SCHEMA, compression="zstd")
        try:
            columns: dict[str, list[str]] = {"doc_id": [], "title": [], "text": []}
            for doc in dataset.docs_iter():
                _check_ids(source, "corpus", count + 1, document_id=doc.doc_id)
                if doc.doc_id in seen:
                    raise InputError(
                        f"dataset {source.name!r}: duplicate document id {doc.doc_id!r} "
                        f"(document #{count + 1} of {source.where('corpus')})"
                    )
                seen.add(doc.doc_id)
                title, text = _doc_fields(doc)
                columns["doc_id"].append(doc.doc_id)
                columns["title"].append(title)
                columns["text"].append(text)
                digest.update(f"{doc.doc_id}\t{title}\t{text}\n".encode())
                count += 1
                if len(columns["doc_id"]) >= batch:
                    writer.write_table(pa.table(columns, schema=CORPUS_SCHEMA))
                    columns = {key: [] for key in columns}
            if columns["doc_id"]:
                writer.write_table(pa.table(columns, schema=CORPUS_SCHEMA))
        finally:
            writer.close()
    if count == 0:
        Path(out_parquet).unlink()
        raise InputError(f"dataset {source.name!r}: the corpus is empty ({source.where('corpus')})")
    write_json_atomic(
        manifest_path,
        {
            "source": source.describe(),
            "source_sha256": {str(p): sha256_file(p) for p in source.source_files()[:1]},
            "documents": count,
            "content_sha256": digest.hexdigest(),
            "corpus_parquet_sha256": sha256_file(out_parquet),
        },
    )


def write_topics(
    source: DatasetSource, queries_out: str, qrels_out: str, manifest_path: str
) -> None:
    """Write the judged queries (Parquet) and qrels (TREC) of one dataset split.

    Every query and judgement id is checked (non-empty, no whitespace), judged or not. Only
    queries with judgements are kept (as BEIR and ir_datasets do for a split); a judged
    query without text is an error naming the query.
    """
    dataset = source.load()
    qrels: dict[str, dict[str, int]] = {}
    for number, qrel in enumerate(dataset.qrels_iter(), start=1):
        _check_ids(source, "qrels", number, query_id=qrel.query_id, document_id=qrel.doc_id)
        qrels.setdefault(qrel.query_id, {})[qrel.doc_id] = int(qrel.relevance)
    if not qrels:
        raise InputError(f"dataset {source.name!r}: no relevance judgements")
    texts: dict[str, str] = {}
    for number, query in enumerate(dataset.queries_iter(), start=1):
        _check_ids(source, "queries", number, query_id=query.query_id)
        text = getattr(query, "text", None)
        if text is None:
            text = query.default_text()
        if query.query_id in qrels:
            if query.query_id in texts:
                raise InputError(
                    f"dataset {source.name!r}: duplicate query id {query.query_id!r} "
                    f"(query #{number} of {source.where('queries')})"
                )
            texts[query.query_id] = text
    missing = sorted(set(qrels) - set(texts))
    if missing:
        raise InputError(
            f"dataset {source.name!r}: {len(missing)} judged queries have no text in "
            f"{source.where('queries')}, e.g. {missing[:5]}"
        )
    empty = sorted(qid for qid, text in texts.items() if not text.strip())
    if empty:
        raise InputError(f"dataset {source.name!r}: judged queries with empty text: {empty[:5]}")
    ids = sorted(texts)
    with atomic_output(queries_out) as tmp:
        pq.write_table(
            pa.table({"query_id": ids, "text": [texts[q] for q in ids]}, schema=QUERIES_SCHEMA), tmp
        )
    write_trec_qrels(qrels_out, qrels)
    labels: dict[str, int] = {}
    for docs in qrels.values():
        for label in docs.values():
            labels[str(label)] = labels.get(str(label), 0) + 1
    write_json_atomic(
        manifest_path,
        {
            "source": source.describe(),
            "source_sha256": {str(p): sha256_file(p) for p in source.source_files()[1:3]},
            "queries": len(ids),
            "judgements": sum(len(d) for d in qrels.values()),
            "label_counts": labels,
            "queries_parquet_sha256": sha256_file(queries_out),
            "qrels_sha256": sha256_file(qrels_out),
        },
    )


def write_candidates(source: DatasetSource, out_run: str, depth: int | None = None) -> None:
    """Copy the dataset's own first-stage run (ir_datasets scoreddocs) into a TREC run file."""
    dataset = source.load()
    if not dataset.has_scoreddocs():
        raise InputError(
            f"dataset {source.name!r} has no given candidates: set 'candidates:' for a BEIR folder "
            f"or use an ir_datasets id with scoreddocs"
        )
    run: dict[str, dict[str, float]] = {}
    for number, row in enumerate(dataset.scoreddocs_iter(), start=1):
        _check_ids(source, "candidates", number, query_id=row.query_id, document_id=row.doc_id)
        run.setdefault(row.query_id, {})[row.doc_id] = float(row.score)
    if not run:
        raise InputError(
            f"dataset {source.name!r}: the candidate run is empty ({source.where('candidates')})"
        )
    write_trec_run(out_run, run, tag="given", depth=depth)


def read_corpus(path: str, columns: list[str] | None = None):
    return open_parquet(path).read(columns=columns)


def read_queries(path: str) -> dict[str, str]:
    table = open_parquet(path).read()
    return dict(
        zip(table.column("query_id").to_pylist(), table.column("text").to_pylist(), strict=True)
    )


def doc_texts(corpus_table) -> list[str]:
    """The text a model sees for each document: title and body joined as BEIR does."""
    titles = corpus_table.column("title").to_pylist()
    texts = corpus_table.column("text").to_pylist()
    return [f"{t} {x}".strip() if t else x for t, x in zip(titles, texts, strict=True)]


def candidate_texts(
    corpus_parquet: str, candidates: dict[str, dict[str, float]], depth: int
) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Each query's top-``depth`` candidate ids (trec_eval order) and the text of every one."""
    from irflow.io import ranked

    top = {qid: [d for d, _ in ranked(docs)[:depth]] for qid, docs in candidates.items()}
    needed = sorted({d for docs in top.values() for d in docs})
    table = read_corpus(corpus_parquet)
    position = {d: i for i, d in enumerate(table.column("doc_id").to_pylist())}
    absent = [d for d in needed if d not in position]
    if absent:
        raise InputError(
            f"{len(absent)} candidate documents are not in the corpus {corpus_parquet}, "
            f"e.g. {absent[:5]}"
        )
    import numpy as np

    subset = table.take(np.array([position[d] for d in needed], dtype=np.int64))
    return top, dict(zip(needed, doc_texts(subset), strict=True))
