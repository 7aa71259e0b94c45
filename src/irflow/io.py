"""File formats the workflow reads and writes, with atomic writes and line-numbered errors.

Every writer here goes through :func:`atomic_output`: the file (or directory) is built under a
temporary name beside the target and renamed into place only once complete, so a killed job
never leaves a truncated artifact that a later run could take as done.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path


class InputError(ValueError):
    """Bad input data: the message names the file (and line) at fault."""


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if directory:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        if directory and path.exists():
            shutil.rmtree(path)
        # mkstemp/mkdtemp create private files; artifacts are readable like any other output.
        os.chmod(tmp, 0o755 if directory else 0o644)
        os.replace(tmp, path)
    except BaseException:
        if directory:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def open_parquet(path: str | os.PathLike):
    """A ``pyarrow.parquet.ParquetFile``, or :class:`InputError` naming a missing, empty or
    unreadable file (pyarrow's own errors do not always name it)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise InputError(f"{path}: not a readable Parquet file ({err})") from None


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# Identifiers: the text formats below are whitespace separated, so an id must not contain any.
# --------------------------------------------------------------------------------------------
_WHITESPACE = re.compile(r"\s")


def whitespace_problem(value: str) -> str | None:
    """Why ``value`` cannot be a query or document id (empty, or containing whitespace), or
    None when it can."""
    if not value:
        return "is empty"
    # Python's \s is str.isspace, the set str.split() splits on: what the readers would split.
    found = _WHITESPACE.search(value)
    return f"contains whitespace ({found.group()!r})" if found else None


def check_id(value, what: str, where: str) -> str:
    """``value`` if it is a usable id, else :class:`InputError` ``"<where>: <what> <value> ..."``
    (``where`` names the file and line, or the dataset and record)."""
    if not isinstance(value, str):
        raise InputError(f"{where}: {what} {value!r} is not a string")
    problem = whitespace_problem(value)
    if problem:
        raise InputError(
            f"{where}: {what} {value!r} {problem}; ids must be non-empty and free of whitespace "
            f"(TREC run and qrels files are whitespace separated)"
        )
    return value


# --------------------------------------------------------------------------------------------
# TREC run files: "qid Q0 docid rank score tag", whitespace separated.
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunRow:
    query_id: str
    doc_id: str
    score: float


_INTEGER = re.compile(r"[+-]?[0-9]+")


def _text_lines(path: Path) -> Iterator[tuple[int, str]]:
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                yield number, raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise InputError(f"{path}:{number}: not valid UTF-8 ({err.reason})") from None


def read_trec_run(path: str | os.PathLike) -> Iterator[RunRow]:
    """Yield the rows of a 6-column TREC run, validating each line.

    The format is fixed: every non-blank line is exactly ``qid Q0 docid rank score tag``
    (whitespace separated), the rank an integer and the score a finite number. Raises
    :class:`InputError` naming the file and line for anything else, and for a (query, doc)
    pair listed twice.
    """
    path = Path(path)
    seen: set[tuple[str, str]] = set()
    for number, line in _text_lines(path):
        if not line.strip():
            continue
        cols = line.split()
        if len(cols) != 6:
            raise InputError(
                f"{path}:{number}: expected 6 columns 'qid Q0 docid rank score tag', "
                f"got {len(cols)}: {line.rstrip()!r}"
            )
        qid, _, docid, rank_text, score_text, _ = cols
        if not _INTEGER.fullmatch(rank_text):
            raise InputError(f"{path}:{number}: rank {rank_text!r} is not an integer")
        try:
            score = float(score_text)
        except ValueError:
            raise InputError(f"{path}:{number}: score {score_text!r} is not a number") from None
        if not math.isfinite(score):
            raise InputError(f"{path}:{number}: score {score_text!r} is not finite")
        if (qid, docid) in seen:
            raise InputError(f"{path}:{number}: document {docid!r} listed twice for query {qid!r}")
        seen.add((qid, docid))
        yield RunRow(qid, docid, score)


def read_run_dict(path: str | os.PathLike) -> dict[str, dict[str, float]]:
    run: dict[str, dict[str, float]] = {}
    for row in read_trec_run(path):
        run.setdefault(row.query_id, {})[row.doc_id] = row.score
    return run


def ranked(docs: dict[str, float]) -> list[tuple[str, float]]:
    """Order one query's documents as trec_eval does: score descending, then doc id descending."""
    return sorted(docs.items(), key=lambda item: (item[1], item[0]), reverse=True)


def write_trec_run(
    path: str | os.PathLike,
    run: dict[str, dict[str, float]] | Iterable[tuple[str, dict[str, float]]],
    tag: str,
    depth: int | None = None,
) -> None:
    """Write a run atomically; queries sorted by id, documents in trec_eval order.

    Scores are written with ``repr`` precision so rereading gives the same floats and the
    same ranking. An id or tag that is empty or contains whitespace, or a non-finite score, is
    refused (:class:`InputError`) and nothing is written: :func:`read_trec_run` reads back
    exactly what this writes.
    """
    check_id(tag, "run tag", str(path))
    items = run.items() if isinstance(run, dict) else run
    with atomic_output(path) as tmp, open(tmp, "w", encoding="utf-8") as out:
        for qid, docs in sorted(items, key=lambda item: item[0]):
            check_id(qid, "query id", str(path))
            for rank, (docid, score) in enumerate(ranked(docs)[:depth], start=1):
                check_id(docid, f"document id (query {qid!r})", str(path))
                if not math.isfinite(score):
                    raise InputError(f"{path}: score {score} for query {qid!r}, document {docid!r}")
                out.write(f"{qid} Q0 {docid} {rank} {float(score)!r} {tag}\n")


# --------------------------------------------------------------------------------------------
# Qrels: TREC "qid iter docid label" or BEIR "query-id<TAB>corpus-id<TAB>score" with header.
# --------------------------------------------------------------------------------------------
QRELS_FORMATS = ("trec", "beir")
BEIR_QRELS_HEADER = ("query-id", "corpus-id")


def _line_body(line: str) -> str:
    return line.rstrip("\r\n")


def _is_beir_header(line: str) -> bool:
    return tuple(_line_body(line).split("\t")[:2]) == BEIR_QRELS_HEADER


def qrels_format(path: str | os.PathLike) -> str:
    """The format of a qrels file, decided once from its first non-blank line: ``beir`` for
    BEIR's header ``query-id<TAB>corpus-id<TAB>score`` or a line of exactly three tab-separated
    fields, ``trec`` otherwise (``qid iter docid label``)."""
    path = Path(path)
    for _, line in _text_lines(path):
        if not line.strip():
            continue
        if _is_beir_header(line) or len(_line_body(line).split("\t")) == 3:
            return "beir"
        return "trec"
    return "trec"


def read_qrels(path: str | os.PathLike, format: str | None = None) -> dict[str, dict[str, int]]:
    """Read qrels in one format, validating every line against it.

    ``format`` is ``"trec"`` (``qid iter docid label``, whitespace separated) or ``"beir"``
    (``query-id<TAB>corpus-id<TAB>score``, tab separated, optional header on the first
    non-blank line); None decides it once with :func:`qrels_format`. Every line must then
    match that format exactly (column count, integer label, ids free of whitespace), or
    :class:`InputError` names the file and line; so does a document judged twice for a query.
    """
    path = Path(path)
    if format is None:
        format = qrels_format(path)
    if format not in QRELS_FORMATS:
        raise ValueError(f"qrels format {format!r} is not one of {list(QRELS_FORMATS)}")
    qrels: dict[str, dict[str, int]] = {}
    first = True
    for number, line in _text_lines(path):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        if format == "beir":
            if first and _is_beir_header(line):
                first = False
                continue
            cols = _line_body(line).split("\t")
            if len(cols) != 3:
                raise InputError(
                    f"{where}: expected 3 tab-separated columns 'query-id<TAB>corpus-id<TAB>"
                    f"score' (BEIR qrels), got {len(cols)} columns: {line.rstrip()!r}"
                )
            qid, docid, label = cols
            check_id(qid, "query id", where)
            check_id(docid, "document id", where)
        else:
            cols = line.split()
            if len(cols) != 4:
                raise InputError(
                    f"{where}: expected 4 whitespace-separated columns 'qid iter docid label' "
                    f"(TREC qrels), got {len(cols)} columns: {line.rstrip()!r}"
                )
            qid, _, docid, label = cols
        first = False
        if not _INTEGER.fullmatch(label):
            raise InputError(f"{where}: relevance label {label!r} is not an integer")
        value = int(label)
        if docid in qrels.get(qid, {}):
            raise InputError(f"{where}: document {docid!r} judged twice for query {qid!r}")
        qrels.setdefault(qid, {})[docid] = value
    if not qrels:
        raise InputError(f"{path}: no relevance judgements")
    return qrels


def write_trec_qrels(path: str | os.PathLike, qrels: dict[str, dict[str, int]]) -> None:
    """Write TREC qrels atomically (``qid 0 docid label``); ids with whitespace are refused."""
    with atomic_output(path) as tmp, open(tmp, "w", encoding="utf-8") as out:
        for qid in sorted(qrels):
            check_id(qid, "query id", str(path))
            for docid in sorted(qrels[qid]):
                check_id(docid, f"document id (query {qid!r})", str(path))
                out.write(f"{qid} 0 {docid} {int(qrels[qid][docid])}\n")
