"""A reproduction package: one archive from which a reader verifies a published result.

:func:`build_package` writes ``<results>/package/irflow-reproduction.tar.gz`` with, under
``irflow-reproduction/``:

* ``config.yaml``: the configuration the results were made with (the config files merged as
  Snakemake merged them, secrets redacted); ``verify`` plans from it;
* ``envs/``: the lock files (pinned Python packages of the venv and of each container family);
* ``containers.json``: each rule family's image reference (``…@sha256:…`` where the config pins
  one) and the images the provenance manifest recorded;
* ``results/``: every run file, metric table (mean and per query), table (baselines, studies,
  reproduction) and the provenance manifest, at their paths below the results folder;
* ``MANIFEST.json``: the commit and dirty flag of the code, and the size and sha256 of every
  other member.

The archive is deterministic: members in sorted order, owner 0, mtime 0, gzip without a
timestamp, so the same results give the same bytes.

:func:`verify_package` compares an archive with this checkout's own results, made from the
archive's config (``verify_from: rerun``, the default: the workflow recomputed everything), or
with metrics recomputed from the archive's run files (``verify_from: runs``: no training, this
checkout's qrels). Every row gets a status:

* per member: ``edited`` when its bytes no longer match ``MANIFEST.json``;
* per metric row (dataset, run, measure of a ``mean.tsv``): ``reproduced`` (|Δ| ≤ 1e-4, the
  metric tables' last decimal, :data:`irflow.checks.EXACT`), ``within tolerance``
  (|Δ| ≤ ``tolerance``), ``differs``, or ``missing`` (not recomputed here);
* per run file (rerun only): the status of :mod:`irflow.compare` (``reproduced``: the same
  ranking on every topic; ``within tolerance``; ``differs``; ``missing``) with its KTU, RBO and
  nDCG@10 RMSE.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import math
import os
import tarfile
from collections.abc import Mapping
from pathlib import Path

import pandas as pd
import yaml

from irflow.checks import EXACT
from irflow.io import InputError, atomic_output

ROOT = "irflow-reproduction"
ARCHIVE_NAME = "irflow-reproduction.tar.gz"
FORMAT = 1
DEFAULT_TOLERANCE = 0.01
OK_STATUSES = ("reproduced", "within tolerance")
COLUMNS = [
    "kind", "dataset", "run", "measure", "packaged", "recomputed", "delta", "status", "note",
]  # fmt: skip


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _member(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(f"{ROOT}/{name}")
    info.size = len(data)
    info.mode = 0o644
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info, data


def build_package(
    out: str | os.PathLike,
    results_dir: str | os.PathLike,
    results_files: list[str],
    config: Mapping,
    lock_files: list[str],
    containers: Mapping[str, str],
    code_state: Mapping,
    manifest: str | None = None,
) -> dict:
    """Write the archive (see the module docstring); returns its MANIFEST.json content.

    ``results_files`` are paths inside ``results_dir`` (run files, metric tables, tables);
    ``config`` is already redacted; ``code_state`` is {commit, dirty} of the code."""
    results = Path(results_dir)
    members: dict[str, bytes] = {}
    for path in sorted(set(results_files) | ({manifest} if manifest else set())):
        relative = Path(path).resolve().relative_to(results.resolve())
        members[f"results/{relative.as_posix()}"] = Path(path).read_bytes()
    for path in lock_files:
        members[f"envs/{Path(path).name}"] = Path(path).read_bytes()
    members["config.yaml"] = yaml.safe_dump(dict(config), sort_keys=True).encode()
    recorded = {}
    if manifest:
        for job in json.loads(Path(manifest).read_text(encoding="utf-8")).get("jobs", []):
            if job.get("container"):
                recorded[job.get("rule", "")] = job["container"]
    members["containers.json"] = json.dumps(
        {"configured": dict(containers), "recorded_by_jobs": recorded}, indent=2, sort_keys=True
    ).encode()
    index = {
        "format": FORMAT,
        "code": {"commit": code_state.get("commit"), "dirty": code_state.get("dirty")},
        "files": {
            name: {"bytes": len(data), "sha256": _sha256(data)}
            for name, data in sorted(members.items())
        },
    }
    members["MANIFEST.json"] = json.dumps(index, indent=2, sort_keys=True).encode()
    buffer = io.BytesIO()
    with (
        gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0, filename="") as zipped,
        tarfile.open(fileobj=zipped, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for name in sorted(members):
            info, data = _member(name, members[name])
            tar.addfile(info, io.BytesIO(data))
    with atomic_output(out) as tmp:
        tmp.write_bytes(buffer.getvalue())
    return index


def read_package(archive: str | os.PathLike) -> dict[str, bytes]:
    """Every member of a package, by its name below ``irflow-reproduction/``."""
    path = Path(archive)
    if not path.is_file():
        raise InputError(f"package {path}: no such file (give --config package=<archive>)")
    try:
        with tarfile.open(path, mode="r:gz") as tar:
            members = {}
            for info in tar.getmembers():
                if not info.isfile() or not info.name.startswith(f"{ROOT}/"):
                    continue
                members[info.name[len(ROOT) + 1 :]] = tar.extractfile(info).read()
    except (tarfile.TarError, OSError, EOFError) as err:
        raise InputError(f"package {path}: not a readable .tar.gz ({err})") from None
    if "MANIFEST.json" not in members or "config.yaml" not in members:
        raise InputError(
            f"package {path}: no {ROOT}/MANIFEST.json or config.yaml; not an irflow "
            f"reproduction package (snakemake package writes one)"
        )
    return members


def packaged_config(archive: str | os.PathLike) -> dict:
    """The configuration a package's results were made with."""
    return yaml.safe_load(read_package(archive)["config.yaml"]) or {}


VERIFY_KEYS = ("package", "verify_from", "verify_tolerance")


def effective_config(config: Mapping) -> dict:
    """The configuration a workflow run and its jobs follow: with ``package: <archive>`` the
    package's own (``verify`` recomputes what the package was made from) plus the verification
    keys; otherwise ``config`` itself."""
    if not config.get("package"):
        return dict(config)
    packaged = packaged_config(config["package"])
    return {**packaged, **{k: config[k] for k in VERIFY_KEYS if k in config}}


def _integrity(members: Mapping[str, bytes]) -> tuple[list[dict], set[str]]:
    index = json.loads(members["MANIFEST.json"])
    rows, edited = [], set()
    for name, entry in index.get("files", {}).items():
        data = members.get(name)
        if data is None:
            rows.append(_row("file", name=name, status="missing", note="listed, not in archive"))
            edited.add(name)
        elif _sha256(data) != entry["sha256"]:
            note = f"sha256 {_sha256(data)[:12]}… ≠ {entry['sha256'][:12]}… in MANIFEST.json"
            rows.append(_row("file", name=name, status="edited", note=note))
            edited.add(name)
    for name in sorted(set(members) - set(index.get("files", {})) - {"MANIFEST.json"}):
        rows.append(_row("file", name=name, status="edited", note="not listed in MANIFEST.json"))
        edited.add(name)
    return rows, edited


def _row(kind: str, name: str = "", **values) -> dict:
    row = {c: "" for c in COLUMNS} | {"kind": kind, "run": name}
    row.update(values)
    return row


def _mean_rows(data: bytes) -> dict[str, float]:
    frame = pd.read_csv(io.BytesIO(data), sep="\t")
    labels = ("rel_level", "queries", "queries_missing_from_run", "unjudged_run_queries_dropped")
    out = {}
    for column in frame.columns:
        value = pd.to_numeric(frame[column], errors="coerce").iloc[0]
        if column not in labels and not pd.isna(value):
            out[column] = float(value)
    return out


def _metric_key(name: str) -> tuple[str, str] | None:
    """(dataset, run) of ``results/metrics/<dataset>/<run>/mean.tsv``."""
    parts = name.split("/")
    if len(parts) >= 5 and parts[:2] == ["results", "metrics"] and parts[-1] == "mean.tsv":
        return parts[2], "/".join(parts[3:-1])
    return None


def _run_key(name: str) -> tuple[str, str] | None:
    parts = name.split("/")
    if len(parts) >= 4 and parts[:2] == ["results", "runs"] and name.endswith(".trec"):
        return parts[2], "/".join(parts[3:])[: -len(".trec")]
    return None


def classify(delta: float, tolerance: float) -> str:
    if math.isnan(delta):
        return "differs"
    if abs(delta) <= EXACT:
        return "reproduced"
    return "within tolerance" if abs(delta) <= tolerance else "differs"


def verify_package(
    archive: str | os.PathLike,
    results_dir: str | os.PathLike,
    mode: str = "rerun",
    tolerance: float = DEFAULT_TOLERANCE,
    datasets: Mapping[str, Mapping] | None = None,
    measures: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """One row per archive member edited, metric row and run file (see the module docstring).

    ``datasets``: dataset -> {qrels: path, rel_level: int}, this checkout's prepared qrels
    (needed for ``mode='runs'`` and for the run files' RMSE)."""
    if mode not in ("rerun", "runs"):
        raise ValueError(f"verify_from must be 'rerun' or 'runs', not {mode!r}")
    members = read_package(archive)
    rows, edited = _integrity(members)
    results = Path(results_dir)
    datasets = dict(datasets or {})
    recomputed_from_runs: dict[tuple[str, str], dict[str, float]] = {}
    if mode == "runs":
        recomputed_from_runs = _metrics_from_runs(members, datasets, measures)
    for name in sorted(members):
        key = _metric_key(name)
        if key is None:
            continue
        dataset, run = key
        packaged = _mean_rows(members[name])
        if mode == "runs":
            recomputed = recomputed_from_runs.get(key)
        else:
            path = results / "metrics" / dataset / run / "mean.tsv"
            recomputed = _mean_rows(path.read_bytes()) if path.is_file() else None
        note = "edited in the archive" if name in edited else ""
        for measure, value in packaged.items():
            if recomputed is None or measure not in recomputed:
                rows.append(
                    _row("metric", run, dataset=dataset, measure=measure, packaged=value,
                         status="missing", note=note or "not recomputed here")
                )  # fmt: skip
                continue
            delta = recomputed[measure] - value
            rows.append(
                _row("metric", run, dataset=dataset, measure=measure, packaged=value,
                     recomputed=recomputed[measure], delta=delta,
                     status=classify(delta, tolerance), note=note)
            )  # fmt: skip
    if mode == "rerun":
        rows += _run_rows(members, results, datasets, tolerance, edited)
    return pd.DataFrame(rows, columns=COLUMNS)


def _metrics_from_runs(members, datasets, measures) -> dict[tuple[str, str], dict[str, float]]:
    from irflow.evaluate import evaluate_run
    from irflow.io import read_qrels, read_run_dict

    out = {}
    qrels_cache: dict[str, dict] = {}
    with _members_on_disk(members, lambda n: _run_key(n) is not None) as folder:
        for name in sorted(members):
            key = _run_key(name)
            if key is None or key[0] not in datasets:
                continue
            dataset = datasets[key[0]]
            if dataset["qrels"] not in qrels_cache:
                qrels_cache[dataset["qrels"]] = read_qrels(dataset["qrels"])
            mean, _ = evaluate_run(
                read_run_dict(folder / name), qrels_cache[dataset["qrels"]],
                rel=int(dataset.get("rel_level", 1)), measures=measures,
                unjudged="report", run_name=f"{archive_name(name)}",
            )  # fmt: skip
            out[key] = {k: float(v) for k, v in mean.items() if not k.startswith("queries")}
            out[key].pop("unjudged_run_queries_dropped", None)
    return out


def archive_name(name: str) -> str:
    return f"{ROOT}/{name}"


class _members_on_disk:
    """A temporary folder holding the chosen members at their names (run readers take paths)."""

    def __init__(self, members: Mapping[str, bytes], chosen):
        import tempfile

        self._tmp = tempfile.TemporaryDirectory(prefix="irflow-package-")
        self.folder = Path(self._tmp.name)
        for name, data in members.items():
            if chosen(name):
                target = self.folder / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)

    def __enter__(self) -> Path:
        return self.folder

    def __exit__(self, *exc) -> None:
        self._tmp.cleanup()


def _run_rows(members, results: Path, datasets, tolerance: float, edited: set[str]) -> list[dict]:
    from irflow.compare import RunPair, compare_runs

    rows = []
    with _members_on_disk(members, lambda n: _run_key(n) is not None) as folder:
        pairs = []
        for name in sorted(members):
            key = _run_key(name)
            if key is None:
                continue
            dataset, run = key
            ours = results / "runs" / dataset / f"{run}.trec"
            if not ours.is_file() or dataset not in datasets:
                note = "not recomputed here" if not ours.is_file() else "no qrels for dataset"
                rows.append(_row("run", run, dataset=dataset, status="missing", note=note))
                continue
            spec = datasets[dataset]
            pairs.append(
                RunPair(dataset, run, str(ours), str(folder / name), spec["qrels"],
                        int(spec.get("rel_level", 1)))
            )  # fmt: skip
        if pairs:
            compared, _, _ = compare_runs(pairs, ["nDCG@10"], tolerance=tolerance)
            for _, r in compared.iterrows():
                name = f"results/runs/{r['dataset']}/{r['run']}.trec"
                note = f"KTU {r['ktu']:.4f}, RBO {r['rbo']:.4f}, "
                note += f"nDCG@10 RMSE {r['nDCG@10 rmse']:.4g}"
                if name in edited:
                    note = "edited in the archive; " + note
                rows.append(
                    _row("run", r["run"], dataset=r["dataset"], measure="nDCG@10",
                         packaged=r["nDCG@10 reference"], recomputed=r["nDCG@10"],
                         delta=r["nDCG@10 delta"], status=r["status"], note=note)
                )  # fmt: skip
    return rows


def problems(table: pd.DataFrame) -> list[str]:
    """One line per row that is neither reproduced nor within tolerance."""
    lines = []
    for _, r in table.iterrows():
        if r["status"] in OK_STATUSES:
            continue
        what = r["run"] if r["kind"] == "file" else f"{r['dataset']} {r['run']}"
        if r["measure"] and r["kind"] == "metric":
            what += f" {r['measure']}"
        detail = ""
        if r["kind"] == "metric" and r["status"] == "differs":
            detail = f": packaged {r['packaged']:.4f}, recomputed {r['recomputed']:.4f}"
        note = f" ({r['note']})" if r["note"] else ""
        lines.append(f"{r['status'].upper()} {r['kind']} {what}{detail}{note}")
    return lines


def verification_markdown(table: pd.DataFrame, archive: str, mode: str, tolerance: float) -> str:
    counts = table["status"].value_counts().to_dict()
    statuses = ["reproduced", "within tolerance", "differs", "missing", "edited"]
    source = "a rerun of its config here" if mode == "rerun" else "its own run files"
    lines = [
        "# Reproduction package verification",
        "",
        f"Package `{archive}` against {source}. Metric rows: reproduced |Δ| ≤ {EXACT:g}, within "
        f"tolerance |Δ| ≤ {tolerance:g}; run files: reproduced = the same ranking on every "
        f"topic (irflow.compare); files: edited = bytes differ from the package's MANIFEST.json.",
        "",
        ", ".join(f"{counts.get(s, 0)} {s}" for s in statuses),
        "",
    ]
    bad = problems(table)
    if bad:
        lines += ["Not reproduced:", "", *[f"- {line}" for line in bad], ""]
    view = table.copy()
    for column in ("packaged", "recomputed", "delta"):
        view[column] = [
            f"{v:.4f}" if isinstance(v, float) and not math.isnan(v) else "" for v in view[column]
        ]
    lines.append(view.to_markdown(index=False, disable_numparse=True))
    return "\n".join(lines) + "\n"


def write_verification(
    archive: str,
    results_dir: str,
    tsv_out: str,
    markdown_out: str,
    mode: str = "rerun",
    tolerance: float = DEFAULT_TOLERANCE,
    datasets: Mapping[str, Mapping] | None = None,
    measures: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    table = verify_package(archive, results_dir, mode, tolerance, datasets, measures)
    with atomic_output(tsv_out) as tmp:
        table.to_csv(tmp, sep="\t", index=False, float_format="%.6g")
    with atomic_output(markdown_out) as tmp:
        tmp.write_text(verification_markdown(table, archive, mode, tolerance), encoding="utf-8")
    return table
