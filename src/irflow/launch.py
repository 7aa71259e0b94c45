"""Run one library call in N processes under torchrun, from a single workflow job.

A rule whose resources ask for ``gpus: N > 1`` still runs one script; the script hands its call
to :func:`run`, which starts ``torchrun --standalone --nproc_per_node N -m irflow.launch`` and
waits. Every worker imports the target function and calls it with the same keyword arguments;
torchrun sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``, which the trainers read (the
Hugging Face Trainer then wraps the model in DistributedDataParallel: NCCL on GPUs, gloo on
CPU). Rank 0's return value comes back to the job as JSON.

The arguments travel as a JSON file, so they must be JSON values (paths as strings, specs as
config dicts); the workers' output goes to the job's log like the job's own.

Multi-node training is not started from here: with the Slurm executor a job is one allocation on
one node, and ``--standalone`` binds the rendezvous to it (see the README's GPU cluster section).
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def is_worker() -> bool:
    """Whether this process is one of torchrun's workers."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def _resolve(target: str):
    module, _, name = target.partition(":")
    if not name:
        raise ValueError(f"launch target {target!r} must be 'module:function'")
    return getattr(importlib.import_module(module), name)


def call(nproc: int, target: str, kwargs: dict[str, Any], threads: int = 1) -> Any:
    """``target(**kwargs)`` in this process for ``nproc`` <= 1, else in ``nproc`` torchrun
    workers (:func:`run`) sharing the job's ``threads``; a rule script's one call either way."""
    if nproc <= 1:
        return _resolve(target)(**kwargs)
    return run(nproc, target, kwargs, max(1, threads // nproc))


def run(
    nproc: int, target: str, kwargs: dict[str, Any], threads_per_process: int | None = None
) -> Any:
    """Call ``target(**kwargs)`` in ``nproc`` torchrun workers and return rank 0's result."""
    _resolve(target)  # a bad target fails here, not in N workers
    with tempfile.TemporaryDirectory(prefix="irflow-launch-") as tmp:
        payload = Path(tmp) / "call.json"
        result = Path(tmp) / "result.json"
        payload.write_text(
            json.dumps({"target": target, "kwargs": kwargs, "result": str(result)}),
            encoding="utf-8",
        )
        env = dict(os.environ)
        if threads_per_process:
            env["OMP_NUM_THREADS"] = str(threads_per_process)
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            str(nproc),
            "-m",
            "irflow.launch",
            str(payload),
        ]
        log.info("launching %d training processes: %s", nproc, " ".join(command))
        done = subprocess.run(command, env=env, check=False)
        if done.returncode != 0:
            raise RuntimeError(
                f"{nproc} torchrun workers for {target} failed (exit {done.returncode}); "
                f"each worker's traceback is in this log above"
            )
        return json.loads(result.read_text(encoding="utf-8"))


def _worker(payload_path: str) -> None:
    payload = json.loads(Path(payload_path).read_text(encoding="utf-8"))
    threads = os.environ.get("OMP_NUM_THREADS")
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    value = _resolve(payload["target"])(**payload["kwargs"])
    if int(os.environ.get("RANK", "0")) == 0:
        out = Path(payload["result"])
        tmp = out.with_suffix(".part")
        tmp.write_text(json.dumps(value, default=str), encoding="utf-8")
        tmp.replace(out)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s rank%(process)d %(message)s")
    _worker(sys.argv[1])
