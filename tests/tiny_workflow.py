"""A tiny self-contained workflow for tests that run Snakemake: a BEIR-layout collection of a
few dozen documents made of a small vocabulary, and a tiny randomly initialised bi-encoder, so
every stage (data, BM25, dense, training data) runs in seconds.

Faults are planted by editing the files :func:`make_collection` writes, or by
:func:`slow_hook`, which makes one rule's script stop at a chosen point (so a test can kill it
there) without any test-only code in the workflow itself: a ``sitecustomize`` module on
``PYTHONPATH`` that patches a function in the script's process only.
"""

from __future__ import annotations

import os
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import numpy as np
from tiny_builders import EXTRA_WORDS, WORDS, tiny_bert, tiny_sentence_transformer, write_beir
from workflow_helpers import REPO, offline_env, snakemake, snakemake_command, write_config

VOCABULARY = [*WORDS, *EXTRA_WORDS]


def make_collection(
    root: Path, n_docs: int = 40, n_train: int = 8, n_test: int = 4, seed: int = 0
) -> Path:
    """corpus.jsonl, queries.jsonl and qrels/{train,test}.tsv (BEIR layout) under ``root``.

    Query ``t<i>`` (train) and ``s<i>`` (test) each have two relevant documents, the first one
    sharing most of its words with the query, so BM25 finds positives and negatives.
    """
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    words = VOCABULARY[9:]
    docs = {
        f"d{i}": " ".join(rng.choice(words, size=int(rng.integers(4, 16)))) for i in range(n_docs)
    }
    queries, qrels = {}, {"train": [], "test": []}
    for split, prefix, count, offset in (("train", "t", n_train, 0), ("test", "s", n_test, 20)):
        for i in range(count):
            qid = f"{prefix}{i}"
            first, second = f"d{(offset + 2 * i) % n_docs}", f"d{(offset + 2 * i + 1) % n_docs}"
            queries[qid] = " ".join(docs[first].split()[:3] + [words[i % len(words)]])
            qrels[split] += [(qid, first, 1), (qid, second, 1)]
    write_beir(root, docs, queries, qrels)
    return root


def make_bi_encoder(root: Path) -> Path:
    """A sentence-transformers folder: a 2-layer BERT (hidden size 32), mean pooling."""
    target = root / "bi-encoder"
    if target.is_dir():
        return target
    # Dropout 0.1 (BertConfig's default) as these models were first built; off in eval mode.
    bert = tiny_bert(root / "bert", VOCABULARY, dropout=0.1, vocab_file=root / "vocab.txt")
    return tiny_sentence_transformer(target, bert, max_seq_length=48, normalize=False)


def tiny_config(collection: Path, model: Path, **overrides) -> dict:
    """Data -> BM25 and dense first stage -> mined negatives -> teacher scores (2 shards) ->
    consistency filter, every job on one core."""
    config = {
        "seed": 7,
        "datasets": {
            "tiny-train": {"beir_folder": str(collection), "split": "train", "corpus": "tiny"},
            "tiny-test": {"beir_folder": str(collection), "split": "test", "corpus": "tiny"},
        },
        "models": {"tiny": {"path": str(model), "max_length": 48}},
        "retrievers": {
            "bm25": {"kind": "bm25", "depth": 30},
            "dense-tiny": {"kind": "dense", "model": "tiny", "depth": 30},
        },
        "baselines": [
            {"dataset": "tiny-test", "retriever": "bm25"},
            {"dataset": "tiny-test", "retriever": "dense-tiny"},
        ],
        "training_sets": {"tiny-train": {"dataset": "tiny-train", "held_out": ["tiny-test"]}},
        "miners": {
            "bm25": {"retriever": "bm25", "num_negatives": 3, "rank_min": 1, "rank_max": 30}
        },
        "teachers": {
            "tiny": {"kind": "bi-encoder", "model": "tiny", "shards": 2, "chunk_samples": 2}
        },
        "filters": {"consistency": {"margin": 0.0, "min_negatives": 0}},
        "training_data": [
            {
                "training_set": "tiny-train",
                "miners": ["bm25"],
                "teachers": ["tiny"],
                "filters": ["consistency"],
            }
        ],
        "resources": {"default": {"cpus": 1, "mem_mb": 1000, "runtime": 5}},
    }
    config.update(overrides)
    return config


# Artifacts of the tiny config, relative to the working directory.
NEGATIVES = "results/training-data/tiny-train/negatives/bm25.parquet"
TRAIN_QUERIES = "results/training-data/tiny-train/queries.parquet"
SHARD0 = "results/teacher-scores/tiny-train/bm25/tiny/shard-0-of-2.parquet"
SCORES = "results/teacher-scores/tiny-train/bm25/tiny.parquet"
FILTERED = "results/filtered/tiny-train/bm25/tiny/consistency.parquet"
EMBEDDINGS = "results/embeddings/tiny/tiny"
BM25_INDEX = "results/indexes/tiny/bm25"


def run(workdir: Path, config: dict, *args: str, env: dict | None = None, check: bool = True):
    """Snakemake on the tiny config with the local profile (as users run it), 1 core."""
    profile = str(REPO / "profiles/local")
    return snakemake(workdir, config, "--profile", profile, *args, cores=1, env=env, check=check)


def unlock(workdir: Path, config: dict) -> None:
    """Remove the locks a killed Snakemake left (what a user runs after a crash)."""
    run(workdir, config, "--unlock")


HOOK = """
import os, sys, time
from pathlib import Path
if os.path.basename(sys.argv[0]).endswith({script!r}):
    import importlib
    module = importlib.import_module({module!r})
    owner = module
    for part in {qualname!r}.split(".")[:-1]:
        owner = getattr(owner, part)
    name = {qualname!r}.split(".")[-1]
    original = getattr(owner, name)
    calls = [0]

    def stalled(*args, **kwargs):
        out = original(*args, **kwargs)
        calls[0] += 1
        if calls[0] == {after}:
            Path({marker!r}).write_text(str(os.getpid()))
            time.sleep(600)
        return out

    setattr(owner, name, stalled)
"""


def slow_hook(folder: Path, script: str, module: str, qualname: str, after: int = 1) -> dict:
    """An environment in which rule script ``script`` (e.g. ``"score_teacher_shard.py"``)
    stops for 10 minutes right after its ``after``-th call of ``module.qualname`` returns,
    having first written its pid to ``folder / "stalled"``. Returns the environment."""
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / "stalled"
    (folder / "sitecustomize.py").write_text(
        textwrap.dedent(
            HOOK.format(
                script=script, module=module, qualname=qualname, after=after, marker=str(marker)
            )
        )
    )
    return offline_env(folder, REPO / "src")


def run_and_kill(
    workdir: Path, config: dict, env: dict, marker: Path, *targets: str, timeout: float = 300
) -> None:
    """Start Snakemake (own process group), wait until the hooked script has stalled, then
    SIGKILL the whole group: Snakemake and its job die at once, as on a node failure."""
    config_path = write_config(workdir, config)
    profile = str(REPO / "profiles/local")
    args = snakemake_command(workdir, config_path, "--profile", profile, "--cores", "1")
    log = open(workdir / "killed-run.log", "w")  # noqa: SIM115 (closed below)
    process = subprocess.Popen(
        [*args, *targets], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=workdir,
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + timeout
        while not marker.exists():
            if process.poll() is not None:
                raise AssertionError(
                    f"snakemake ended ({process.returncode}) before the hook stalled:\n"
                    + (workdir / "killed-run.log").read_text()[-4000:]
                )
            if time.monotonic() > deadline:
                raise AssertionError("the hooked script did not stall in time")
            time.sleep(0.05)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        log.close()
    # The job was a child in the same group; make sure it is gone too.
    pid = int(marker.read_text())
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        raise AssertionError(f"job process {pid} survived the kill")
