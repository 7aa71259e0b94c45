"""What identifies a training run, for students and decoder arms alike.

A resumable training job keeps checkpoints outside its outputs; on restart it resumes only from
checkpoints of the *same* run. A run is the same when its deciding settings (the spec without
operational keys such as the checkpoint interval), the files it trains on and the weights it
starts from are the same. :func:`run_identity` is that comparison's one definition.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from irflow.io import sha256_file


def model_identity(model: Any) -> dict[str, Any]:
    """A model folder by its digest (every file: the weights, not only config.json); a hub
    model by id and revision; ``{}`` for none. ``model`` is a path or a ModelRef."""
    from irflow.provenance import directory_digest

    if model is None:
        return {}
    path = getattr(model, "path", model)
    if path is None:
        return {"hf_id": model.hf_id, "revision": model.revision}
    path = os.fspath(path)
    if not os.path.isdir(path):
        return {"name_or_path": path}
    return {"path": path, "sha256": directory_digest(path)[0]}


def run_identity(
    spec: Mapping[str, Any],
    data_files: Sequence[str | os.PathLike],
    model: Any,
    **extra: Any,
) -> dict[str, Any]:
    """``{"spec", "inputs_sha256", "model", **extra}`` of a run: equal for two runs exactly when
    their checkpoints are interchangeable. ``spec`` must hold deciding keys only (see
    :func:`irflow.plan.deciding`)."""
    return {
        "spec": dict(spec),
        "inputs_sha256": [sha256_file(path) for path in data_files],
        "model": model_identity(model),
        **extra,
    }
