"""The first line of every workflow script: ``job.start(snakemake)``.

It sends the job's logging (and stray stderr) to the rule's log file with credentials redacted,
checks every workflow-made input against the provenance record of the job that produced it
(refusing, with :class:`irflow.provenance.UnverifiedInputError`, an input that is stale,
missing or unrecorded, before the script does any work), and registers an exit hook that
writes the job's provenance record (``<results>/provenance/<rule>/<key>.json``, see
:mod:`irflow.provenance`) once the script has finished successfully, i.e. raised nothing and
left every declared output in place. A failed job leaves no record, just as it leaves no
output.

This module reads the ``snakemake`` object only to turn it into plain values; everything else
lives in :mod:`irflow.provenance`.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import time
from pathlib import Path

from irflow import logs, provenance

log = logging.getLogger(__name__)


class RedactingStream:
    """A text stream wrapper that blanks credentials before they reach the log file."""

    def __init__(self, stream, secrets: list[str]):
        self._stream = stream
        self._secrets = secrets

    def write(self, text: str) -> int:
        self._stream.write(provenance.redact_text(text, self._secrets))
        return len(text)

    def __getattr__(self, name):
        return getattr(self._stream, name)


def _named_paths(namedlist) -> list[tuple[str | None, str]]:
    """(name, path) of every entry of a Snakemake Namedlist (None for unnamed entries)."""
    names: dict[int, str] = {}
    for name, span in getattr(namedlist, "_names", {}).items():
        start, end = span
        for index in range(start, (end if end is not None else start + 1)):
            names[index] = name
    return [(names.get(i), str(path)) for i, path in enumerate(namedlist)]


def _items(namedlist) -> dict:
    if hasattr(namedlist, "items"):
        return dict(namedlist.items())
    return {}


def _workflow_code(scriptdir: str | None, code: dict) -> dict | None:
    """git state of the scripts' checkout, only where it is not the one irflow came from."""
    if not scriptdir:
        return None
    repository = code.get("repository")
    if repository and Path(scriptdir).resolve().is_relative_to(repository):
        return None
    state = provenance.git_state(scriptdir)
    return state if state.get("repository") else None


class _Job:
    def __init__(self, snakemake):
        self.snakemake = snakemake
        self.t0 = provenance.process_start_time()
        self.started = provenance.iso(self.t0)
        self.failed = False
        config = dict(snakemake.config or {})
        if config.get("package"):
            from irflow.package import effective_config

            # Verifying a package: its own config decides the results folder and the records.
            config = effective_config(config)
        self.config = config
        self.results_dir = config.get("results_dir", "results")
        # Digests of the verified inputs, taken at the start and reused by the record.
        self.described: dict[str, dict] = {}

    def mark_failed(self, *exc_info) -> None:
        self.failed = True
        self._previous_hook(*exc_info)

    def verify_inputs(self) -> None:
        """Refuse the job if a workflow-made input is not what its producer recorded."""
        paths = [path for _, path in _named_paths(self.snakemake.input)]
        try:
            self.described = provenance.require_verified(
                self.results_dir, paths, self.snakemake.rule
            )
        except provenance.UnverifiedInputError as err:
            for problem in err.problems:
                log.error("%s", problem)
            raise

    def finish(self) -> None:
        """Exit hook: write the record if the job succeeded; never turn success into failure."""
        smk = self.snakemake
        outputs = _named_paths(smk.output)
        if self.failed or not outputs or not all(os.path.exists(p) for _, p in outputs):
            return
        try:
            code = provenance.code_state()
            record = provenance.build_record(
                rule=smk.rule,
                wildcards=_items(smk.wildcards),
                params=_items(smk.params),
                inputs=_named_paths(smk.input),
                outputs=outputs,
                code=code,
                config=self.config,
                threads=smk.threads,
                started=self.started,
                ended=provenance.now_iso(),
                wall_s=time.time() - self.t0,
                log=smk.log[0] if len(smk.log) else None,
                described=self.described,
            )
            workflow = _workflow_code(getattr(smk, "scriptdir", None), code)
            if workflow is not None:
                record["workflow_code"] = workflow
            key = "/".join(str(v) for v in _items(smk.wildcards).values())
            path = provenance.record_path(
                self.results_dir, smk.log[0] if len(smk.log) else None, smk.rule, key
            )
            provenance.write_record(path, record)
            provenance.write_pointers(self.results_dir, path, record)
            log.info("provenance record: %s", path)
        except Exception:  # noqa: BLE001 (the job's outputs are fine; say so loudly in the log)
            log.exception("could not write the provenance record")


def start(snakemake, level: int = logging.INFO) -> _Job:
    """Set up the job: logging to the rule's log (redacted), its workflow-made inputs verified
    against their provenance records, and its own record written on successful exit.

    Call it first in every workflow script: ``from irflow import job; job.start(snakemake)``.
    Raises :class:`irflow.provenance.UnverifiedInputError` (an :class:`irflow.io.InputError`)
    naming each input that is stale, missing or has no record, with the command that rebuilds
    it. Returns the job handle (its ``finish`` runs at exit; tests may call it directly).
    """
    log_file = snakemake.log[0] if len(snakemake.log) else None
    logs.to_file(log_file, level=level)
    secrets = provenance.environment_secrets()
    sys.stderr = RedactingStream(sys.stderr, secrets)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(sys.stderr)

    job = _Job(snakemake)
    job._previous_hook = sys.excepthook
    sys.excepthook = job.mark_failed
    atexit.register(job.finish)
    job.verify_inputs()
    return job
