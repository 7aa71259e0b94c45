"""Logging set-up shared by the workflow scripts: everything goes to the rule's log file."""

from __future__ import annotations

import logging
import sys


def to_file(log_path: str | None, level: int = logging.INFO) -> None:
    """Send logging, warnings and stray stderr output of this job to ``log_path``."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_path:
        stream = open(log_path, "w", encoding="utf-8", buffering=1)  # noqa: SIM115 (lives as long as the job)
        sys.stderr = stream
        handlers = [logging.StreamHandler(stream)]
    logging.basicConfig(
        level=level,
        handlers=handlers,
        force=True,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.captureWarnings(True)
