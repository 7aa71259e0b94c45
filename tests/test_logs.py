"""irflow.logs: the Progress helper (interval, rate, ETA, end line) and the harmless-warning
filter."""

import logging

import pytest

from irflow import logs


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock():
    return Clock()


def lines(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "irflow.progress"]


def test_format_duration():
    assert logs.format_duration(0) == "0s"
    assert logs.format_duration(42.4) == "42s"
    assert logs.format_duration(59.6) == "1m00s"
    assert logs.format_duration(185) == "3m05s"
    assert logs.format_duration(2 * 3600 + 7 * 60 + 30) == "2h07m"
    assert logs.format_duration(-3) == "0s"


def test_rate_and_eta(clock):
    progress = logs.Progress("training", 100, unit="steps", clock=clock)
    assert progress.rate() is None and progress.eta() is None  # no time, no work yet
    clock.now += 20
    progress.done = 25
    assert progress.rate() == pytest.approx(1.25)
    assert progress.eta() == pytest.approx(75 / 1.25)  # 60 s left at 1.25 steps/s
    progress.done = 100
    assert progress.eta() == 0


def test_resumed_work_is_not_counted_in_the_rate(clock):
    progress = logs.Progress("training", 100, unit="steps", initial=40, clock=clock)
    clock.now += 10
    progress.done = 50  # 10 steps in this process, 50 left
    assert progress.rate() == pytest.approx(1.0)
    assert progress.eta() == pytest.approx(50.0)


def test_no_total_no_eta(clock):
    progress = logs.Progress("encoding", unit="docs", clock=clock)
    clock.now += 4
    progress.done = 8
    assert progress.eta() is None
    assert progress.line() == "encoding: 8/? docs, 2 docs/s, elapsed 4s"


def test_logs_every_interval_and_once_at_the_end(clock, caplog):
    caplog.set_level(logging.INFO)
    progress = logs.Progress("training", 10, unit="steps", interval=30, clock=clock)
    logged = []
    for _ in range(10):
        clock.now += 12
        logged.append(progress.advance())
    # 12 s a step: due at 36 s (step 3), 72 s (step 6), 108 s (step 9), then the end line.
    assert logged == [False, False, True, False, False, True, False, False, True, True]
    assert lines(caplog) == [
        "training: 3/10 steps (30%), 0.0833 steps/s, elapsed 36s, ETA 1m24s",
        "training: 6/10 steps (60%), 0.0833 steps/s, elapsed 1m12s, ETA 48s",
        "training: 9/10 steps (90%), 0.0833 steps/s, elapsed 1m48s, ETA 12s",
        "training: 10/10 steps (100%), 0.0833 steps/s, elapsed 2m00s",
    ]
    assert not progress.update(10)  # the end is logged once


def test_extra_goes_before_the_times(clock, caplog):
    caplog.set_level(logging.INFO)
    progress = logs.Progress("teacher t", 4, unit="samples", interval=0, clock=clock)
    clock.now += 2
    progress.update(1, "8.0 pairs/s")
    assert lines(caplog) == [
        "teacher t: 1/4 samples (25%), 0.5 samples/s, 8.0 pairs/s, elapsed 2s, ETA 6s"
    ]


def test_harmless_bitsandbytes_warning_is_dropped_others_kept(caplog):
    caplog.set_level(logging.WARNING)
    logs.quiet_harmless_warnings()
    logs.quiet_harmless_warnings()  # idempotent: one filter
    logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    assert len(logger.filters) == 1
    logger.warning(
        "Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please make sure you "
        "already `pip install kernels` and the kernels >= 0.11.1",
        ModuleNotFoundError("No module named 'kernels'"),
    )
    logger.warning("some other bitsandbytes warning")
    logging.getLogger("bitsandbytes.cextension").warning("Failed to load CPU gemm_4bit_forward")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["some other bitsandbytes warning", "Failed to load CPU gemm_4bit_forward"]


def test_job_logs_have_no_progress_bars(monkeypatch):
    import io

    from tqdm.autonotebook import tqdm

    for name in ("HF_HUB_DISABLE_PROGRESS_BARS", "TQDM_DISABLE"):
        monkeypatch.delenv(name, raising=False)
    init = vars(tqdm)["__init__"]
    monkeypatch.setattr(tqdm, "__init__", init)
    monkeypatch.setattr(tqdm, "_irflow_disabled", False, raising=False)
    logs.no_progress_bars()
    logs.no_progress_bars()  # idempotent
    silent, explicit = io.StringIO(), io.StringIO()
    for _ in tqdm(range(3), desc="Loading weights", file=silent):
        pass
    for _ in tqdm(range(3), desc="asked for", file=explicit, disable=False):
        pass
    assert silent.getvalue() == "" and "asked for" in explicit.getvalue()
