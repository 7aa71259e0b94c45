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
# TREC run files: "qid Q0 docid rank score tag", whitespace separated.
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunRow:
    query_id: str
    doc_id: str
    score: float


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

    Raises :class:`InputError` naming the file and line for a wrong column count, a
    non-numeric or non-finite score, or a (query, doc) pair listed twice.
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
        qid, _, docid, _, score_text, _ = cols
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
    same ranking.
    """
    items = run.items() if isinstance(run, dict) else run
    with atomic_output(path) as tmp, open(tmp, "w", encoding="utf-8") as out:
        for qid, docs in sorted(items, key=lambda item: item[0]):
            for rank, (docid, score) in enumerate(ranked(docs)[:depth], start=1):
                if not math.isfinite(score):
                    raise InputError(f"{path}: score {score} for query {qid!r}, document {docid!r}")
                out.write(f"{qid} Q0 {docid} {rank} {float(score)!r} {tag}\n")


# --------------------------------------------------------------------------------------------
# Qrels: TREC "qid iter docid label" or BEIR "query-id<TAB>corpus-id<TAB>score" with header.
# --------------------------------------------------------------------------------------------
def read_qrels(path: str | os.PathLike) -> dict[str, dict[str, int]]:
    """Read TREC (4 columns) or BEIR TSV (3 columns after a header) qrels, validating each line."""
    path = Path(path)
    qrels: dict[str, dict[str, int]] = {}
    for number, line in _text_lines(path):
        if not line.strip():
            continue
        cols = line.split()
        if number == 1 and cols[:2] == ["query-id", "corpus-id"]:
            continue
        if len(cols) == 4:
            qid, _, docid, label = cols
        elif len(cols) == 3:
            qid, docid, label = cols
        else:
            raise InputError(
                f"{path}:{number}: expected 'qid 0 docid label' or 'qid<TAB>docid<TAB>label', "
                f"got {len(cols)} columns: {line.rstrip()!r}"
            )
        try:
            value = int(label)
        except ValueError:
            raise InputError(
                f"{path}:{number}: relevance label {label!r} is not an integer"
            ) from None
        if docid in qrels.get(qid, {}):
            raise InputError(f"{path}:{number}: document {docid!r} judged twice for query {qid!r}")
        qrels.setdefault(qid, {})[docid] = value
    if not qrels:
        raise InputError(f"{path}: no relevance judgements")
    return qrels


def write_trec_qrels(path: str | os.PathLike, qrels: dict[str, dict[str, int]]) -> None:
    with atomic_output(path) as tmp, open(tmp, "w", encoding="utf-8") as out:
        for qid in sorted(qrels):
            for docid in sorted(qrels[qid]):
                out.write(f"{qid} 0 {docid} {qrels[qid][docid]}\n")
