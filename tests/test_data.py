"""Local BEIR folders read through ir_datasets, and the normalised artifacts written from them."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from irflow.data import (
    CORPUS_SCHEMA,
    QUERIES_SCHEMA,
    DatasetSource,
    doc_texts,
    read_corpus,
    read_queries,
    write_candidates,
    write_corpus,
    write_topics,
)
from irflow.io import InputError, read_qrels, read_run_dict, sha256_file

CORPUS = [
    {"_id": "d1", "title": "Title one", "text": "first text"},
    {"_id": "d2", "text": "second text"},  # no title
    {"_id": "d10", "title": None, "text": "tenth text", "metadata": {"x": 1}},
    {"_id": "d9", "title": "Ünïcode", "text": "naïve café"},
]
QUERIES = [
    {"_id": "q1", "text": "what is one"},
    {"_id": "q2", "text": "unjudged query"},  # no qrels: dropped
    {"_id": "q3", "text": "third query"},
]
QRELS_TSV = "query-id\tcorpus-id\tscore\nq1\td1\t2\nq1\td2\t0\nq3\td10\t1\nq3\td9\t2\n"
RUN_TREC = "q1 Q0 d1 1 3.5 bm25\nq1 Q0 d2 2 1.25 bm25\nq3 Q0 d10 1 2 bm25\nq3 Q0 d9 2 2 bm25\n"


def _jsonl(records) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def make_beir(root: Path, corpus=None, queries=None, qrels=None, run=None, split="test") -> Path:
    """Write a BEIR-layout folder; each part is a list of records or raw text."""
    root.mkdir(parents=True)
    (root / "qrels").mkdir()
    (root / "runs").mkdir()
    for name, part, default in (
        ("corpus.jsonl", corpus, CORPUS),
        ("queries.jsonl", queries, QUERIES),
    ):
        part = default if part is None else part
        data = part if isinstance(part, str | bytes) else _jsonl(part)
        (root / name).write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    (root / "qrels" / f"{split}.tsv").write_text(QRELS_TSV if qrels is None else qrels)
    (root / "runs" / "bm25.trec").write_text(RUN_TREC if run is None else run)
    return root


def source(folder: Path, **kwargs) -> DatasetSource:
    return DatasetSource(name=kwargs.pop("name", "tiny"), beir_folder=str(folder), **kwargs)


def outputs(out: Path) -> dict[str, str]:
    return {
        "corpus": str(out / "corpus.parquet"),
        "corpus_manifest": str(out / "corpus.json"),
        "queries": str(out / "queries.parquet"),
        "qrels": str(out / "qrels.txt"),
        "topics_manifest": str(out / "topics.json"),
        "run": str(out / "candidates.trec"),
    }


def assert_empty(out: Path):
    """No output and no temporary file left behind."""
    assert not out.exists() or sorted(os.listdir(out)) == []


# --------------------------------------------------------------------------------------------
# Loading through ir_datasets
# --------------------------------------------------------------------------------------------
def test_load_through_ir_datasets(tmp_path):
    folder = make_beir(tmp_path / "beir")
    dataset = source(folder, candidates="runs/bm25.trec").load()
    assert dataset.has_docs() and dataset.has_queries() and dataset.has_qrels()
    assert dataset.has_scoreddocs()
    docs = list(dataset.docs_iter())
    assert [(d.doc_id, d.title, d.text) for d in docs] == [
        ("d1", "Title one", "first text"),
        ("d2", "", "second text"),
        ("d10", "", "tenth text"),
        ("d9", "Ünïcode", "naïve café"),
    ]
    assert docs[0].default_text() == "Title one first text"
    assert [(q.query_id, q.text) for q in dataset.queries_iter()] == [
        ("q1", "what is one"),
        ("q2", "unjudged query"),
        ("q3", "third query"),
    ]
    assert sorted((q.query_id, q.doc_id, q.relevance) for q in dataset.qrels_iter()) == [
        ("q1", "d1", 2),
        ("q1", "d2", 0),
        ("q3", "d10", 1),
        ("q3", "d9", 2),
    ]
    assert [(s.query_id, s.doc_id, s.score) for s in dataset.scoreddocs_iter()] == [
        ("q1", "d1", 3.5),
        ("q1", "d2", 1.25),
        ("q3", "d10", 2.0),
        ("q3", "d9", 2.0),
    ]


def test_load_without_candidates_has_no_scoreddocs(tmp_path):
    dataset = source(make_beir(tmp_path / "beir")).load()
    assert not dataset.has_scoreddocs()


def test_same_name_different_folders_do_not_alias(tmp_path):
    a = make_beir(tmp_path / "a", corpus=[{"_id": "A", "text": "a"}])
    b = make_beir(tmp_path / "b", corpus=[{"_id": "B", "text": "b"}])
    assert [d.doc_id for d in source(a, name="same").load().docs_iter()] == ["A"]
    assert [d.doc_id for d in source(b, name="same").load().docs_iter()] == ["B"]
    assert [d.doc_id for d in source(a, name="same").load().docs_iter()] == ["A"]


def test_other_split(tmp_path):
    folder = make_beir(tmp_path / "beir", split="dev", qrels="q3\td9\t1\n")
    dataset = source(folder, split="dev").load()
    assert [(q.query_id, q.doc_id, q.relevance) for q in dataset.qrels_iter()] == [("q3", "d9", 1)]


def test_from_config_and_describe(tmp_path):
    entry = {"beir_folder": "x/y", "split": "dev", "candidates": "runs/r.trec", "rel_level": 2}
    src = DatasetSource.from_config("n", entry)
    assert src == DatasetSource("n", None, "x/y", "dev", "runs/r.trec")
    assert src.describe() == {"beir_folder": "x/y", "split": "dev", "candidates": "runs/r.trec"}
    assert src.source_files() == [
        Path("x/y/corpus.jsonl"),
        Path("x/y/queries.jsonl"),
        Path("x/y/qrels/dev.tsv"),
        Path("x/y/runs/r.trec"),
    ]
    ird = DatasetSource.from_config("m", {"ir_datasets": "beir/scifact/test"})
    assert ird.split == "test" and ird.describe() == {"ir_datasets": "beir/scifact/test"}
    assert ird.source_files() == []


# --------------------------------------------------------------------------------------------
# write_corpus / write_topics / write_candidates: content and manifests
# --------------------------------------------------------------------------------------------
def test_write_corpus(tmp_path):
    folder = make_beir(tmp_path / "beir")
    out = tmp_path / "out"
    o = outputs(out)
    src = source(folder)
    write_corpus(src, o["corpus"], o["corpus_manifest"])
    table = pq.read_table(o["corpus"])
    assert table.schema.equals(CORPUS_SCHEMA)
    rows = table.to_pylist()
    assert rows == [
        {"doc_id": "d1", "title": "Title one", "text": "first text"},
        {"doc_id": "d2", "title": "", "text": "second text"},
        {"doc_id": "d10", "title": "", "text": "tenth text"},
        {"doc_id": "d9", "title": "Ünïcode", "text": "naïve café"},
    ]
    assert read_corpus(o["corpus"], columns=["doc_id"]).column_names == ["doc_id"]
    assert doc_texts(table) == [
        "Title one first text",
        "second text",
        "tenth text",
        "Ünïcode naïve café",
    ]
    manifest = json.loads(Path(o["corpus_manifest"]).read_text())
    digest = hashlib.sha256()
    for r in rows:
        digest.update(f"{r['doc_id']}\t{r['title']}\t{r['text']}\n".encode())
    assert manifest == {
        "source": {"beir_folder": str(folder), "split": "test", "candidates": None},
        "source_sha256": {str(folder / "corpus.jsonl"): sha256_file(folder / "corpus.jsonl")},
        "documents": 4,
        "content_sha256": digest.hexdigest(),
        "corpus_parquet_sha256": sha256_file(o["corpus"]),
    }
    assert sorted(os.listdir(out)) == ["corpus.json", "corpus.parquet"]


def test_write_corpus_in_several_batches(tmp_path):
    corpus = [{"_id": f"d{i}", "text": f"text {i}"} for i in range(7)]
    folder = make_beir(tmp_path / "beir", corpus=corpus)
    o = outputs(tmp_path / "out")
    write_corpus(source(folder), o["corpus"], o["corpus_manifest"], batch=3)
    table = pq.read_table(o["corpus"])
    assert table.column("doc_id").to_pylist() == [f"d{i}" for i in range(7)]
    assert json.loads(Path(o["corpus_manifest"]).read_text())["documents"] == 7


def test_write_topics(tmp_path):
    folder = make_beir(tmp_path / "beir")
    out = tmp_path / "out"
    o = outputs(out)
    write_topics(source(folder), o["queries"], o["qrels"], o["topics_manifest"])
    table = pq.read_table(o["queries"])
    assert table.schema.equals(QUERIES_SCHEMA)
    # only judged queries, sorted by id
    assert read_queries(o["queries"]) == {"q1": "what is one", "q3": "third query"}
    assert table.column("query_id").to_pylist() == ["q1", "q3"]
    assert Path(o["qrels"]).read_text() == "q1 0 d1 2\nq1 0 d2 0\nq3 0 d10 1\nq3 0 d9 2\n"
    assert read_qrels(o["qrels"]) == read_qrels(folder / "qrels" / "test.tsv")
    manifest = json.loads(Path(o["topics_manifest"]).read_text())
    assert manifest == {
        "source": {"beir_folder": str(folder), "split": "test", "candidates": None},
        "source_sha256": {
            str(folder / "queries.jsonl"): sha256_file(folder / "queries.jsonl"),
            str(folder / "qrels" / "test.tsv"): sha256_file(folder / "qrels" / "test.tsv"),
        },
        "queries": 2,
        "judgements": 4,
        "label_counts": {"0": 1, "1": 1, "2": 2},
        "queries_parquet_sha256": sha256_file(o["queries"]),
        "qrels_sha256": sha256_file(o["qrels"]),
    }
    assert sorted(os.listdir(out)) == ["qrels.txt", "queries.parquet", "topics.json"]


def test_write_candidates(tmp_path):
    folder = make_beir(tmp_path / "beir")
    out = tmp_path / "out"
    o = outputs(out)
    write_candidates(source(folder, candidates="runs/bm25.trec"), o["run"])
    # d10 and d9 tie at 2 for q3: 'd9' > 'd10', so d9 is rank 1 (the input said d10 first).
    assert Path(o["run"]).read_text() == (
        "q1 Q0 d1 1 3.5 given\nq1 Q0 d2 2 1.25 given\nq3 Q0 d9 1 2.0 given\nq3 Q0 d10 2 2.0 given\n"
    )
    assert read_run_dict(o["run"]) == read_run_dict(folder / "runs" / "bm25.trec")
    write_candidates(source(folder, candidates="runs/bm25.trec"), o["run"], depth=1)
    assert Path(o["run"]).read_text() == "q1 Q0 d1 1 3.5 given\nq3 Q0 d9 1 2.0 given\n"
    assert sorted(os.listdir(out)) == ["candidates.trec"]


# --------------------------------------------------------------------------------------------
# Errors: message content, and nothing (not even a temp file) left in the output directory.
# --------------------------------------------------------------------------------------------
def _all_writers(src, o):
    return {
        "corpus": lambda: write_corpus(src, o["corpus"], o["corpus_manifest"]),
        "topics": lambda: write_topics(src, o["queries"], o["qrels"], o["topics_manifest"]),
        "candidates": lambda: write_candidates(src, o["run"]),
    }


@pytest.mark.parametrize("writer", ["corpus", "topics", "candidates"])
def test_missing_folder(tmp_path, writer):
    out = tmp_path / "out"
    src = source(tmp_path / "does-not-exist", name="mydata", candidates="runs/bm25.trec")
    with pytest.raises(InputError) as info:
        _all_writers(src, outputs(out))[writer]()
    message = str(info.value)
    assert "'datasets: mydata: beir_folder'" in message
    assert str(tmp_path / "does-not-exist") in message
    assert_empty(out)


@pytest.mark.parametrize(
    ("bad_line", "fragment"),
    [
        ('{"_id": "d3", "text": ', "invalid JSON"),
        ('["d3", "text"]', "expected a JSON object"),
        ('{"_id": 3, "text": "x"}', "field '_id' missing or not a string"),
        ('{"_id": "d3"}', "field 'text' missing or not a string"),
        ('{"_id": "d3", "text": null}', "field 'text' missing or not a string"),
    ],
)
def test_malformed_corpus_line(tmp_path, bad_line, fragment):
    corpus = _jsonl(CORPUS[:2]) + "\n" + bad_line + "\n" + _jsonl(CORPUS[2:])
    folder = make_beir(tmp_path / "beir", corpus=corpus)
    out = tmp_path / "out"
    o = outputs(out)
    with pytest.raises(InputError) as info:
        write_corpus(source(folder), o["corpus"], o["corpus_manifest"])
    # line 3 is blank; the bad line is line 4
    assert str(info.value).startswith(f"{folder / 'corpus.jsonl'}:4: ")
    assert fragment in str(info.value)
    assert_empty(out)


def test_bad_utf8_corpus_line(tmp_path):
    corpus = _jsonl(CORPUS[:1]).encode() + b'{"_id": "d2", "text": "caf\xe9"}\n'
    folder = make_beir(tmp_path / "beir", corpus=corpus)
    out = tmp_path / "out"
    o = outputs(out)
    with pytest.raises(InputError, match="not valid UTF-8") as info:
        write_corpus(source(folder), o["corpus"], o["corpus_manifest"])
    assert str(info.value).startswith(f"{folder / 'corpus.jsonl'}:2: ")
    assert_empty(out)


def test_non_string_title_names_line(tmp_path):
    folder = make_beir(tmp_path / "beir", corpus=[{"_id": "d1", "title": 5, "text": "x"}])
    o = outputs(tmp_path / "out")
    with pytest.raises(InputError) as info:
        write_corpus(source(folder), o["corpus"], o["corpus_manifest"])
    assert str(info.value).startswith(f"{folder / 'corpus.jsonl'}:1: ")


def test_non_string_title_leaves_nothing(tmp_path):
    folder = make_beir(tmp_path / "beir", corpus=[{"_id": "d1", "title": 5, "text": "x"}])
    out = tmp_path / "out"
    o = outputs(out)
    with pytest.raises(Exception):  # noqa: B017 - the type is the bug above; cleanup is not
        write_corpus(source(folder), o["corpus"], o["corpus_manifest"])
    assert_empty(out)


def test_malformed_queries_line(tmp_path):
    queries = _jsonl(QUERIES[:2]) + '{"_id": "q3", "text": "x"\n'
    folder = make_beir(tmp_path / "beir", queries=queries)
    out = tmp_path / "out"
    o = outputs(out)
    with pytest.raises(InputError) as info:
        write_topics(source(folder), o["queries"], o["qrels"], o["topics_manifest"])
    assert str(info.value).startswith(f"{folder / 'queries.jsonl'}:3: invalid JSON")
    assert_empty(out)


def test_duplicate_doc_id(tmp_path):
    # The duplicate comes after a full batch has been written, to test cleanup mid-stream.
    corpus = [{"_id": f"d{i}", "text": "t"} for i in range(5)] + [{"_id": "d2", "text": "again"}]
    folder = make_beir(tmp_path / "beir", corpus=corpus)
    out = tmp_path / "out"
    o = outputs(out)
    with pytest.raises(InputError, match="dataset 'tiny': duplicate document id 'd2'"):
        write_corpus(source(folder), o["corpus"], o["corpus_manifest"], batch=2)
    assert_empty(out)


def test_empty_doc_id(tmp_path):
    corpus = [{"_id": "d1", "text": "a"}, {"_id": "", "text": "b"}]
    folder = make_beir(tmp_path / "beir", corpus=corpus)
    out = tmp_path / "out"
    o = outputs(out)
    with pytest.raises(InputError) as info:
        write_corpus(source(folder), o["corpus"], o["corpus_manifest"])
    assert str(info.value).startswith(f"{folder / 'corpus.jsonl'}:2: document id '' is empty")
    assert_empty(out)


# ---------------------------------------------------------------------------------------------
# Ids with whitespace are refused at preparation, naming the file and line (or the record)
# ---------------------------------------------------------------------------------------------
SPACES = [" ", "\t", "\n", "\r", "\u00a0", "\u2003"]


@pytest.mark.parametrize("space", SPACES)
def test_doc_id_with_whitespace_names_file_and_line(tmp_path, space):
    # After a full batch, so the refusal also cleans up mid-stream.
    corpus = [*CORPUS, {"_id": f"doc{space}7", "text": "spaced"}]
    folder = make_beir(tmp_path / "beir", corpus=corpus)
    out = tmp_path / "out"
    o = outputs(out)
    with pytest.raises(InputError) as info:
        write_corpus(source(folder), o["corpus"], o["corpus_manifest"], batch=2)
    assert str(info.value).startswith(
        f"{folder / 'corpus.jsonl'}:5: document id {f'doc{space}7'!r} contains whitespace"
    )
    assert_empty(out)


@pytest.mark.parametrize("space", SPACES)
def test_query_id_with_whitespace_names_file_and_line(tmp_path, space):
    # An unjudged query is refused too: every id is checked, not only the kept ones.
    queries = [*QUERIES[:2], {"_id": f"q{space}9", "text": "unjudged"}, QUERIES[2]]
    folder = make_beir(tmp_path / "beir", queries=queries)
    out = tmp_path / "out"
    o = outputs(out)
    with pytest.raises(InputError) as info:
        write_topics(source(folder), o["queries"], o["qrels"], o["topics_manifest"])
    assert str(info.value).startswith(
        f"{folder / 'queries.jsonl'}:3: query id {f'q{space}9'!r} contains whitespace"
    )
    assert_empty(out)


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ("q3\td 11\t1", "document id 'd 11' contains whitespace"),
        ("q 3\td11\t1", "query id 'q 3' contains whitespace"),
        ("q3\td11\u00a0\t1", "document id 'd11\\xa0' contains whitespace"),
    ],
)
def test_qrels_id_with_whitespace_names_file_and_line(tmp_path, line, fragment):
    folder = make_beir(tmp_path / "beir", qrels=QRELS_TSV + line + "\n")
    out = tmp_path / "out"
    o = outputs(out)
    with pytest.raises(InputError) as info:
        write_topics(source(folder), o["queries"], o["qrels"], o["topics_manifest"])
    assert str(info.value).startswith(f"{folder / 'qrels' / 'test.tsv'}:6: {fragment}")
    assert_empty(out)


def test_candidate_with_spaced_doc_id_names_file_and_line(tmp_path):
    folder = make_beir(tmp_path / "beir", run=RUN_TREC + "q3 Q0 d 8 3 1.0 bm25\n")
    out = tmp_path / "out"
    with pytest.raises(InputError) as info:
        write_candidates(source(folder, candidates="runs/bm25.trec"), outputs(out)["run"])
    assert str(info.value).startswith(f"{folder / 'runs' / 'bm25.trec'}:5: expected 6 columns")
    assert_empty(out)


def _register_ir_dataset(dataset_id: str, docs=(), queries=(), qrels=(), scored=()):
    """Register an in-memory ir_datasets dataset under ``dataset_id`` (records as tuples)."""
    import ir_datasets
    from ir_datasets.datasets.base import Dataset
    from ir_datasets.formats import BaseDocs, BaseQrels, BaseQueries, BaseScoredDocs
    from ir_datasets.formats.base import GenericDoc, GenericQuery, GenericScoredDoc
    from ir_datasets.formats.trec import TrecQrel

    class Docs(BaseDocs):
        def docs_iter(self):
            return (GenericDoc(*d) for d in docs)

        def docs_cls(self):
            return GenericDoc

    class Queries(BaseQueries):
        def queries_iter(self):
            return (GenericQuery(*q) for q in queries)

        def queries_cls(self):
            return GenericQuery

    class Qrels(BaseQrels):
        def qrels_iter(self):
            return (TrecQrel(q, d, label, "0") for q, d, label in qrels)

        def qrels_cls(self):
            return TrecQrel

        def qrels_defs(self):
            return {}

    class Scored(BaseScoredDocs):
        def scoreddocs_iter(self):
            return (GenericScoredDoc(*row) for row in scored)

        def scoreddocs_cls(self):
            return GenericScoredDoc

    if dataset_id not in list(ir_datasets.registry):
        ir_datasets.registry.register(dataset_id, Dataset(Docs(), Queries(), Qrels(), Scored()))
    return DatasetSource(name="spaced", ir_datasets_id=dataset_id)


GOOD_DOCS = [("d1", "one"), ("d2", "two")]
GOOD_QUERIES = [("q1", "what"), ("q2", "who")]
GOOD_QRELS = [("q1", "d1", 1), ("q2", "d2", 0)]
GOOD_SCORED = [("q1", "d1", 2.0), ("q1", "d2", 1.0)]


@pytest.mark.parametrize(
    ("part", "records", "fragment"),
    [
        ("docs", [*GOOD_DOCS, ("d 3", "three")], "corpus record #3: document id 'd 3'"),
        ("queries", [("q\t0", "x"), *GOOD_QUERIES], "queries record #1: query id 'q\\t0'"),
        ("qrels", [*GOOD_QRELS, ("q1", "d\n2", 0)], "qrels record #3: document id 'd\\n2'"),
        ("qrels", [("q 1", "d1", 0), *GOOD_QRELS], "qrels record #1: query id 'q 1'"),
        ("scored", [("q1", "d 9", 0.5)], "candidates record #1: document id 'd 9'"),
        ("scored", [*GOOD_SCORED, ("q 2", "d1", 0.5)], "candidates record #3: query id 'q 2'"),
    ],
)
def test_ir_datasets_ids_with_whitespace_name_dataset_and_record(tmp_path, part, records, fragment):
    parts = {"docs": GOOD_DOCS, "queries": GOOD_QUERIES, "qrels": GOOD_QRELS, "scored": GOOD_SCORED}
    parts[part] = records
    digest = hashlib.sha256(repr(sorted(parts.items())).encode()).hexdigest()[:12]
    src = _register_ir_dataset(f"irflow-test/spaced/{digest}", **parts)
    out = tmp_path / "out"
    o = outputs(out)
    with pytest.raises(InputError) as info:
        if part == "docs":
            write_corpus(src, o["corpus"], o["corpus_manifest"])
        elif part == "scored":
            write_candidates(src, o["run"])
        else:
            write_topics(src, o["queries"], o["qrels"], o["topics_manifest"])
    message = str(info.value)
    assert message.startswith(f"dataset 'spaced' (ir_datasets 'irflow-test/spaced/{digest}') ")
    assert fragment in message and "contains whitespace" in message
    assert_empty(out)


def test_ir_datasets_good_ids_pass(tmp_path):
    src = _register_ir_dataset("irflow-test/good", GOOD_DOCS, GOOD_QUERIES, GOOD_QRELS, GOOD_SCORED)
    o = outputs(tmp_path / "out")
    write_corpus(src, o["corpus"], o["corpus_manifest"])
    write_topics(src, o["queries"], o["qrels"], o["topics_manifest"])
    write_candidates(src, o["run"])
    assert read_qrels(o["qrels"]) == {"q1": {"d1": 1}, "q2": {"d2": 0}}
    assert read_run_dict(o["run"]) == {"q1": {"d1": 2.0, "d2": 1.0}}


@pytest.mark.parametrize("corpus", ["", "\n  \n"])
def test_empty_corpus(tmp_path, corpus):
    folder = make_beir(tmp_path / "beir", corpus=corpus)
    out = tmp_path / "out"
    o = outputs(out)
    with pytest.raises(InputError, match="dataset 'tiny': the corpus is empty"):
        write_corpus(source(folder), o["corpus"], o["corpus_manifest"])
    assert_empty(out)


def test_missing_corpus_file(tmp_path):
    folder = make_beir(tmp_path / "beir")
    (folder / "corpus.jsonl").unlink()
    out = tmp_path / "out"
    o = outputs(out)
    with pytest.raises(InputError, match="corpus.jsonl: file not found"):
        write_corpus(source(folder), o["corpus"], o["corpus_manifest"])
    assert_empty(out)


def test_judged_query_without_text(tmp_path):
    folder = make_beir(tmp_path / "beir", qrels=QRELS_TSV + "q9\td1\t1\n")
    out = tmp_path / "out"
    o = outputs(out)
    with pytest.raises(InputError) as info:
        write_topics(source(folder), o["queries"], o["qrels"], o["topics_manifest"])
    message = str(info.value)
    assert "dataset 'tiny'" in message and "1 judged queries have no text" in message
    assert "'q9'" in message
    assert_empty(out)


def test_judged_query_with_blank_text(tmp_path):
    queries = QUERIES[:2] + [{"_id": "q3", "text": "   "}]
    folder = make_beir(tmp_path / "beir", queries=queries)
    out = tmp_path / "out"
    o = outputs(out)
    with pytest.raises(InputError, match=r"judged queries with empty text: \['q3'\]"):
        write_topics(source(folder), o["queries"], o["qrels"], o["topics_manifest"])
    assert_empty(out)


def test_duplicate_judged_query(tmp_path):
    folder = make_beir(tmp_path / "beir", queries=QUERIES + [{"_id": "q1", "text": "again"}])
    out = tmp_path / "out"
    o = outputs(out)
    with pytest.raises(InputError, match="duplicate query id 'q1'"):
        write_topics(source(folder), o["queries"], o["qrels"], o["topics_manifest"])
    assert_empty(out)


@pytest.mark.parametrize(
    ("qrels", "fragment"),
    [
        ("query-id\tcorpus-id\tscore\n", "no relevance judgements"),
        ("q1\td1\t1\nq1\td1\t2\n", "test.tsv:2: document 'd1' judged twice"),
        ("q1\td1\tyes\n", "test.tsv:1: relevance label 'yes'"),
    ],
)
def test_bad_qrels(tmp_path, qrels, fragment):
    folder = make_beir(tmp_path / "beir", qrels=qrels)
    out = tmp_path / "out"
    o = outputs(out)
    with pytest.raises(InputError, match=fragment) as info:
        write_topics(source(folder), o["queries"], o["qrels"], o["topics_manifest"])
    assert str(folder / "qrels" / "test.tsv") in str(info.value)
    assert_empty(out)


def test_candidates_not_configured(tmp_path):
    folder = make_beir(tmp_path / "beir")
    out = tmp_path / "out"
    with pytest.raises(InputError, match="has no given candidates"):
        write_candidates(source(folder), outputs(out)["run"])
    assert_empty(out)


@pytest.mark.parametrize(
    ("run", "fragment"),
    [
        ("", "the candidate run is empty"),
        (RUN_TREC + "q3 Q0 d9 3 1.0 bm25\n", "bm25.trec:5: document 'd9' listed twice"),
        (RUN_TREC + "q3 Q0 d8 3 nan bm25\n", "bm25.trec:5: score 'nan' is not finite"),
        ("q1 Q0 d1 1 3.5\n", "bm25.trec:1: expected 6 columns"),
    ],
)
def test_bad_candidates(tmp_path, run, fragment):
    folder = make_beir(tmp_path / "beir", run=run)
    out = tmp_path / "out"
    with pytest.raises(InputError, match=fragment):
        write_candidates(source(folder, candidates="runs/bm25.trec"), outputs(out)["run"])
    assert_empty(out)


# ---------------------------------------------------------------------------------------------
# The tests' resource guard (tests/workflow_helpers.py): a skip that CI turns into a failure
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("flag", ["IRFLOW_REQUIRE_DATA", "IRFLOW_REQUIRE_MODELS"])
def test_missing_resource_skips_unless_required(monkeypatch, flag):
    import workflow_helpers

    check = {
        "IRFLOW_REQUIRE_DATA": lambda: workflow_helpers.require_data("no-such-collection"),
        "IRFLOW_REQUIRE_MODELS": lambda: workflow_helpers.require_models("no-such-model"),
    }[flag]
    monkeypatch.delenv(flag, raising=False)
    with pytest.raises(pytest.skip.Exception, match="no-such"):
        check()
    monkeypatch.setenv(flag, "1")
    with pytest.raises(pytest.fail.Exception, match=f"{flag}=1 but .*no-such"):
        check()
    workflow_helpers.require_or_skip(True, "present", flag)  # present: neither


def test_config_inputs_are_checked_under_their_own_flags(monkeypatch, tmp_path):
    import workflow_helpers

    config = {
        "datasets": {
            "a": {"beir_folder": str(workflow_helpers.SHARED_DATA / "no-such-collection")},
            "b": {"beir_folder": str(tmp_path)},  # the test's own folder: not checked
        },
        "models": {"m": {"path": str(workflow_helpers.MODELS / "no-such-model")}},
    }
    monkeypatch.setenv("IRFLOW_REQUIRE_DATA", "1")
    monkeypatch.delenv("IRFLOW_REQUIRE_MODELS", raising=False)
    with pytest.raises(pytest.fail.Exception, match="no-such-collection"):
        workflow_helpers.require_config_inputs(config)
    del config["datasets"]["a"]
    with pytest.raises(pytest.skip.Exception, match="no-such-model"):
        workflow_helpers.require_config_inputs(config)
