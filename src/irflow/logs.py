"""Logging shared by the workflow scripts: everything goes to the rule's log file.

- :func:`to_file` sends logging, warnings and stray stderr output of a job to its log.
- :class:`Progress` logs how far a long loop (training steps, teacher samples, corpus
  documents) has come, at a steady interval: done/total, rate and an ETA, e.g.
  ``corpus encoding: 2048/5183 docs (40%), 61.2 docs/s, elapsed 33s, ETA 51s``.
  Follow a running job with ``tail -f results/logs/<rule>/<key>.log``.
- Known, harmless library warnings are dropped (:data:`HARMLESS`); nothing else is. Job logs
  get no tqdm progress bars (:func:`no_progress_bars`).
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import time
from collections.abc import Callable

# (logger name, start of the message) of warnings that are expected and harmless here, dropped
# from every job's log. Only these exact records go; every other warning of those loggers stays.
HARMLESS: tuple[tuple[str, str], ...] = (
    # bitsandbytes (imported through peft by sentence-transformers in every model job, whether
    # or not an 8-bit optimizer is used) tries, on CPUs with AVX512-BF16, to fetch an optional
    # 4-bit CPU GEMM kernel from the Hugging Face hub via the `kernels` package. irflow never
    # runs 4-bit weights, so the missing kernel changes nothing.
    (
        "bitsandbytes.backends.cpu.ops",
        "Failed to load CPU gemm_4bit_forward from kernels-community",
    ),
)


class _DropHarmless(logging.Filter):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def quiet_harmless_warnings() -> None:
    """Drop the :data:`HARMLESS` records (idempotent). A filter on a logger is kept when its
    module is imported later, so this works before or after the library is imported."""
    for name, prefix in HARMLESS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropHarmless) and f.prefix == prefix for f in logger.filters):
            logger.addFilter(_DropHarmless(prefix))


# Installed on import: every workflow script imports irflow.job (and so this module) before
# any library that might import bitsandbytes.
quiet_harmless_warnings()


def no_progress_bars() -> None:
    """Switch off tqdm bars (transformers' "Loading weights" on every model load,
    sentence-transformers' "Computing widget examples" before training): in a log file they
    are carriage-return noise; :class:`Progress` lines say how far a job has come instead. A
    caller that passes ``disable=False`` explicitly still gets its bar."""
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # read when huggingface_hub is imported
    os.environ["TQDM_DISABLE"] = "1"  # read when tqdm is imported (here and in subprocesses)
    if "tqdm.std" in sys.modules:  # imported already: default every bar to disabled
        bar = sys.modules["tqdm.std"].tqdm
        if not getattr(bar, "_irflow_disabled", False):
            bar.__init__ = functools.partialmethod(vars(bar)["__init__"], disable=True)
            bar._irflow_disabled = True
    if "huggingface_hub" in sys.modules:  # imported already: switch them off in place
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    if "transformers.utils.logging" in sys.modules:
        sys.modules["transformers.utils.logging"].disable_progress_bar()


def to_file(log_path: str | None, level: int = logging.INFO) -> None:
    """Send logging, warnings and stray stderr output of this job to ``log_path`` (without
    progress bars, :func:`no_progress_bars`)."""
    quiet_harmless_warnings()
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_path:
        no_progress_bars()
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


def format_duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``2h07m`` (seconds rounded; hours drop the seconds)."""
    total = max(0, round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


class Progress:
    """How far a long loop has come, logged every ``interval`` seconds and once at the end.

    ``update(done)`` (absolute) or ``advance(n)`` (relative) after each unit of work; a line
    is logged when ``interval`` seconds have passed since the last one, and when ``done``
    first reaches ``total``. The rate is the average since the start over the work done in
    this process (``initial`` is work done before it, e.g. by a run resumed from a
    checkpoint), and the ETA is what is left at that rate. ``total`` may be set later (None:
    no percentage or ETA).
    """

    def __init__(
        self,
        what: str,
        total: int | None = None,
        unit: str = "items",
        interval: float = 30.0,
        initial: int = 0,
        logger: logging.Logger | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.what, self.total, self.unit, self.interval = what, total, unit, interval
        self.initial = self.done = initial
        self.logger = logger or logging.getLogger("irflow.progress")
        self._clock = clock
        self.started = self._last = clock()
        self._ended = False

    def rate(self, now: float | None = None) -> float | None:
        """Units per second in this process so far (None before any time or work)."""
        elapsed = (self._clock() if now is None else now) - self.started
        work = self.done - self.initial
        return work / elapsed if elapsed > 0 and work > 0 else None

    def eta(self, now: float | None = None) -> float | None:
        """Seconds left at the current rate (None without a total or a rate)."""
        rate = self.rate(now)
        if self.total is None or rate is None:
            return None
        return max(0, self.total - self.done) / rate

    def line(self, now: float | None = None, extra: str = "") -> str:
        now = self._clock() if now is None else now
        parts = [f"{self.what}: {self.done}/{self.total if self.total is not None else '?'}"]
        parts[0] += f" {self.unit}"
        if self.total:
            parts[0] += f" ({100 * self.done / self.total:.0f}%)"
        rate = self.rate(now)
        if rate is not None:
            parts.append(f"{rate:.3g} {self.unit}/s")
        if extra:
            parts.append(extra)
        parts.append(f"elapsed {format_duration(now - self.started)}")
        eta = self.eta(now)
        if eta is not None and not self._at_end():
            parts.append(f"ETA {format_duration(eta)}")
        return ", ".join(parts)

    def _at_end(self) -> bool:
        return self.total is not None and self.done >= self.total

    def update(self, done: int, extra: str = "") -> bool:
        """Record ``done`` units; log a line if it is time (returns whether it logged)."""
        self.done = done
        now = self._clock()
        due = now - self._last >= self.interval
        if self._at_end():
            if self._ended:
                return False
            self._ended = due = True
        if not due:
            return False
        self._last = now
        self.logger.info("%s", self.line(now, extra))
        return True

    def advance(self, n: int = 1, extra: str = "") -> bool:
        return self.update(self.done + n, extra)
