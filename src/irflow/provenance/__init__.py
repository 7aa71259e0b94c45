"""Per-artifact provenance: what produced a file, from what, with which code, packages and machine.

One JSON record per job, ``<results>/provenance/<rule>/<key>.json`` beside the job's log
``<results>/logs/<rule>/<key>.log``. The record is written by :func:`irflow.job.start`'s exit
hook, which also checks, before the job's work starts, every workflow-made input against the
record of the job that produced it. This package only gathers and compares facts and never
sees Snakemake objects.

Record schema (``schema: irflow.provenance/1``)::

    rule, wildcards, params           what the job was asked to do (params JSON-safe, redacted)
    inputs, outputs                   [{name, path, kind: file|directory|missing, size, sha256,
                                        files (directories only)}]
    code                              {commit, dirty, repository} of the git checkout irflow
                                      was imported from (see environment.code_state)
    packages, python                  versions of the key packages (importlib.metadata, no import)
    container                         {declared (when known), runtime: where the job ran}
    device                            {cpu, gpus, cpu_count, hostname}
    seed, threads                     config seed and the job's threads
    started, ended, wall_s            UTC ISO times and seconds

Modules, by concern (each imports only those listed before it):

* :mod:`.redaction`: credentials never reach a record, log or report;
* :mod:`.digests`: file and directory digests;
* :mod:`.environment`: git state of the code, packages, devices, container;
* :mod:`.records`: build, write, read and find records (output -> record pointers);
* :mod:`.manifest`: every record behind a set of targets, as JSON and Markdown;
* :mod:`.verification`: workflow-made inputs checked against their records.

The names below are re-exported so that ``from irflow import provenance; provenance.X`` works.
"""

from irflow.provenance.digests import IGNORED_IN_DIRECTORIES, describe_path, directory_digest
from irflow.provenance.environment import (
    KEY_PACKAGES,
    code_state,
    container_runtime,
    device_info,
    git_state,
    package_versions,
    python_info,
)
from irflow.provenance.manifest import collect_manifest, manifest_markdown, write_manifest
from irflow.provenance.records import (
    SCHEMA,
    RecordIndex,
    build_record,
    index_records,
    iso,
    json_safe,
    now_iso,
    pointer_path,
    process_start_time,
    read_record,
    record_path,
    write_pointers,
    write_record,
)
from irflow.provenance.redaction import (
    REDACTED,
    environment_secrets,
    is_secret_name,
    redact,
    redact_text,
)
from irflow.provenance.verification import (
    Problem,
    UnverifiedInputError,
    is_workflow_made,
    rebuild_command,
    require_verified,
    stale_inputs,
    verify_inputs,
)

__all__ = [
    "IGNORED_IN_DIRECTORIES",
    "KEY_PACKAGES",
    "REDACTED",
    "SCHEMA",
    "Problem",
    "RecordIndex",
    "UnverifiedInputError",
    "build_record",
    "code_state",
    "collect_manifest",
    "container_runtime",
    "describe_path",
    "device_info",
    "directory_digest",
    "environment_secrets",
    "git_state",
    "index_records",
    "is_secret_name",
    "is_workflow_made",
    "iso",
    "json_safe",
    "manifest_markdown",
    "now_iso",
    "package_versions",
    "pointer_path",
    "process_start_time",
    "python_info",
    "read_record",
    "rebuild_command",
    "record_path",
    "redact",
    "redact_text",
    "require_verified",
    "stale_inputs",
    "verify_inputs",
    "write_manifest",
    "write_pointers",
    "write_record",
]
