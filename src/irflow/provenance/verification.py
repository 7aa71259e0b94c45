"""Trust nothing unverified: compare workflow-made files with their producers' records.

A path is *workflow-made* when it lies in the results folder outside ``logs/`` and
``benchmarks/`` (which Snakemake itself writes, not a job); everything else a job reads
(source collections such as ``../shared/data``, ``resources/models``) has no producer and is
not checked here; its digest is still recorded by the job that reads it.

A workflow-made path is trusted when the record of the job that wrote it lists it among its
outputs and the file, or the directory digest, is what that record says. Otherwise it is

* ``stale``: the bytes differ from the record (edited, truncated, half-copied);
* ``missing``: recorded, but no longer on disk;
* ``unrecorded``: no record lists it (made by hand, or its record was lost);
* ``outdated`` (only when walking back, :func:`stale_inputs`): the job that made it recorded an
  input whose producer has since recorded a different digest, i.e. it was built from an old
  version of that input.

Each problem names the file, the record and the command that rebuilds it. :func:`verify_inputs`
checks a job's direct inputs (see :func:`irflow.job.start`); :func:`stale_inputs` walks back
from a set of paths through every record behind them (see ``workflow_scripts/check_reproduction``).
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from irflow.io import InputError
from irflow.provenance.digests import describe_path
from irflow.provenance.records import RecordIndex

# The command that rebuilds an artifact; run from the workflow's working directory.
SNAKEMAKE = "snakemake --profile profiles/local"
# Folders of the results directory that Snakemake writes itself (no job records them).
NOT_PRODUCED = ("logs", "benchmarks")


def rebuild_command(path: str, rule: str | None = None) -> str:
    """``snakemake ... <path> --forcerun <rule>``; ``--force <path>`` when the rule is unknown.

    The target comes first: ``--forcerun`` takes any number of values, so a target after it
    would be read as one more rule and the default target built instead.
    """
    if rule:
        return f"{SNAKEMAKE} {shlex.quote(path)} --forcerun {shlex.quote(rule)}"
    return f"{SNAKEMAKE} --force {shlex.quote(path)}"


@dataclass(frozen=True)
class Problem:
    """One artifact that cannot be trusted; ``str()`` is its one-line message."""

    path: str
    status: str  # stale | missing | unrecorded | outdated
    detail: str
    record: str | None = None
    rule: str | None = None

    @property
    def command(self) -> str:
        return rebuild_command(self.path, self.rule)

    def __str__(self) -> str:
        record = self.record or "none"
        return (
            f"{self.status.upper()} {self.path}: {self.detail}; record: {record}; "
            f"rebuild: {self.command}"
        )


class UnverifiedInputError(InputError):
    """A job's workflow-made input does not match (or lacks) its producer's record."""

    def __init__(self, problems: Iterable[Problem], rule: str | None = None):
        self.problems = list(problems)
        who = f"rule {rule}" if rule else "this job"
        lines = [f"{who} refuses {len(self.problems)} input(s) it cannot verify:"]
        lines += [f"  {problem}" for problem in self.problems]
        super().__init__("\n".join(lines))


def is_workflow_made(results_dir: str | os.PathLike, path: str | os.PathLike) -> bool:
    """Whether ``path`` lies in the results folder where only jobs write (see module doc)."""
    rel = os.path.relpath(os.path.abspath(path), os.path.abspath(results_dir))
    if rel == os.curdir or rel == os.pardir or rel.startswith(os.pardir + os.sep):
        return False
    return Path(rel).parts[0] not in NOT_PRODUCED


def _short(digest: str | None) -> str:
    return (digest or "none")[:12]


def difference(recorded: Mapping, now: Mapping) -> tuple[str, str] | None:
    """(status, detail) when ``now`` (a describe_path entry) is not what was ``recorded``."""
    if now["kind"] == "missing":
        return "missing", f"{recorded.get('kind', 'file')} no longer exists"
    if now["kind"] != recorded.get("kind"):
        return "stale", f"is a {now['kind']} now, recorded as a {recorded.get('kind')}"
    if now["size"] == recorded.get("size") and now["sha256"] == recorded.get("sha256"):
        return None
    unit = f" in {now.get('files')} files" if now["kind"] == "directory" else ""
    return "stale", (
        f"changed after it was recorded: now {now['size']} bytes{unit}, sha256 "
        f"{_short(now['sha256'])}; recorded {recorded.get('size')} bytes, sha256 "
        f"{_short(recorded.get('sha256'))}"
    )


@dataclass
class Verifier:
    """Checks paths of one results folder, hashing each at most once."""

    results_dir: str | os.PathLike
    index: RecordIndex = field(init=False)
    described: dict[str, dict] = field(default_factory=dict)

    def __post_init__(self):
        self.index = RecordIndex(self.results_dir)

    def describe(self, path: str) -> dict:
        if path not in self.described:
            self.described[path] = describe_path(path)
        return self.described[path]

    def check(self, path: str) -> tuple[Problem | None, tuple | None]:
        """(problem or None, the producer found) of one workflow-made path."""
        found = self.index.producer(path)
        if found is None:
            where = Path(self.results_dir) / "provenance"
            exists = os.path.exists(path)
            detail = ("has" if exists else "does not exist and has") + (
                f" no provenance record: no record under {where} lists it as an output "
                "(made by hand, or by a job whose record was lost)"
            )
            return Problem(path, "unrecorded", detail), None
        artifact, file, record, entry = found
        changed = difference(entry, self.describe(artifact))
        if changed is None:
            return None, found
        status, detail = changed
        detail = f"{detail} (made by rule {record.get('rule')})"
        if artifact != os.path.normpath(path):
            detail = f"inside {artifact}, which {detail}"
        return Problem(path, status, detail, str(file), record.get("rule")), found


def verify_inputs(
    results_dir: str | os.PathLike, paths: Iterable[str]
) -> tuple[dict[str, dict], list[Problem]]:
    """Check a job's inputs: (describe_path entry of every checked input, problems).

    The entries are the digests taken for the check; the job's own record reuses them so no
    input is hashed twice. Inputs outside the results folder are neither checked nor hashed.
    """
    verifier = Verifier(results_dir)
    described: dict[str, dict] = {}
    problems: list[Problem] = []
    for path in dict.fromkeys(paths):
        if not is_workflow_made(results_dir, path):
            continue
        problem, found = verifier.check(path)
        if problem is not None:
            problems.append(problem)
        if found is not None and found[0] == os.path.normpath(path):
            described[path] = {**verifier.describe(found[0]), "path": path}
    return described, problems


def require_verified(
    results_dir: str | os.PathLike, paths: Iterable[str], rule: str | None = None
) -> dict[str, dict]:
    """:func:`verify_inputs`, raising :class:`UnverifiedInputError` on any problem."""
    described, problems = verify_inputs(results_dir, paths)
    if problems:
        raise UnverifiedInputError(problems, rule)
    return described


def stale_inputs(results_dir: str | os.PathLike, paths: Iterable[str]) -> list[Problem]:
    """Every stale, missing, unrecorded or outdated artifact behind ``paths``, the paths
    themselves included, found by walking back through the records' inputs."""
    verifier = Verifier(results_dir)
    problems: list[Problem] = []
    queue = [os.path.normpath(p) for p in paths]
    seen: set[str] = set()
    while queue:
        path = queue.pop(0)
        if path in seen or not is_workflow_made(results_dir, path):
            continue
        seen.add(path)
        problem, found = verifier.check(path)
        if problem is not None:
            problems.append(problem)
        if found is None:
            continue
        artifact, file, record, _ = found
        for entry in record.get("inputs", []):
            source = os.path.normpath(entry["path"])
            if not is_workflow_made(results_dir, source):
                continue
            producer = verifier.index.lookup(source)
            if producer is not None and (
                producer[2].get("sha256") != entry.get("sha256")
                or producer[2].get("size") != entry.get("size")
            ):
                problems.append(
                    Problem(
                        artifact,
                        "outdated",
                        f"rule {record.get('rule')} made it from {source} with sha256 "
                        f"{_short(entry.get('sha256'))}, but that input was rebuilt since "
                        f"(sha256 {_short(producer[2].get('sha256'))}, record {producer[0]})",
                        str(file),
                        record.get("rule"),
                    )
                )
            queue.append(source)
    return problems
