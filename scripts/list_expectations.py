"""List every published figure a configuration checks, without running anything.

    python scripts/list_expectations.py configs/studies/optimizers.yaml
    python scripts/list_expectations.py --format tsv configs/paper.yaml

Prints one Markdown (or TSV) table of the config's ``expectations:``: dataset, run, measure,
expected value, tolerance (ok / ok-ish, and whether strict), source, and status: the measured
value with its class (exact, ok, ok-ish, missed) where the run's metric table
``<results_dir>/metrics/<dataset>/<run>/mean.tsv`` exists, otherwise "not yet measured", or
"not configured" where no baseline or study of the config produces that run (such a row can
never be measured: `snakemake check` reports it missing).

`snakemake reproduction_table` cannot do this on a fresh checkout: its inputs are the metric
files of every configured expectation, so it first builds them, i.e. runs the whole study.
This script reads the config the way the workflow does (several files merge as Snakemake's
--configfile does; validated against schemas/config.schema.yaml through irflow.plan) and the
classes are irflow.checks' own, so its statuses match the reproduction table's.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from irflow.checks import Expectation, metric_file, read_mean_row  # noqa: E402
from irflow.io import InputError  # noqa: E402
from irflow.plan import Plan, read_config_files  # noqa: E402

COLUMNS = ["dataset", "run", "measure", "expected", "tolerance", "source", "status"]
NOT_MEASURED = "not yet measured"
NOT_CONFIGURED = "not configured"


def configured_runs(plan: Plan) -> set[tuple[str, str]]:
    """(dataset, run) of every metric row the config builds (baselines, studies, decoders)."""
    runs = set(plan.baseline_runs())
    for study in plan.names("studies"):
        runs.update((dataset, run) for _, _, dataset, run in plan.study_runs(study))
    for study in plan.names("decoder_studies"):
        runs.update((row[2], row[3]) for row in plan.decoder_study_rows(study))
    return runs


def rows(plan: Plan, workdir: Path) -> list[dict[str, str]]:
    known = configured_runs(plan)
    out = []
    for i, entry in enumerate(plan.get("expectations", [])):
        exp = Expectation.from_config(entry, where=f"expectations[{i}]")
        path = workdir / metric_file(plan.results, exp.dataset, exp.run)
        measured = math.nan
        if path.is_file():
            measured = read_mean_row(path).get(exp.measure, math.nan)
        if not math.isnan(measured):
            grade, _ = exp.classify(measured)
            status = f"{measured:.4f} ({grade})"
        elif exp.key not in known:
            status = NOT_CONFIGURED
        else:
            status = NOT_MEASURED
        tolerance = f"±{exp.tolerance:g} (ok-ish ±{exp.okish:g}{', strict' if exp.strict else ''})"
        out.append(
            {
                "dataset": exp.dataset,
                "run": exp.run,
                "measure": exp.measure,
                "expected": f"{exp.value:.4f}",
                "tolerance": tolerance,
                "source": exp.source,
                "status": status,
            }
        )
    return out


def markdown(table: list[dict[str, str]], title: str) -> str:
    if not table:
        return f"# Expectations of {title}\n\n(no expectations configured)\n"

    def cell(value: str) -> str:
        return value.replace("|", "\\|").replace("\n", " ")

    lines = [
        f"# Expectations of {title}",
        "",
        f"{len(table)} figures; "
        + ", ".join(
            f"{sum(r['status'] == s for r in table)} {s}" for s in (NOT_MEASURED, NOT_CONFIGURED)
        )
        + f", {sum(r['status'] not in (NOT_MEASURED, NOT_CONFIGURED) for r in table)} measured",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join("---" for _ in COLUMNS) + "|",
    ]
    lines += ["| " + " | ".join(cell(r[c]) for c in COLUMNS) + " |" for r in table]
    return "\n".join(lines) + "\n"


def tsv(table: list[dict[str, str]]) -> str:
    lines = ["\t".join(COLUMNS)]
    lines += ["\t".join(r[c].replace("\t", " ") for c in COLUMNS) for r in table]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("configs", nargs="+", help="config files, merged in order (--configfile)")
    parser.add_argument("--format", choices=("md", "tsv"), default="md")
    parser.add_argument(
        "--directory",
        default=str(REPO),
        help="the workflow's working directory, results_dir's base (default: the repository)",
    )
    parser.add_argument("--schema", default=str(REPO / "schemas" / "config.schema.yaml"))
    args = parser.parse_args(argv)
    workdir = Path(args.directory)
    try:
        plan = Plan.from_config(read_config_files(args.configs), args.schema, workdir)
        table = rows(plan, workdir)
    except (InputError, OSError) as err:
        print(f"list_expectations: {err}", file=sys.stderr)
        return 2
    title = ", ".join(args.configs)
    sys.stdout.write(markdown(table, title) if args.format == "md" else tsv(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
