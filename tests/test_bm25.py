"""BM25 first stage: the streaming index against bm25s's in-memory one, query-sharded retrieval
and the merge of shard run files."""

from __future__ import annotations

import filecmp
from pathlib import Path

import pytest
import workflow_helpers
from tiny_builders import write_corpus_parquet

from irflow import bm25
from irflow.data import DatasetSource, read_queries, write_corpus, write_topics
from irflow.io import InputError, write_trec_run

TEXTS = [
    "The cat sat on the mat; the cats were sitting.",
    "the and of",  # stop words only: an empty document
    "Dogs chase cats, cats chase mice, mice chase nothing!",
    "Ünïcode naïve café: café au lait",
    "",
    "sitting sits sat sitter mat mats matting",
    "a b c",  # single letters are no tokens
    "cat " * 300 + "dog",  # a term frequency above 255
]
TITLES = ["Cats", "", "Chase", "", "Empty", None, "", "Many cats"]
QUERIES = {"q1": "cat on a mat", "q2": "mice chasing", "q3": "café", "q0": "zebra quagga"}


def _index_files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def assert_same_index(reference: Path, streamed: Path) -> None:
    files = _index_files(reference)
    assert _index_files(streamed) == files
    match, mismatch, errors = filecmp.cmpfiles(reference, streamed, files, shallow=False)
    assert (mismatch, errors) == ([], []), f"files differ: {mismatch + errors}"


@pytest.fixture
def tiny_corpus(tmp_path) -> Path:
    ids = [f"d{i}" for i in range(len(TEXTS))]
    titles = [t or "" for t in TITLES]
    return write_corpus_parquet(tmp_path / "corpus.parquet", ids, TEXTS, titles)


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"stemmer": None},
        {"stopwords": None},
        {"method": "robertson", "k1": 1.2, "b": 0.75},
        {"method": "atire"},
        {"method": "bm25l"},
        {"method": "bm25+", "k1": 2, "b": 1},
    ],
    ids=["default", "no-stemmer", "no-stopwords", "robertson", "atire", "bm25l", "bm25+"],
)
@pytest.mark.parametrize("batch_docs,slice_postings", [(1, 1 << 20), (3, 5), (1000, 1 << 20)])
def test_streaming_index_is_byte_identical_to_bm25s_in_memory(
    tmp_path, tiny_corpus, monkeypatch, params, batch_docs, slice_postings
):
    monkeypatch.setattr(bm25, "SLICE_POSTINGS", slice_postings)  # 5: slices split documents
    bm25.build_index_reference(str(tiny_corpus), str(tmp_path / "reference"), params)
    bm25.build_index(str(tiny_corpus), str(tmp_path / "streamed"), params, batch_docs=batch_docs)
    assert_same_index(tmp_path / "reference", tmp_path / "streamed")
    reference = bm25.retrieve(str(tmp_path / "reference"), QUERIES, k=5)
    assert bm25.retrieve(str(tmp_path / "streamed"), QUERIES, k=5) == reference
    assert reference["q0"] == {}  # no query term in the corpus: nothing retrieved


def test_empty_corpus_is_an_input_error(tmp_path):
    empty = write_corpus_parquet(tmp_path / "corpus.parquet", [], [])
    with pytest.raises(InputError, match="the corpus is empty"):
        bm25.build_index(str(empty), str(tmp_path / "index"), {})
    only_stopwords = write_corpus_parquet(tmp_path / "stop.parquet", ["d1"], ["the of and"])
    with pytest.raises(InputError, match="no document has an indexable term"):
        bm25.build_index(str(only_stopwords), str(tmp_path / "index"), {})
    assert not (tmp_path / "index").exists()


# --------------------------------------------------------------------------------------------
# Query shards and the merge
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("num_queries,num_shards", [(93, 3), (10, 4), (2, 5), (1, 1)])
def test_query_shards_partition_the_sorted_queries_in_order(num_queries, num_shards):
    qids = [f"q{i}" for i in range(num_queries)]
    shards = [bm25.query_shard(qids, i, num_shards) for i in range(num_shards)]
    assert [q for shard in shards for q in shard] == sorted(qids)
    sizes = [len(shard) for shard in shards]
    assert max(sizes) - min(sizes) <= 1
    with pytest.raises(ValueError, match="need 0 <= shard < num_shards"):
        bm25.query_shard(qids, num_shards, num_shards)


def _sharded_run(index: str, queries, num_shards: int, folder: Path, tag: str = "bm25") -> Path:
    shards = []
    for i in range(num_shards):
        path = folder / f"shard-{i}-of-{num_shards}.trec"
        write_trec_run(path, bm25.retrieve_shard(index, queries, 1000, i, num_shards), tag=tag)
        shards.append(str(path))
    merged = folder / "merged.trec"
    bm25.merge_runs(shards, str(merged))
    return merged


def test_more_shards_than_queries_give_empty_shards_and_the_same_run(tmp_path, tiny_corpus):
    bm25.build_index(str(tiny_corpus), str(tmp_path / "index"), {})
    write_trec_run(
        tmp_path / "one.trec", bm25.retrieve(str(tmp_path / "index"), QUERIES, 1000), "t"
    )
    merged = _sharded_run(str(tmp_path / "index"), QUERIES, 6, tmp_path, tag="t")
    assert merged.read_bytes() == (tmp_path / "one.trec").read_bytes()
    assert (tmp_path / "shard-0-of-6.trec").read_bytes() == b""
    with pytest.raises(InputError, match="no queries"):
        bm25.retrieve_shard(str(tmp_path / "index"), {}, 10, 0, 2)


def test_merge_rejects_shards_out_of_order_or_overlapping(tmp_path):
    a, b = tmp_path / "a.trec", tmp_path / "b.trec"
    a.write_text("q1 Q0 d1 1 2.0 t\nq2 Q0 d1 1 1.0 t\n")
    b.write_text("q3 Q0 d2 1 1.5 t\n")
    bm25.merge_runs([str(a), str(b)], str(tmp_path / "ok.trec"))
    assert (tmp_path / "ok.trec").read_text() == a.read_text() + b.read_text()
    with pytest.raises(InputError, match=r"a\.trec:1: query 'q1' after 'q3'"):
        bm25.merge_runs([str(b), str(a)], str(tmp_path / "bad.trec"))
    b.write_text("q2 Q0 d2 1 1.5 t\n")  # q2 is also in a.trec
    with pytest.raises(InputError, match=r"b\.trec:1: query 'q2' after 'q2'"):
        bm25.merge_runs([str(a), str(b)], str(tmp_path / "bad.trec"))
    b.write_text("q3 Q0 d2 1\n")
    with pytest.raises(InputError, match=r"b\.trec:1: not a 6-column TREC run line"):
        bm25.merge_runs([str(a), str(b)], str(tmp_path / "bad.trec"))
    assert not (tmp_path / "bad.trec").exists()


# --------------------------------------------------------------------------------------------
# Vaswani (../shared/data): the full 11,429-abstract corpus and its 93 queries
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def vaswani(tmp_path_factory) -> dict[str, Path]:
    workflow_helpers.require_data("vaswani")
    folder = tmp_path_factory.mktemp("vaswani")
    source = DatasetSource.from_config(
        "vaswani", {"beir_folder": str(workflow_helpers.SHARED_DATA / "vaswani")}
    )
    paths = {"corpus": folder / "corpus.parquet", "queries": folder / "queries.parquet"}
    write_corpus(source, str(paths["corpus"]), str(folder / "corpus.manifest.json"))
    write_topics(
        source, str(paths["queries"]), str(folder / "qrels.trec"), str(folder / "topics.json")
    )
    paths["reference"] = folder / "reference"
    bm25.build_index_reference(str(paths["corpus"]), str(paths["reference"]), {})
    paths["index"] = folder / "index"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(bm25, "SLICE_POSTINGS", 10_000)  # several slices a batch
        bm25.build_index(str(paths["corpus"]), str(paths["index"]), {}, batch_docs=2_000)
    return paths


def test_vaswani_streaming_index_and_run_equal_the_in_memory_ones(vaswani, tmp_path):
    assert_same_index(vaswani["reference"], vaswani["index"])
    queries = read_queries(str(vaswani["queries"]))
    assert len(queries) == 93
    for name in ("reference", "index"):
        run = bm25.retrieve(str(vaswani[name]), queries, k=1000)
        write_trec_run(tmp_path / f"{name}.trec", run, tag="bm25")
    reference = (tmp_path / "reference.trec").read_text()
    assert (tmp_path / "index.trec").read_text() == reference
    assert len(reference.splitlines()) > 50_000  # deep runs: most queries reach depth 1,000


def test_vaswani_three_shards_merge_to_the_bytes_of_one_job(vaswani, tmp_path):
    queries = read_queries(str(vaswani["queries"]))
    one = tmp_path / "one.trec"
    write_trec_run(one, bm25.retrieve(str(vaswani["index"]), queries, k=1000), tag="bm25")
    merged = _sharded_run(str(vaswani["index"]), queries, 3, tmp_path)
    assert merged.read_bytes() == one.read_bytes()
    assert all((tmp_path / f"shard-{i}-of-3.trec").stat().st_size > 0 for i in range(3))
