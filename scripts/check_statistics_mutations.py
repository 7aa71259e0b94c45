"""Show that the statistics tests catch the mistakes they are written against.

Each mutation edits src/irflow/studies.py in place (a one-sided randomization test, a p-value
at n = 1, Holm's step without the running maximum), runs tests/test_studies.py, and puts the
file back; the script fails if any mutation leaves the tests green.

    .venv/bin/python scripts/check_statistics_mutations.py
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODULE = REPO / "src" / "irflow" / "studies.py"
MUTATIONS = {
    "one-sided randomization test": ('alternative="two-sided",', 'alternative="greater",'),
    "a p-value at n = 1": ('    if diff.size == 1:\n        return "one query: no test"\n', ""),
    "Holm without the running maximum": (
        "running = max(running, min(1.0, (m - rank) * p_values[i]))",
        "running = min(1.0, (m - rank) * p_values[i])",
    ),
}


def main() -> int:
    original = MODULE.read_text(encoding="utf-8")
    survived = []
    try:
        for name, (before, after) in MUTATIONS.items():
            if before not in original:
                print(f"{name}: the code to mutate is gone; update this script")
                return 2
            MODULE.write_text(original.replace(before, after, 1), encoding="utf-8")
            result = subprocess.run(
                [sys.executable, "-m", "pytest", "tests/test_studies.py", "-q", "-p",
                 "no:cacheprovider"],
                cwd=REPO, capture_output=True, text=True,
            )  # fmt: skip
            failed = [line for line in result.stdout.splitlines() if line.startswith("FAILED")]
            print(f"{name}: {result.stdout.strip().splitlines()[-1]}")
            for line in failed:
                print(f"    {line[:140]}")
            if result.returncode == 0:
                survived.append(name)
    finally:
        MODULE.write_text(original, encoding="utf-8")
    if survived:
        print(f"mutations the tests missed: {survived}")
        return 1
    print("every mutation was caught; src/irflow/studies.py restored")
    return 0


if __name__ == "__main__":
    sys.exit(main())
