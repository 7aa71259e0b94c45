"""DAG benchmark: how long Snakemake takes to plan irflow at paper scale, and how much memory.

What it measures
    The wall time and peak resident memory of ``snakemake -n --quiet rules`` (a dry run: parse
    the Snakefile, validate the config, build and print the job DAG; nothing is executed) on
    the paper configuration (``configs/paper.yaml``) and on synthetic enlargements of it. A
    scale-``k`` config holds ``k`` copies of every dataset (each copy with its own corpus and
    its own baselines), so it plans about ``k`` times the paper's jobs; scale 2 already gives
    more than 1,000 jobs. Every generated config is validated against
    ``schemas/config.schema.yaml`` before it is used.

    Each dry run starts in a fresh, empty working directory (``--directory``), so every job is
    planned (nothing is up to date), the repository's ``results/`` and ``.snakemake/`` are never
    touched, and a workflow running in the repository at the same time does not lock it out.
    Peak memory is that of the Snakemake process, read from ``/usr/bin/time -v`` where it
    exists, else from the ``rusage`` that ``os.wait4`` returns for the child.

    Optionally (on by default) one more dry run of the largest scale runs under ``cProfile``:
    the report lists where the time goes, the functions of the workflow's own code
    (``rules/*.smk``, ``Snakefile``) first. Profiled times are inflated by the profiler; read
    them as shares, not as timings.

How to run (from the repository root, with the project's virtual environment)
    . .venv/bin/activate
    python benchmarks/dag.py                   # scales 1 2 4, 3 repeats each, plus a profile
    python benchmarks/dag.py --scales 2 --repeats 5 --no-profile
    python benchmarks/dag.py --config config.yaml --scales 1     # any other config

    It needs no network and no GPU (ir_datasets ids and hub ids are not resolved by a dry run).

Where results go
    benchmarks/results/dag.json   every figure, per run, with the machine and the command line
    benchmarks/results/dag.md     a short human-readable summary of the same
"""

from __future__ import annotations

import argparse
import copy
import os
import pstats
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from common import RESULTS, ROOT, load_average, machine, now, timed, write_results

SCHEMA = ROOT / "schemas" / "config.schema.yaml"
SNAKEFILE = ROOT / "Snakefile"
TARGET_SECONDS = 5.0
GNU_TIME = "/usr/bin/time"


# ---------------------------------------------------------------------------------------------
# Synthetic configurations
# ---------------------------------------------------------------------------------------------
def scaled_config(base: dict[str, Any], scale: int) -> dict[str, Any]:
    """``scale`` copies of every dataset, each with its own corpus and its own baselines.

    Copy ``c`` (2..scale) of dataset ``d`` is ``d-x<c>``, reading corpus ``<corpus>-x<c>``; the
    models, retrievers, rerankers, evaluation and resources are shared. Datasets that shared a
    corpus in the base config share the copied corpus too, so the DAG keeps its shape.
    """
    if scale < 1:
        raise ValueError("scale must be >= 1")
    config = copy.deepcopy(base)
    datasets = base["datasets"]
    for c in range(2, scale + 1):
        for name, entry in datasets.items():
            new = copy.deepcopy(entry)
            new["corpus"] = f"{entry.get('corpus', name)}-x{c}"
            config["datasets"][f"{name}-x{c}"] = new
        for baseline in base["baselines"]:
            config["baselines"].append(
                {**copy.deepcopy(baseline), "dataset": f"{baseline['dataset']}-x{c}"}
            )
    return config


def validate(config: dict[str, Any]) -> None:
    schema = yaml.safe_load(SCHEMA.read_text())
    jsonschema.Draft202012Validator(schema).validate(config)


# ---------------------------------------------------------------------------------------------
# Running one dry run
# ---------------------------------------------------------------------------------------------
def snakemake_command(configfile: Path, workdir: Path) -> list[str]:
    return [
        sys.executable, "-m", "snakemake",
        "--dry-run", "--quiet", "rules",  # bare --quiet would hide the job stats as well
        "--snakefile", str(SNAKEFILE),
        "--directory", str(workdir),
        "--configfile", str(configfile),
        "--cores", "1",
    ]  # fmt: skip


JOB_LINE = re.compile(r"^(\S+)\s+(\d+)\s*$")


def job_stats(output: str) -> dict[str, int]:
    """The 'Job stats:' table of a dry run as {rule: count}, with 'total'."""
    lines = output.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "Job stats:")
    except StopIteration:
        raise RuntimeError("no 'Job stats:' table in the dry run's output") from None
    counts: dict[str, int] = {}
    for line in lines[start + 3 :]:  # skip the header and its rule
        match = JOB_LINE.match(line)
        if not match:
            break
        counts[match.group(1)] = int(match.group(2))
    if "total" not in counts:
        raise RuntimeError("the job stats table has no 'total' line")
    return counts


def peak_rss_from_gnu_time(report: str) -> int | None:
    match = re.search(r"Maximum resident set size \(kbytes\):\s*(\d+)", report)
    return int(match.group(1)) if match else None


def dry_run(configfile: Path, scratch: Path) -> dict[str, Any]:
    """One dry run in a fresh working directory: wall seconds, peak RSS (MB), job counts."""
    workdir = Path(tempfile.mkdtemp(prefix="work-", dir=scratch))
    command = snakemake_command(configfile, workdir)
    timing_file = scratch / "gnu-time.txt"
    use_gnu_time = os.access(GNU_TIME, os.X_OK)
    if use_gnu_time:
        command = [GNU_TIME, "-v", "-o", str(timing_file), *command]
    out_path = scratch / "stdout.txt"
    with open(out_path, "wb") as out:
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        # wait4 gives this child's own rusage (RUSAGE_CHILDREN would mix in earlier runs).
        _, status, rusage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    output = out_path.read_text(errors="replace")
    if process.returncode != 0:
        raise RuntimeError(
            f"dry run failed ({process.returncode}):\n{' '.join(command)}\n{output[-4000:]}"
        )
    rss_kb = peak_rss_from_gnu_time(timing_file.read_text()) if use_gnu_time else None
    source = "/usr/bin/time -v"
    if rss_kb is None:
        rss_kb, source = rusage.ru_maxrss, "os.wait4 rusage"  # kilobytes on Linux
    shutil.rmtree(workdir, ignore_errors=True)
    return {
        "wall_s": round(wall, 3),
        "peak_rss_mb": round(rss_kb / 1024, 1),
        "rss_source": source,
        "user_s": round(rusage.ru_utime, 3),
        "sys_s": round(rusage.ru_stime, 3),
        "jobs": job_stats(output),
    }


def startup_seconds(repeats: int) -> float:
    """Median wall time of `snakemake --version`: the fixed cost of starting Snakemake."""
    command = [sys.executable, "-m", "snakemake", "--version"]
    walls = [
        timed(lambda: subprocess.run(command, capture_output=True, check=True))[1]["wall_s"]
        for _ in range(repeats)
    ]
    return round(statistics.median(walls), 3)


# ---------------------------------------------------------------------------------------------
# Profile of one dry run
# ---------------------------------------------------------------------------------------------
def _where(filename: str) -> str:
    """A short location: package-relative for libraries, repo-relative for the workflow."""
    parts = Path(filename).parts
    if "site-packages" in parts:
        return "/".join(parts[parts.index("site-packages") + 1 :])
    try:
        return str(Path(filename).resolve().relative_to(ROOT))
    except (ValueError, OSError):
        pass
    if "lib" in parts and any(p.startswith("python3") for p in parts):
        return "stdlib/" + "/".join(parts[-1:])  # e.g. stdlib/inspect.py
    return filename


def _is_workflow_code(where: str) -> bool:
    return where.startswith("rules/") or where == "Snakefile"


def _package(where: str) -> str:
    if _is_workflow_code(where):
        return "workflow code (rules/*.smk, Snakefile)"
    if where.startswith(("~", "<")):
        return "builtins and frozen importlib"
    head = where.split("/")[0]
    return head.removesuffix(".py") if head != "stdlib" else "python stdlib"


# Where the dry run spends its time, as cumulative times of the Snakemake functions that
# delimit each phase. The phases overlap (a resource evaluation happens inside DAG building or
# job printing), so they do not add up to the total.
PHASES: list[tuple[str, str, str]] = [
    ("Python imports (all modules)", "<frozen importlib._bootstrap>", "_find_and_load"),
    ("parse Snakefile + rules/*.smk", "snakemake/workflow.py", "include"),
    ("config validation (snakemake.utils.validate)", "snakemake/utils.py", "validate"),
    ("build the DAG", "snakemake/workflow.py", "_build_dag"),
    ("print the dry-run jobs", "snakemake/executors/dryrun.py", "printjob"),
    ("evaluate rule input (input functions)", "snakemake/rules.py", "expand_input"),
    ("evaluate rule params (params lambdas)", "snakemake/rules.py", "expand_params"),
    ("evaluate rule resources (resources_for lambdas)", "snakemake/rules.py", "expand_resources"),
    ("look up script: sources (per job)", "snakemake/script/__init__.py", "get_source"),
    ("conda env spec per job", "snakemake/jobs.py", "conda_env_spec"),
    ("inspect.signature (callable introspection)", "stdlib/inspect.py", "signature"),
]


def profile_dry_run(configfile: Path, scratch: Path, top: int = 15) -> dict[str, Any]:
    """Run one dry run under cProfile and summarise it."""
    workdir = Path(tempfile.mkdtemp(prefix="profile-", dir=scratch))
    prof = scratch / "dag.prof"
    base = snakemake_command(configfile, workdir)
    command = [base[0], "-m", "cProfile", "-o", str(prof), *base[1:]]
    start = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    shutil.rmtree(workdir, ignore_errors=True)
    if result.returncode != 0:
        raise RuntimeError(
            f"profiled dry run failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
        )
    stats = pstats.Stats(str(prof))
    rows = []
    for (filename, line, func), (_cc, ncalls, tottime, cumtime, _callers) in stats.stats.items():
        where = _where(filename)
        rows.append(
            {
                "function": func,
                "file": where,
                "where": f"{where}:{line}",
                "calls": ncalls,
                "tottime_s": round(tottime, 4),
                "cumtime_s": round(cumtime, 4),
                "workflow_code": _is_workflow_code(where),
            }
        )

    def ranked(items, key):
        return sorted(items, key=lambda r: r[key], reverse=True)[:top]

    phases = {}
    for label, file, func in PHASES:
        matches = [r for r in rows if r["function"] == func and r["file"].endswith(file)]
        if matches:
            phases[label] = {
                "cumtime_s": round(max(r["cumtime_s"] for r in matches), 3),
                "calls": sum(r["calls"] for r in matches),
            }
    by_package: dict[str, float] = {}
    for row in rows:
        package = _package(row["file"])
        by_package[package] = by_package.get(package, 0.0) + row["tottime_s"]
    workflow_rows = [r for r in rows if r["workflow_code"]]
    callables = [r for r in workflow_rows if r["function"] != "<module>"]
    return {
        "wall_s_under_profiler": round(wall, 3),
        "profiled_total_s": round(stats.total_tt, 3),
        "phases": phases,
        "exclusive_by_package": dict(
            sorted(((k, round(v, 3)) for k, v in by_package.items()), key=lambda kv: -kv[1])[:10]
        ),
        "top_cumulative": ranked(rows, "cumtime_s"),
        "top_exclusive": ranked(rows, "tottime_s"),
        "workflow_code_cumulative": ranked(workflow_rows, "cumtime_s"),
        "workflow_code_exclusive_total_s": round(sum(r["tottime_s"] for r in workflow_rows), 4),
        "workflow_callable_calls": sum(r["calls"] for r in callables),
    }


# ---------------------------------------------------------------------------------------------
# Machine description
# ---------------------------------------------------------------------------------------------
def dag_machine() -> dict[str, Any]:
    """The machine (:func:`common.machine`), the Snakemake version and how peak RSS is read."""
    version = subprocess.run(
        [sys.executable, "-m", "snakemake", "--version"], capture_output=True, text=True, check=True
    ).stdout.strip()
    return {
        **machine(),
        "snakemake": version,
        "peak_rss_method": "/usr/bin/time -v"
        if os.access(GNU_TIME, os.X_OK)
        else "os.wait4 rusage",
    }


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------
def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    walls = [r["wall_s"] for r in runs]
    rss = [r["peak_rss_mb"] for r in runs]
    cpu = [r["user_s"] + r["sys_s"] for r in runs]
    return {
        "wall_s_median": round(statistics.median(walls), 3),
        "cpu_s_median": round(statistics.median(cpu), 3),
        "wall_s_min": min(walls),
        "wall_s_max": max(walls),
        "peak_rss_mb_max": max(rss),
        "peak_rss_mb_median": round(statistics.median(rss), 1),
    }


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        "# DAG benchmark: `snakemake --dry-run` at paper scale",
        "",
        f"Generated {report['generated']} by `benchmarks/dag.py` "
        f"(base config `{report['base_config']}`, {report['repeats']} repeats per scale). "
        "Each dry run plans every job from an empty working directory.",
        "",
        "## Machine",
        "",
        f"- CPU: {m['cpu_model']}, {m['logical_cpus']} logical CPUs ({m['usable_cpus']} usable)",
        f"- Memory: {m['memory_gb']} GB",
        f"- OS: {m['os']}",
        f"- Python {m['python']}, Snakemake {m['snakemake']}",
        f"- Load average before / after the runs: {report['load_before']} / {report['load_after']}"
        " (1, 5, 15 min; anything above 0 is other work sharing the CPUs)",
        "",
        "## Results",
        "",
        f"Target: under {report['target_s']:.0f} s per dry run. Peak RSS is that of the Snakemake "
        f"process ({m['peak_rss_method']}); CPU s is its user + system time, which other work "
        "on the machine inflates less than wall time. For reference, `snakemake --version` "
        f"(interpreter start, imports, plugin discovery; no workflow) takes "
        f"{report['startup_s_median']:.2f} s (median of {report['repeats']}).",
        "",
        "| scale | datasets | jobs | wall s (median) | wall s (min-max) | CPU s (median) "
        "| peak RSS MB | under target |",
        "|---:|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    for s in report["scales"]:
        summary = s["summary"]
        ok = "yes" if summary["wall_s_median"] < report["target_s"] else "**no**"
        lines.append(
            f"| {s['scale']} | {s['datasets']} | {s['jobs']} | {summary['wall_s_median']:.2f} | "
            f"{summary['wall_s_min']:.2f}-{summary['wall_s_max']:.2f} | "
            f"{summary['cpu_s_median']:.2f} | {summary['peak_rss_mb_max']:.0f} | {ok} |"
        )
    largest = report["scales"][-1]
    lines += [
        "",
        f"Jobs per rule at scale {largest['scale']}: "
        + ", ".join(f"{k} {v}" for k, v in largest["jobs_per_rule"].items() if k != "total")
        + ".",
    ]
    if len(report["scales"]) > 1:
        first = report["scales"][0]
        per_job = [
            (s["scale"], 1000 * s["summary"]["wall_s_median"] / s["jobs"]) for s in report["scales"]
        ]
        lines += [
            "",
            "Milliseconds per planned job (median wall / jobs): "
            + ", ".join(f"scale {k}: {v:.2f}" for k, v in per_job)
            + f". From scale {first['scale']} to {largest['scale']} the jobs grow "
            f"{largest['jobs'] / first['jobs']:.1f}x and the time "
            f"{largest['summary']['wall_s_median'] / first['summary']['wall_s_median']:.1f}x.",
        ]
        fit, cpu = report.get("fit"), report.get("fit_cpu")
        if fit and cpu:
            lines += [
                "",
                f"Least-squares fits over the scales: wall s = {fit['fixed_s']:.2f} + "
                f"{fit['ms_per_job']:.2f} ms x jobs (the {report['target_s']:.0f} s target is "
                f"reached at about {fit['jobs_at_target']} jobs); CPU s = {cpu['fixed_s']:.2f} + "
                f"{cpu['ms_per_job']:.2f} ms x jobs (about {cpu['jobs_at_target']} jobs). A dry "
                "run is single-threaded, so on an otherwise idle core its wall time is close to "
                "its CPU time.",
            ]
    profile = report.get("profile")
    if profile:
        lines += [
            "",
            f"## Where the time goes (cProfile, scale {profile['scale']})",
            "",
            f"Profiled run: {profile['wall_s_under_profiler']:.2f} s wall under the profiler, "
            f"{profile['profiled_total_s']:.2f} s of profiled time; the workflow's own code "
            "(rules/*.smk, Snakefile) accounts for "
            f"{profile['workflow_code_exclusive_total_s']:.3f} s "
            "exclusive of the calls it makes into Snakemake and libraries.",
            "",
            "Exclusive time by package (s): "
            + ", ".join(f"{k} {v}" for k, v in profile["exclusive_by_package"].items())
            + ".",
            "",
            "Phases (cumulative time of the Snakemake function that delimits each; they overlap):",
            "",
            "| phase | calls | cumulative s | share of profiled time |",
            "|---|---:|---:|---:|",
        ]
        for label, phase in profile["phases"].items():
            share = phase["cumtime_s"] / profile["profiled_total_s"]
            lines.append(f"| {label} | {phase['calls']} | {phase['cumtime_s']:.2f} | {share:.0%} |")
        lines += [
            "",
            "Top functions by exclusive (own) time:",
            "",
            "| function | where | calls | own s | cumulative s |",
            "|---|---|---:|---:|---:|",
        ]
        for row in profile["top_exclusive"][:10]:
            lines.append(
                f"| `{row['function']}` | {row['where']} | {row['calls']} | "
                f"{row['tottime_s']:.3f} | {row['cumtime_s']:.3f} |"
            )
        lines += [
            "",
            "Workflow code (rules/*.smk, Snakefile) by cumulative time:",
            "",
            "| function | where | calls | cumulative s | own s |",
            "|---|---|---:|---:|---:|",
        ]
        for row in profile["workflow_code_cumulative"][:10]:
            lines.append(
                f"| `{row['function']}` | {row['where']} | {row['calls']} | "
                f"{row['cumtime_s']:.3f} | {row['tottime_s']:.3f} |"
            )
    if report.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {note}" for note in report["notes"]]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--config", default="configs/paper.yaml", help="base config (default: %(default)s)"
    )
    parser.add_argument(
        "--scales", type=int, nargs="+", default=[1, 2, 4], help="copies of every dataset"
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="dry runs per scale (default: %(default)s)"
    )
    parser.add_argument("--no-profile", action="store_true", help="skip the cProfile run")
    parser.add_argument(
        "--out", type=Path, default=RESULTS, help="results folder (default: benchmarks/results)"
    )
    parser.add_argument("--note", action="append", default=[], help="a line for the report's notes")
    args = parser.parse_args(argv)

    base_path = (ROOT / args.config).resolve()
    base = yaml.safe_load(base_path.read_text())
    validate(base)
    report: dict[str, Any] = {
        "generated": now(),
        "base_config": str(base_path.relative_to(ROOT))
        if base_path.is_relative_to(ROOT)
        else str(base_path),
        "repeats": args.repeats,
        "target_s": TARGET_SECONDS,
        "machine": dag_machine(),
        "load_before": load_average(),
        "startup_s_median": startup_seconds(args.repeats),
        "scales": [],
        "notes": list(args.note),
    }
    with tempfile.TemporaryDirectory(prefix="irflow-dag-") as tmp:
        scratch = Path(tmp)
        configfile = scratch / "config.yaml"
        for scale in sorted(set(args.scales)):
            config = scaled_config(base, scale)
            validate(config)
            configfile = scratch / f"config-x{scale}.yaml"
            configfile.write_text(yaml.safe_dump(config, sort_keys=False))
            runs = []
            for repeat in range(args.repeats):
                run = dry_run(configfile, scratch)
                runs.append(run)
                print(
                    f"scale {scale} run {repeat + 1}/{args.repeats}: {run['jobs']['total']} jobs, "
                    f"{run['wall_s']:.2f} s, {run['peak_rss_mb']:.0f} MB",
                    flush=True,
                )
            jobs = {run["jobs"]["total"] for run in runs}
            if len(jobs) != 1:
                raise RuntimeError(f"scale {scale}: job counts differ between repeats: {jobs}")
            report["scales"].append(
                {
                    "scale": scale,
                    "datasets": len(config["datasets"]),
                    "baselines": len(config["baselines"]),
                    "jobs": jobs.pop(),
                    "jobs_per_rule": runs[0]["jobs"],
                    "summary": summarise(runs),
                    "runs": [{k: v for k, v in r.items() if k != "jobs"} for r in runs],
                }
            )
        if not args.no_profile:
            print(f"profiling one dry run at scale {max(args.scales)} ...", flush=True)
            report["profile"] = {"scale": max(args.scales), **profile_dry_run(configfile, scratch)}
    report["load_after"] = load_average()
    if len(report["scales"]) > 1:
        jobs = [sc["jobs"] for sc in report["scales"]]
        for key, figure in (("fit", "wall_s_median"), ("fit_cpu", "cpu_s_median")):
            seconds = [sc["summary"][figure] for sc in report["scales"]]
            slope, intercept = statistics.linear_regression(jobs, seconds)
            report[key] = {
                "fixed_s": round(intercept, 3),
                "ms_per_job": round(1000 * slope, 3),
                "jobs_at_target": int((TARGET_SECONDS - intercept) / slope) if slope > 0 else None,
            }
    report["command"] = ["snakemake", *snakemake_command(Path("<config>"), Path("<empty dir>"))[3:]]
    write_results(args.out, "dag", report, markdown(report))
    for s in report["scales"]:
        print(
            f"scale {s['scale']}: {s['jobs']} jobs, median {s['summary']['wall_s_median']:.2f} s, "
            f"peak {s['summary']['peak_rss_mb_max']:.0f} MB"
        )
    print(f"wrote {args.out / 'dag.json'} and {args.out / 'dag.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
