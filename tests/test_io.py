"""File formats in irflow.io: validation messages, exact round trips and atomic writes."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest

from irflow.io import (
    InputError,
    atomic_output,
    check_id,
    qrels_format,
    ranked,
    read_qrels,
    read_run_dict,
    read_trec_run,
    sha256_file,
    write_json_atomic,
    write_text_atomic,
    write_trec_qrels,
    write_trec_run,
)


def _write(path, text: str | bytes):
    if isinstance(text, str):
        text = text.encode("utf-8")
    path.write_bytes(text)
    return path


def _error(func, path) -> str:
    with pytest.raises(InputError) as info:
        result = func(path)
        if not isinstance(result, dict):
            list(result)  # read_trec_run is a generator
    return str(info.value)


# --------------------------------------------------------------------------------------------
# read_trec_run
# --------------------------------------------------------------------------------------------
GOOD_RUN = "q1 Q0 d1 1 2.5 tag\nq1 Q0 d2 2 1.5 tag\n"


def test_read_trec_run_good(tmp_path):
    path = _write(tmp_path / "run.trec", GOOD_RUN + "\n   \nq2 Q0 d1 1 -3e-2 tag\n")
    rows = list(read_trec_run(path))
    assert [(r.query_id, r.doc_id, r.score) for r in rows] == [
        ("q1", "d1", 2.5),
        ("q1", "d2", 1.5),
        ("q2", "d1", -0.03),
    ]
    assert read_run_dict(path) == {"q1": {"d1": 2.5, "d2": 1.5}, "q2": {"d1": -0.03}}


@pytest.mark.parametrize(
    ("bad_line", "fragment"),
    [
        ("q1 Q0 d3 3 0.5", "expected 6 columns"),  # 5 columns
        ("q1 Q0 d3 3 0.5 tag extra", "expected 6 columns"),  # 7 columns
        ("q1\tQ0\td3\t3", "got 4"),
        ("q1 Q0 d3 3 high tag", "'high' is not a number"),
        ("q1 Q0 d3 3 0,5 tag", "is not a number"),
        ("q1 Q0 d3 3 nan tag", "'nan' is not finite"),
        ("q1 Q0 d3 3 NaN tag", "is not finite"),
        ("q1 Q0 d3 3 inf tag", "'inf' is not finite"),
        ("q1 Q0 d3 3 -Infinity tag", "is not finite"),
        ("q1 Q0 d1 3 0.5 tag", "document 'd1' listed twice for query 'q1'"),
    ],
)
def test_read_trec_run_errors_name_file_and_line(tmp_path, bad_line, fragment):
    # Line 3 is blank and still counted: the bad line is line 4.
    path = _write(tmp_path / "run.trec", GOOD_RUN + "\n" + bad_line + "\n")
    message = _error(read_trec_run, path)
    assert message.startswith(f"{path}:4: ")
    assert fragment in message
    message = _error(read_run_dict, path)
    assert message.startswith(f"{path}:4: ")


def test_read_trec_run_same_doc_in_two_queries_is_fine(tmp_path):
    path = _write(tmp_path / "run.trec", "q1 Q0 d1 1 1 t\nq2 Q0 d1 1 1 t\n")
    assert read_run_dict(path) == {"q1": {"d1": 1.0}, "q2": {"d1": 1.0}}


def test_read_trec_run_missing_file(tmp_path):
    path = tmp_path / "nope.trec"
    message = _error(read_trec_run, path)
    assert str(path) in message and "not found" in message


@pytest.mark.parametrize("reader", [read_trec_run, read_qrels])
def test_bad_utf8_names_file(tmp_path, reader):
    line = b"q1 Q0 d1 1 1.0 t\n" if reader is read_trec_run else b"q1 0 d1 1\n"
    path = _write(tmp_path / "bad.txt", line + line.replace(b"d1", b"d\xff\xfe"))
    message = _error(reader, path)
    assert str(path) in message and "UTF-8" in message


@pytest.mark.parametrize("reader", [read_trec_run, read_qrels])
def test_bad_utf8_names_line(tmp_path, reader):
    line = b"q1 Q0 d1 1 1.0 t\n" if reader is read_trec_run else b"q1 0 d1 1\n"
    path = _write(tmp_path / "bad.txt", line + line.replace(b"d1", b"d2") + b"q1 \xff\n")
    assert _error(reader, path).startswith(f"{path}:3:")


# --------------------------------------------------------------------------------------------
# read_qrels
# --------------------------------------------------------------------------------------------
def test_read_qrels_trec_format(tmp_path):
    path = _write(tmp_path / "q.txt", "q1 0 d1 2\nq1 0 d2 0\n\nq2 Q0 d1 -1\n")
    assert read_qrels(path) == {"q1": {"d1": 2, "d2": 0}, "q2": {"d1": -1}}


def test_read_qrels_beir_tsv_with_header(tmp_path):
    text = "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\t2\nq3\td9\t0\n"
    path = _write(tmp_path / "test.tsv", text)
    assert read_qrels(path) == {"q1": {"d1": 1, "d2": 2}, "q3": {"d9": 0}}


def test_read_qrels_beir_tsv_without_header(tmp_path):
    path = _write(tmp_path / "test.tsv", "q1\td1\t1\n")
    assert read_qrels(path) == {"q1": {"d1": 1}}


@pytest.mark.parametrize(
    ("bad_line", "fragment"),
    [
        ("q1 d3", "got 2 columns"),
        ("q1 0 d3 1 extra", "got 5 columns"),
        ("q1 0 d3 high", "relevance label 'high' is not an integer"),
        ("q1 0 d3 1.0", "relevance label '1.0' is not an integer"),
        ("q1 0 d1 0", "document 'd1' judged twice for query 'q1'"),
        # A BEIR header in a TREC file is data, and bad data.
        ("query-id\tcorpus-id\tscore", "got 3 columns"),
        # A TREC file stays TREC: a tab-separated 3-column line is not re-read as BEIR.
        ("q1\td3\t1", "expected 4 whitespace-separated columns"),
        ("q1 0 d3 +", "relevance label '+' is not an integer"),
    ],
)
def test_read_qrels_errors_name_file_and_line(tmp_path, bad_line, fragment):
    path = _write(tmp_path / "q.txt", "q1 0 d1 1\n\nq1 0 d2 0\n" + bad_line + "\n")
    message = _error(read_qrels, path)
    assert message.startswith(f"{path}:4: ")
    assert fragment in message


@pytest.mark.parametrize("text", ["", "\n\n  \n", "query-id\tcorpus-id\tscore\n"])
def test_read_qrels_empty(tmp_path, text):
    path = _write(tmp_path / "q.txt", text)
    assert _error(read_qrels, path) == f"{path}: no relevance judgements"


def test_read_qrels_missing_file(tmp_path):
    path = tmp_path / "nope.tsv"
    message = _error(read_qrels, path)
    assert str(path) in message and "not found" in message


@pytest.mark.parametrize(
    ("bad_line", "fragment"),
    [
        # A spaced id in a BEIR TSV is refused, never re-read as 4 TREC columns.
        ("q1\tdoc 7\t1", "document id 'doc 7' contains whitespace"),
        ("q 1\td7\t1", "query id 'q 1' contains whitespace"),
        ("q1\t\t1", "document id '' is empty"),
        ("q1\td7\t1\textra", "expected 3 tab-separated columns"),
        ("q1 0 d7 1", "got 1 columns"),  # a TREC line in a BEIR file
        ("q1\td7", "got 2 columns"),
        ("q1\td7\t1.0", "relevance label '1.0' is not an integer"),
        ("q1\td7\t 1", "relevance label ' 1' is not an integer"),
        ("q1\td1\t0", "document 'd1' judged twice for query 'q1'"),
        ("query-id\tcorpus-id\tscore", "relevance label 'score' is not an integer"),
    ],
)
def test_read_beir_qrels_every_line_matches_the_format(tmp_path, bad_line, fragment):
    path = _write(
        tmp_path / "test.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t1\n\n" + bad_line + "\n"
    )
    message = _error(read_qrels, path)
    assert message.startswith(f"{path}:4: ")
    assert fragment in message


def test_read_qrels_headerless_beir_line_with_spaced_id_is_refused(tmp_path):
    # Three tab-separated fields on the first line make the file BEIR; its space is an error.
    path = _write(tmp_path / "test.tsv", "q1\tdoc 7\t1\n")
    message = _error(read_qrels, path)
    assert message.startswith(f"{path}:1: ") and "'doc 7' contains whitespace" in message


def test_read_qrels_explicit_format(tmp_path):
    beir = _write(tmp_path / "test.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    assert read_qrels(beir, format="beir") == {"q1": {"d1": 1}}
    message = _error(lambda p: read_qrels(p, format="trec"), beir)
    assert message.startswith(f"{beir}:1: ") and "expected 4 whitespace-separated" in message
    trec = _write(tmp_path / "q.txt", "q1 0 d1 1\n")
    assert read_qrels(trec, format="trec") == {"q1": {"d1": 1}}
    message = _error(lambda p: read_qrels(p, format="beir"), trec)
    assert message.startswith(f"{trec}:1: ") and "expected 3 tab-separated" in message
    with pytest.raises(ValueError, match="not one of"):
        read_qrels(trec, format="csv")


def test_qrels_format_is_decided_from_the_first_line(tmp_path):
    assert qrels_format(_write(tmp_path / "a", "query-id\tcorpus-id\tscore\n")) == "beir"
    assert qrels_format(_write(tmp_path / "b", "\nq1\td1\t1\n")) == "beir"
    assert qrels_format(_write(tmp_path / "c", "q1 0 d1 1\nq1\td2\t1\n")) == "trec"
    assert qrels_format(_write(tmp_path / "d", "q1\t0\td1\t1\n")) == "trec"


@pytest.mark.parametrize(
    ("bad_line", "fragment"),
    [
        ("q1 Q0 d3 one 0.5 tag", "rank 'one' is not an integer"),
        ("q1 Q0 d3 1.5 0.5 tag", "rank '1.5' is not an integer"),
        ("q1\tQ0\tdoc 3\t3\t0.5\ttag", "got 7"),  # a spaced id never passes as 6 columns
    ],
)
def test_read_trec_run_rank_and_spaced_ids(tmp_path, bad_line, fragment):
    path = _write(tmp_path / "run.trec", GOOD_RUN + bad_line + "\n")
    message = _error(read_trec_run, path)
    assert message.startswith(f"{path}:3: ") and fragment in message


@pytest.mark.parametrize(
    ("run", "tag", "fragment"),
    [
        ({"q1": {"doc 1": 1.0}}, "t", "document id (query 'q1') 'doc 1' contains whitespace"),
        ({"q\t1": {"d1": 1.0}}, "t", "query id 'q\\t1' contains whitespace"),
        ({"q1": {"d\n1": 1.0}}, "t", "contains whitespace ('\\n')"),
        ({"": {"d1": 1.0}}, "t", "query id '' is empty"),
        ({"q1": {"d1": 1.0}}, "my tag", "run tag 'my tag' contains whitespace"),
    ],
)
def test_write_trec_run_refuses_ids_with_whitespace(tmp_path, run, tag, fragment):
    path = tmp_path / "run.trec"
    with pytest.raises(InputError) as info:
        write_trec_run(path, run, tag=tag)
    assert str(info.value).startswith(f"{path}: ") and fragment in str(info.value)
    assert os.listdir(tmp_path) == []


def test_write_trec_qrels_refuses_ids_with_whitespace(tmp_path):
    with pytest.raises(InputError, match="'doc 1' contains whitespace"):
        write_trec_qrels(tmp_path / "q.txt", {"q1": {"doc 1": 1}})
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("value", ["a b", "a\tb", "a\nb", "a\u00a0b", "a\u2003b", ""])
def test_check_id_refuses_every_kind_of_whitespace(value):
    with pytest.raises(InputError, match=r"^f\.txt:3: doc id "):
        check_id(value, "doc id", "f.txt:3")
    assert check_id("d-1_é", "doc id", "f.txt:3") == "d-1_é"


def test_write_trec_qrels_round_trip(tmp_path):
    qrels = {"q2": {"d10": 1, "d9": 0}, "q1": {"b": 3, "a": -1}}
    write_trec_qrels(tmp_path / "q.txt", qrels)
    assert (tmp_path / "q.txt").read_text() == "q1 0 a -1\nq1 0 b 3\nq2 0 d10 1\nq2 0 d9 0\n"
    assert read_qrels(tmp_path / "q.txt") == qrels


# --------------------------------------------------------------------------------------------
# write_trec_run
# --------------------------------------------------------------------------------------------
TRICKY_SCORES = [
    0.1 + 0.2,
    1 / 3,
    -2 / 3,
    5e-324,
    1e-300,
    1.7976931348623157e308,
    123456789.12345679,
    -0.0,
    float(np.float32(0.1)),
    2.0**53 + 2,
]


def test_write_trec_run_round_trips_scores_exactly(tmp_path):
    run = {"q": {f"d{i}": s for i, s in enumerate(TRICKY_SCORES)}}
    path = tmp_path / "run.trec"
    write_trec_run(path, run, tag="exact")
    back = read_run_dict(path)
    assert back == run
    for doc, score in run["q"].items():
        # bit-for-bit (== would accept 0.0 for -0.0)
        assert np.float64(back["q"][doc]).tobytes() == np.float64(score).tobytes()


def test_write_trec_run_numpy_scores(tmp_path):
    run = {"q": {"a": np.float32(0.1), "b": np.float64(1 / 3), "c": np.float32(0.1)}}
    write_trec_run(tmp_path / "run.trec", run, tag="np")
    back = read_run_dict(tmp_path / "run.trec")
    assert back == {"q": {"a": float(np.float32(0.1)), "b": 1 / 3, "c": float(np.float32(0.1))}}
    # b (1/3) first; a and c tie at float32(0.1): 'c' > 'a', so c comes before a
    lines = (tmp_path / "run.trec").read_text().splitlines()
    assert [line.split()[2] for line in lines] == ["b", "c", "a"]


def test_write_trec_run_orders_as_trec_eval(tmp_path):
    run = {
        "q10": {"x": 1.0},
        "q2": {"d10": 1.0, "d9": 1.0, "d2": 5.0, "d100": 1.0, "e": 0.5, "D9": 1.0},
        "q1": {"a": -1.0, "b": 0.0},
    }
    path = tmp_path / "run.trec"
    write_trec_run(path, run, tag="mytag")
    lines = [line.split() for line in path.read_text().splitlines()]
    # queries by id as strings: q1 < q10 < q2
    assert [(c[0], c[2], c[3]) for c in lines] == [
        ("q1", "b", "1"),
        ("q1", "a", "2"),
        ("q10", "x", "1"),
        # d2 (5.0); then the 1.0 ties by id descending: d9 > d100 > d10 > D9 ('D' < 'd');
        # then e (0.5)
        ("q2", "d2", "1"),
        ("q2", "d9", "2"),
        ("q2", "d100", "3"),
        ("q2", "d10", "4"),
        ("q2", "D9", "5"),
        ("q2", "e", "6"),
    ]
    assert {c[1] for c in lines} == {"Q0"} and {c[5] for c in lines} == {"mytag"}
    assert ranked(run["q2"])[:3] == [("d2", 5.0), ("d9", 1.0), ("d100", 1.0)]


def test_write_trec_run_depth_keeps_trec_eval_top(tmp_path):
    run = {"q": {"d10": 1.0, "d9": 1.0, "d8": 0.5}, "r": {"z": 1.0}}
    write_trec_run(tmp_path / "run.trec", iter(run.items()), tag="t", depth=1)
    assert (tmp_path / "run.trec").read_text() == "q Q0 d9 1 1.0 t\nr Q0 z 1 1.0 t\n"


def test_write_trec_run_leaves_no_temp_file(tmp_path):
    write_trec_run(tmp_path / "run.trec", {"q": {"d": 1.0}}, tag="t")
    assert sorted(os.listdir(tmp_path)) == ["run.trec"]
    assert stat.S_IMODE((tmp_path / "run.trec").stat().st_mode) == 0o644


# --------------------------------------------------------------------------------------------
# atomic_output and helpers
# --------------------------------------------------------------------------------------------
class Boom(Exception):
    pass


def test_atomic_file_success(tmp_path):
    target = tmp_path / "sub" / "deeper" / "out.txt"
    with atomic_output(target) as tmp:
        assert tmp.parent == target.parent and tmp != target
        assert not target.exists()
        tmp.write_text("done")
    assert target.read_text() == "done"
    assert os.listdir(target.parent) == ["out.txt"]
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


@pytest.mark.parametrize("error", [Boom, KeyboardInterrupt])
def test_atomic_file_failure_leaves_nothing(tmp_path, error):
    target = tmp_path / "out.txt"
    with pytest.raises(error), atomic_output(target) as tmp:
        tmp.write_text("partial")
        raise error()
    assert os.listdir(tmp_path) == []


def test_atomic_file_failure_keeps_previous_version(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(Boom), atomic_output(target) as tmp:
        tmp.write_text("new")
        raise Boom()
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.txt"]


def test_atomic_file_body_may_delete_temp_then_fail(tmp_path):
    with pytest.raises(Boom), atomic_output(tmp_path / "out.txt") as tmp:
        tmp.unlink()
        raise Boom()
    assert os.listdir(tmp_path) == []


def test_atomic_directory_success_replaces_old(tmp_path):
    target = tmp_path / "index"
    target.mkdir()
    (target / "stale").write_text("old")
    with atomic_output(target, directory=True) as tmp:
        assert tmp.is_dir() and tmp.parent == tmp_path
        (tmp / "a").write_text("A")
        (tmp / "nested").mkdir()
        (tmp / "nested" / "b").write_text("B")
    assert sorted(p.name for p in target.iterdir()) == ["a", "nested"]
    assert (target / "nested" / "b").read_text() == "B"
    assert os.listdir(tmp_path) == ["index"]


@pytest.mark.parametrize("error", [Boom, KeyboardInterrupt])
def test_atomic_directory_failure_leaves_nothing(tmp_path, error):
    target = tmp_path / "index"
    with pytest.raises(error), atomic_output(target, directory=True) as tmp:
        (tmp / "a").write_text("A")
        (tmp / "nested").mkdir()
        (tmp / "nested" / "b").write_text("B")
        raise error()
    assert os.listdir(tmp_path) == []


def test_atomic_directory_failure_keeps_previous_version(tmp_path):
    target = tmp_path / "index"
    target.mkdir()
    (target / "keep").write_text("old")
    with pytest.raises(Boom), atomic_output(target, directory=True) as tmp:
        (tmp / "new").write_text("new")
        raise Boom()
    assert [p.name for p in target.iterdir()] == ["keep"]
    assert os.listdir(tmp_path) == ["index"]


def test_write_text_and_json_atomic(tmp_path):
    write_text_atomic(tmp_path / "t.txt", "héllo\n")
    assert (tmp_path / "t.txt").read_bytes() == "héllo\n".encode()
    write_json_atomic(tmp_path / "j.json", {"b": 1, "a": ["é"]})
    text = (tmp_path / "j.json").read_text(encoding="utf-8")
    assert text == '{\n  "a": [\n    "é"\n  ],\n  "b": 1\n}\n'
    assert json.loads(text) == {"a": ["é"], "b": 1}
    assert sorted(os.listdir(tmp_path)) == ["j.json", "t.txt"]


def test_sha256_file(tmp_path):
    path = _write(tmp_path / "f", b"abc")
    assert sha256_file(path) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert sha256_file(path, chunk=1) == sha256_file(path)
