"""Resilience: bad input, killed jobs, cluster retries, safe defaults, secrets.

* **Bad-input sweep**: every stage fed empty files, wrong encodings, duplicate ids, NaN scores or
  mismatched shards stops with an :class:`InputError` naming the file (and line, row or key) and
  leaves nothing in its output folder. Library level, fast.
* **Safe defaults**: models load with ``trust_remote_code=False`` and safetensors only (remote
  code and pickled weights are refused, not run); config values stay data.
* **Kill and rerun** (slow): a rule script is stopped mid-way by a test-only hook
  (:func:`tiny_workflow.slow_hook`), Snakemake and the job are SIGKILLed as one process group,
  and the rerun shows no truncated file was taken as done.
* **Retries on Slurm** (slow, needs the local cluster of ``.ci/start-slurm.sh``): a job that
  fails on its first attempt is resubmitted with twice the memory and time and completes.
* **Secrets**: a token planted in the environment appears in no log or artifact.

The workflow tests run the real Snakefile on :mod:`tiny_workflow`'s collection and tiny model.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tiny_workflow as tw
from tiny_builders import scores_table, write_beir, write_corpus_parquet, write_queries_parquet
from workflow_helpers import REPO, offline_env, require_slurm, snakemake_command, write_config

from irflow.io import InputError

SECRET = "hf_irflowPlantedSecret0123456789abcdef"


def listing(folder: Path) -> list[str]:
    return sorted(os.listdir(folder)) if folder.exists() else []


# ---------------------------------------------------------------------------------------------
# Bad-input sweep
# ---------------------------------------------------------------------------------------------
LATIN1 = "café crème".encode("latin-1")  # b"caf\xe9 cr\xe8me": not UTF-8


def beir_folder(root: Path) -> Path:
    """A valid 3-document, 2-query BEIR folder with a candidate run."""
    docs = {"d1": "cat dog", "d2": "river city", "d3": "gene drug"}
    queries = {"q1": "cat", "q2": "river"}
    folder = write_beir(root / "beir", docs, queries, {"test": [("q1", "d1", 1), ("q2", "d2", 1)]})
    (folder / "runs").mkdir()
    (folder / "runs" / "bm25.trec").write_text(
        "q1 Q0 d1 1 2.5 bm25\nq1 Q0 d2 2 1.5 bm25\nq2 Q0 d2 1 3.0 bm25\n"
    )
    return folder


def source(folder: Path):
    from irflow.data import DatasetSource

    return DatasetSource.from_config(
        "sweep",
        {"beir_folder": str(folder), "split": "test", "candidates": "runs/bm25.trec"},
    )


def write_corpus(folder: Path, out: Path):
    from irflow.data import write_corpus as write

    return write(source(folder), str(out / "corpus.parquet"), str(out / "manifest.json"))


def write_topics(folder: Path, out: Path):
    from irflow.data import write_topics as write

    return write(
        source(folder), str(out / "q.parquet"), str(out / "qrels.trec"), str(out / "m.json")
    )


def write_candidates(folder: Path, out: Path):
    from irflow.data import write_candidates as write

    return write(source(folder), str(out / "given.trec"))


def append(path: Path, data: bytes) -> int:
    """Append ``data`` as a new line; return its line number."""
    lines = path.read_bytes().count(b"\n")
    with open(path, "ab") as handle:
        handle.write(data + b"\n")
    return lines + 1


def scores_meta(kind: str, index: int = 0, count: int = 1, rows: int = 2) -> dict:
    meta = {
        "artifact": kind,
        "teacher": {"name": "t"},
        "score_kind": "cosine",
        "samples": {"sha256": "0" * 64, "rows": rows},
        "scoring": {"chunk_samples": 1},
    }
    if kind == "teacher-scores-shard":
        start = index * rows // count
        meta["shard"] = {
            "index": index,
            "count": count,
            "row_start": start,
            "row_stop": (index + 1) * rows // count,
        }
    else:
        meta["filters"] = []
    return meta


def scores_file(path: Path, rows: list[tuple], meta: dict) -> Path:
    from irflow.training_data import SCORES_SCHEMA
    from irflow.training_data.artifacts import ParquetSink

    with ParquetSink(path, SCORES_SCHEMA, meta) as sink:
        sink.write(scores_table(rows))
    return path


def training_inputs(root: Path) -> dict[str, Path]:
    """Corpus, queries, qrels and run (valid) for the training-data stages."""
    from irflow.io import write_trec_qrels, write_trec_run

    root.mkdir(parents=True, exist_ok=True)
    docs = [f"d{i}" for i in range(8)]
    write_corpus_parquet(root / "corpus.parquet", docs, ["cat dog"] * 8)
    write_queries_parquet(root / "queries.parquet", {"q1": "cat", "q2": "dog"})
    write_trec_qrels(root / "qrels.trec", {"q1": {"d0": 1}, "q2": {"d1": 1}})
    run = {q: {d: float(10 - i) for i, d in enumerate(docs)} for q in ("q1", "q2")}
    write_trec_run(root / "run.trec", run, tag="bm25")
    names = {"corpus": "corpus.parquet", "queries": "queries.parquet", "qrels": "qrels.trec"}
    return {key: root / name for key, name in {**names, "run": "run.trec"}.items()}


def mine(inputs: dict[str, Path], out: Path):
    from irflow.training_data import write_negatives

    return write_negatives(
        inputs["queries"],
        inputs["qrels"],
        inputs["run"],
        out / "negatives.parquet",
        out / "negatives.json",
        params={"num_negatives": 2, "rank_min": 1, "rank_max": 8},
        corpus_parquet=inputs["corpus"],
    )


def score(inputs: dict[str, Path], out: Path, samples: Path):
    from irflow.models import ModelRef
    from irflow.training_data import TeacherSpec, score_shard

    # The inputs are checked before the teacher is loaded: no model is needed to see the error.
    spec = TeacherSpec("t", "bi-encoder", ModelRef("m", path=str(out / "no-model")))
    return score_shard(
        samples, 0, 1, spec, inputs["corpus"], inputs["queries"], out / "shard.parquet"
    )


def empty_file(path: Path) -> Path:
    path.write_bytes(b"")
    return path


# Each case plants one fault and returns (the stage call, fragments the message must contain).
def case_corpus_empty(tmp):
    folder = beir_folder(tmp)
    path = empty_file(folder / "corpus.jsonl")
    return lambda out: write_corpus(folder, out), [f"the corpus is empty ({path})"]


def case_corpus_latin1(tmp):
    folder = beir_folder(tmp)
    line = append(folder / "corpus.jsonl", b'{"_id": "d9", "text": "' + LATIN1 + b'"}')
    path = folder / "corpus.jsonl"
    return lambda out: write_corpus(folder, out), [f"{path}:{line}: not valid UTF-8"]


def case_corpus_duplicate_id(tmp):
    folder = beir_folder(tmp)
    append(folder / "corpus.jsonl", b'{"_id": "d2", "text": "again"}')
    path = folder / "corpus.jsonl"
    return lambda out: write_corpus(folder, out), [
        "duplicate document id 'd2'",
        f"document #4 of {path}",
    ]


def case_queries_empty(tmp):
    folder = beir_folder(tmp)
    path = empty_file(folder / "queries.jsonl")
    return lambda out: write_topics(folder, out), [
        f"2 judged queries have no text in {path}, e.g. ['q1', 'q2']"
    ]


def case_queries_latin1(tmp):
    folder = beir_folder(tmp)
    line = append(folder / "queries.jsonl", b'{"_id": "q3", "text": "' + LATIN1 + b'"}')
    path = folder / "queries.jsonl"
    return lambda out: write_topics(folder, out), [f"{path}:{line}: not valid UTF-8"]


def case_queries_duplicate_id(tmp):
    folder = beir_folder(tmp)
    append(folder / "queries.jsonl", b'{"_id": "q1", "text": "cat again"}')
    path = folder / "queries.jsonl"
    return lambda out: write_topics(folder, out), [
        "duplicate query id 'q1'",
        f"query #3 of {path}",
    ]


def case_qrels_empty(tmp):
    folder = beir_folder(tmp)
    path = empty_file(folder / "qrels" / "test.tsv")
    return lambda out: write_topics(folder, out), [f"{path}: no relevance judgements"]


def case_qrels_latin1(tmp):
    folder = beir_folder(tmp)
    path = folder / "qrels" / "test.tsv"
    line = append(path, b"q1\t" + LATIN1.replace(b" ", b"") + b"\t1")
    return lambda out: write_topics(folder, out), [f"{path}:{line}: not valid UTF-8"]


def case_qrels_duplicate(tmp):
    folder = beir_folder(tmp)
    path = folder / "qrels" / "test.tsv"
    line = append(path, b"q1\td1\t0")
    return lambda out: write_topics(folder, out), [
        f"{path}:{line}: document 'd1' judged twice for query 'q1'"
    ]


def case_run_empty(tmp):
    folder = beir_folder(tmp)
    path = empty_file(folder / "runs" / "bm25.trec")
    return lambda out: write_candidates(folder, out), [f"the candidate run is empty ({path})"]


def case_run_latin1(tmp):
    folder = beir_folder(tmp)
    path = folder / "runs" / "bm25.trec"
    line = append(path, b"q2 Q0 " + LATIN1.replace(b" ", b"") + b" 2 1.0 bm25")
    return lambda out: write_candidates(folder, out), [f"{path}:{line}: not valid UTF-8"]


def case_run_nan(tmp):
    folder = beir_folder(tmp)
    path = folder / "runs" / "bm25.trec"
    line = append(path, b"q2 Q0 d3 2 nan bm25")
    return lambda out: write_candidates(folder, out), [f"{path}:{line}: score 'nan' is not finite"]


def case_run_duplicate(tmp):
    folder = beir_folder(tmp)
    path = folder / "runs" / "bm25.trec"
    line = append(path, b"q1 Q0 d1 3 0.5 bm25")
    return lambda out: write_candidates(folder, out), [
        f"{path}:{line}: document 'd1' listed twice for query 'q1'"
    ]


def case_mining_queries_file_empty(tmp):
    inputs = training_inputs(tmp)
    path = empty_file(inputs["queries"])
    return lambda out: mine(inputs, out), [f"{path}: not a readable Parquet file"]


def case_mining_corpus_file_empty(tmp):
    inputs = training_inputs(tmp)
    path = empty_file(inputs["corpus"])
    return lambda out: mine(inputs, out), [f"{path}: not a readable Parquet file"]


def case_mining_run_nan(tmp):
    inputs = training_inputs(tmp)
    line = append(inputs["run"], b"q1 Q0 d9 9 -nan bm25")
    return lambda out: mine(inputs, out), [f"{inputs['run']}:{line}: score '-nan' is not finite"]


def case_mining_qrels_empty(tmp):
    inputs = training_inputs(tmp)
    path = empty_file(inputs["qrels"])
    return lambda out: mine(inputs, out), [f"{path}: no relevance judgements"]


def case_scoring_samples_file_empty(tmp):
    inputs = training_inputs(tmp)
    samples = empty_file(tmp / "negatives.parquet")
    return lambda out: score(inputs, out, samples), [f"{samples}: not a readable Parquet file"]


def case_scoring_corpus_file_empty(tmp):
    inputs = training_inputs(tmp)
    mine(inputs, tmp / "mined")
    path = empty_file(inputs["corpus"])
    samples = tmp / "mined" / "negatives.parquet"
    return lambda out: score(inputs, out, samples), [f"{path}: not a readable Parquet file"]


def case_scoring_queries_file_truncated(tmp):
    inputs = training_inputs(tmp)
    mine(inputs, tmp / "mined")
    data = inputs["queries"].read_bytes()
    inputs["queries"].write_bytes(data[: len(data) // 2])  # a half-written file
    samples = tmp / "mined" / "negatives.parquet"
    return lambda out: score(inputs, out, samples), [
        f"{inputs['queries']}: not a readable Parquet file"
    ]


def case_merge_nan_score(tmp):
    shard = scores_file(
        tmp / "shard-0-of-1.parquet",
        [("qa", "pa", 1.0, [0.5]), ("qb", "pb", 2.0, [0.1, float("nan")])],
        scores_meta("teacher-scores-shard"),
    )
    return lambda out: _merge([shard], out), [
        f"{shard}: 1 samples have non-finite teacher scores; first: row 1 (query 'qb')",
        "neg_scores nan (negative 'n1')",
    ]


def case_merge_shards_of_other_samples(tmp):
    one = scores_file(
        tmp / "shard-0-of-2.parquet", [("qa", "pa", 1.0, [0.5])], scores_meta(
            "teacher-scores-shard", 0, 2)
    )  # fmt: skip
    other = scores_file(
        tmp / "shard-1-of-3.parquet", [("qb", "pb", 1.0, [0.5])], scores_meta(
            "teacher-scores-shard", 1, 3, rows=3)
    )  # fmt: skip
    return lambda out: _merge([one, other], out), [f"{other}: shard samples"]


def case_merge_shard_counts_differ_same_samples(tmp):
    one = scores_file(
        tmp / "shard-0-of-2.parquet", [("qa", "pa", 1.0, [0.5])], scores_meta(
            "teacher-scores-shard", 0, 2)
    )  # fmt: skip
    other = scores_file(tmp / "shard-1-of-4.parquet", [], scores_meta("teacher-scores-shard", 1, 4))
    return lambda out: _merge([one, other], out), [
        f"{other}: shard count 4 differs from 2 in {one}"
    ]


def case_merge_shard_file_empty(tmp):
    path = empty_file(tmp / "shard-0-of-1.parquet")
    return lambda out: _merge([path], out), [f"{path}: not a readable Parquet file"]


def case_filter_nan_positive(tmp):
    path = scores_file(
        tmp / "scores.parquet",
        [("qa", "pa", float("nan"), [0.5]), ("qb", "pb", 2.0, [0.1])],
        scores_meta("teacher-scores"),
    )
    return lambda out: _filter(path, out), [
        f"{path}: 1 samples have non-finite teacher scores; first: row 0 (query 'qa')",
        "pos_score nan (positive 'pa')",
    ]


def case_filter_file_empty(tmp):
    path = empty_file(tmp / "scores.parquet")
    return lambda out: _filter(path, out), [f"{path}: not a readable Parquet file"]


def case_encode_corpus_file_empty(tmp):
    from irflow.dense import encode_corpus

    path = empty_file(tmp / "corpus.parquet")
    return lambda out: encode_corpus(None, str(path), str(out / "emb")), [
        f"{path}: not a readable Parquet file"
    ]


def case_embeddings_truncated(tmp):
    from irflow.dense import dense_retrieve

    folder = tmp / "emb"
    folder.mkdir()
    np.save(folder / "embeddings.npy", np.ones((4, 8), dtype=np.float32))
    data = (folder / "embeddings.npy").read_bytes()
    (folder / "embeddings.npy").write_bytes(data[:100])
    (folder / "doc_ids.json").write_text('["a", "b", "c", "d"]')
    return lambda out: dense_retrieve(None, str(folder), {"q": "x"}, k=2), [
        f"{folder}: not a readable embeddings folder"
    ]


def _merge(paths, out):
    from irflow.training_data import merge_shards

    return merge_shards(paths, out / "scores.parquet", out / "scores.stats.json")


def _filter(path, out):
    from irflow.training_data import filter_consistency

    return filter_consistency(path, out / "f.parquet", out / "f.stats.json", {"margin": 0.0})


SWEEP = {name[5:]: fn for name, fn in globals().items() if name.startswith("case_")}


@pytest.mark.parametrize("case", sorted(SWEEP))
def test_bad_input_names_the_fault_and_leaves_no_output(case, tmp_path):
    (tmp_path / "in").mkdir()
    stage, fragments = SWEEP[case](tmp_path / "in")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(InputError) as err:
        stage(out)
    message = str(err.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert listing(out) == []


# ---------------------------------------------------------------------------------------------
# Safe defaults
# ---------------------------------------------------------------------------------------------
def test_model_references_default_to_no_remote_code_and_safetensors():
    from irflow.models import ModelRef, model_kwargs

    ref = ModelRef.from_config("m", {"hf_id": "org/model"})
    assert ref.trust_remote_code is False
    assert ModelRef.from_config("m", {"path": "x", "trust_remote_code": True}).trust_remote_code
    for device in ("cpu", "cuda", "cuda:1"):
        assert model_kwargs(device)["use_safetensors"] is True


def test_every_loader_passes_no_remote_code_and_safetensors(monkeypatch, tmp_path):
    """What the three loaders hand to the libraries (recorded, nothing loaded)."""
    import sentence_transformers
    import transformers

    from irflow.cross_encoder import load_cross_encoder
    from irflow.models import ModelRef, load_sentence_transformer
    from irflow.training_data.teacher import _load_causal_lm

    calls: list[tuple[str, dict]] = []

    class Recorder:
        def __init__(self, name, fail=True):
            self.name, self.fail = name, fail

        def __call__(self, *args, **kwargs):
            calls.append((self.name, kwargs))
            if self.fail:
                raise RuntimeError("recorded")
            return object()

    monkeypatch.setattr(sentence_transformers, "SentenceTransformer", Recorder("st"))
    monkeypatch.setattr(sentence_transformers, "CrossEncoder", Recorder("ce"))
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", Recorder("tok", False))
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", Recorder("lm"))
    ref = ModelRef("m", path=str(tmp_path))
    for load in (load_sentence_transformer, load_cross_encoder):
        with pytest.raises(InputError, match=r"model 'm' .* could not be loaded: recorded"):
            load(ref, "cpu")
    with pytest.raises(RuntimeError, match="recorded"):
        _load_causal_lm(ref, "cpu")
    assert [name for name, _ in calls] == ["st", "ce", "tok", "lm"]
    for name, kwargs in calls:
        assert kwargs["trust_remote_code"] is False, name
    assert calls[0][1]["model_kwargs"]["use_safetensors"] is True
    assert calls[1][1]["model_kwargs"]["use_safetensors"] is True
    assert calls[3][1]["use_safetensors"] is True


class _Payload:
    """Unpickling this runs code: it creates the file it names."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_weights_are_refused_not_unpickled(tmp_path):
    import torch
    from sentence_transformers import SentenceTransformer

    from irflow.models import ModelRef, load_sentence_transformer

    folder = tw.make_bi_encoder(tmp_path / "build")
    SentenceTransformer(str(folder), device="cpu")  # loads as shipped (safetensors)
    weights = sorted(folder.rglob("*.safetensors"))
    assert weights
    marker = tmp_path / "unpickled"
    for path in weights:  # the same model, but its weights a pickle that runs code when loaded
        path.unlink()
        torch.save({"weights": _Payload(str(marker))}, path.with_name("pytorch_model.bin"))
    with pytest.raises(InputError, match=r"model 'pickled' .* could not be loaded"):
        load_sentence_transformer(ModelRef("pickled", path=str(folder)), "cpu")
    assert not marker.exists()
    torch.load(path.with_name("pytorch_model.bin"), weights_only=False)  # the payload is real
    assert marker.exists()


REMOTE_CODE = """
from pathlib import Path
Path({marker!r}).write_text("remote code ran")
from transformers import PretrainedConfig
class EvilConfig(PretrainedConfig):
    model_type = "irflow-evil"
"""


def test_remote_code_is_refused_not_run(tmp_path):
    from irflow.cross_encoder import load_cross_encoder
    from irflow.models import ModelRef, load_sentence_transformer
    from irflow.training_data import TeacherSpec, load_teacher

    folder = tmp_path / "evil"
    folder.mkdir()
    marker = tmp_path / "remote-code-ran"
    (folder / "configuration_evil.py").write_text(REMOTE_CODE.format(marker=str(marker)))
    (folder / "modeling_evil.py").write_text(REMOTE_CODE.format(marker=str(marker)))
    (folder / "config.json").write_text(
        json.dumps(
            {
                "model_type": "irflow-evil",
                "auto_map": {
                    "AutoConfig": "configuration_evil.EvilConfig",
                    "AutoModel": "modeling_evil.EvilModel",
                    "AutoModelForCausalLM": "modeling_evil.EvilModel",
                    "AutoModelForSequenceClassification": "modeling_evil.EvilModel",
                },
            }
        )
    )
    ref = ModelRef("evil", path=str(folder))
    for load in (load_sentence_transformer, load_cross_encoder):
        with pytest.raises(InputError, match=r"model 'evil' .* could not be loaded"):
            load(ref, "cpu")
    with pytest.raises(InputError, match=r"teacher 'lm'.*could not be loaded"):
        load_teacher(TeacherSpec("lm", "causal-lm", ref), "cpu")
    assert not marker.exists()


CODE_PATTERN = re.compile(
    r"(?<![.\w])(eval|exec|compile|__import__)\(|yaml\.(load|unsafe_load|full_load)\(|"
    r"yaml\.(Unsafe|Full)?Loader\b|pickle\.loads?\("
)


def test_no_code_evaluation_in_the_workflow_and_library():
    """Config values reach the code as data: nothing evaluates strings as code, and YAML is
    read only with safe loaders (Snakemake's own configfile loading is safe YAML)."""
    files = [REPO / "Snakefile", *REPO.glob("rules/*.smk"), *REPO.glob("src/irflow/**/*.py")]
    files += REPO.glob("workflow_scripts/*.py")
    offenders = [
        f"{path.relative_to(REPO)}:{number}: {line.strip()}"
        for path in files
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if CODE_PATTERN.search(line)
    ]
    assert offenders == []


# ---------------------------------------------------------------------------------------------
# The tiny workflow
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Collection, model, and a working directory run up to the mined negatives, with a token
    planted in the environment of every job."""
    root = tmp_path_factory.mktemp("tiny")
    collection = tw.make_collection(root / "data")
    model = tw.make_bi_encoder(root / "models")
    config = tw.tiny_config(collection, model)
    base = root / "base"
    base.mkdir()
    env = secret_env()
    tw.run(base, config, tw.NEGATIVES, tw.TRAIN_QUERIES, env=env)
    return {"root": root, "collection": collection, "model": model, "config": config, "base": base}


def secret_env(env: dict | None = None) -> dict:
    env = dict(env or offline_env())
    env.update(HF_TOKEN=SECRET, HUGGING_FACE_HUB_TOKEN=SECRET, IRFLOW_TEST_SECRET=SECRET)
    return env


def workdir(tiny, tmp_path: Path) -> Path:
    """A copy of the prepared working directory (modification times and .snakemake kept)."""
    work = tmp_path / "work"
    shutil.copytree(tiny["base"], work, symlinks=True)
    return work


PAYLOAD = "__import__('os').system('touch {marker}')"


def test_config_values_are_data_not_code(tiny, tmp_path):
    """Code planted in config strings (descriptions, an x- key, a --config override) is
    carried as text: the jobs run, and the code never does."""
    marker = tmp_path / "payload-ran"
    payload = PAYLOAD.format(marker=marker)
    config = json.loads(json.dumps(tiny["config"]))
    config["datasets"]["tiny-train"]["description"] = payload
    config["training_sets"]["tiny-train"]["description"] = payload
    config["models"]["tiny"]["description"] = payload
    config["x-planted"] = {"value": payload, "list": [payload]}
    work = tmp_path / "work"
    work.mkdir()
    result = tw.run(work, config, tw.TRAIN_QUERIES, "--config", f"x-cli={payload}")
    assert "select_training_queries" in result.stdout + result.stderr
    assert (work / tw.TRAIN_QUERIES).is_file()
    # A payload where a name goes is refused by the schema, naming it, and not run either.
    config["models"] = {payload: config["models"]["tiny"]}
    bad = tw.run(tmp_path / "work", config, "-n", check=False)
    assert bad.returncode != 0 and "does not match" in bad.stdout + bad.stderr
    assert not marker.exists()


def test_planted_token_is_in_no_log_or_artifact(tiny):
    """The base run had HF_TOKEN and friends set: no file it wrote contains the token."""
    folder = tiny["base"]
    leaks = [
        str(path.relative_to(folder))
        for path in folder.rglob("*")
        if path.is_file() and SECRET.encode() in path.read_bytes()
    ]
    assert leaks == []
    assert list((folder / "results" / "logs").rglob("*.log"))  # the logs were there to check


# ---------------------------------------------------------------------------------------------
# Determinism
# ---------------------------------------------------------------------------------------------
def test_bm25_index_bytes_do_not_depend_on_the_hash_seed(tmp_path):
    """bm25s numbers stems in set order; irflow renumbers them so every process (each with its
    own string hash seed) writes the same index files."""
    from irflow.data import CORPUS_SCHEMA

    texts = ["cats running in rivers", "a dog runs", "rivers and cities", "running cats run"] * 3
    corpus = {"doc_id": [f"d{i}" for i in range(12)], "title": [""] * 12, "text": texts}
    pq.write_table(pa.table(corpus, schema=CORPUS_SCHEMA), tmp_path / "corpus.parquet")
    for seed in ("1", "2", "3"):
        subprocess.run(
            [sys.executable, "-c", "import sys; from irflow.bm25 import build_index; "
             "build_index(sys.argv[1], sys.argv[2], {})",
             str(tmp_path / "corpus.parquet"), str(tmp_path / f"index-{seed}")],
            check=True, env={**offline_env(), "PYTHONHASHSEED": seed},
        )  # fmt: skip
    files = [
        {p.relative_to(index): p.read_bytes() for p in index.rglob("*") if p.is_file()}
        for index in sorted(tmp_path.glob("index-*"))
    ]
    assert files[0] and files[0] == files[1] == files[2]


# ---------------------------------------------------------------------------------------------
# Kill and rerun: no truncated file is ever taken as done
# ---------------------------------------------------------------------------------------------
def temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*.tmp"))


@pytest.mark.slow
def test_killed_teacher_shard_leaves_no_shard_and_resumes_at_shard_granularity(tiny, tmp_path):
    from irflow.training_data.teacher import shard_rows

    work = workdir(tiny, tmp_path)
    config = tiny["config"]
    tw.run(work, config, tw.SHARD0)
    env = tw.slow_hook(
        tmp_path / "hook",
        "score_teacher_shard.py",
        "irflow.training_data.artifacts",
        "ParquetSink.write",
    )
    # Shard 0 is done; shard 1 is killed after its first chunk went into the file.
    tw.run_and_kill(work, config, env, tmp_path / "hook" / "stalled", tw.SCORES)
    tw.unlock(work, tiny["config"])
    folder = work / Path(tw.SCORES).with_suffix("")
    kept = [name for name in listing(folder) if not name.endswith(".tmp")]
    assert kept == ["shard-0-of-2.parquet"]
    assert [name.startswith(".shard-1-of-2.parquet.") for name in temp_files(folder)] == [True]
    assert not (work / tw.SCORES).exists()
    # The rerun scores shard 1 only (shard 0 is kept) and merges.
    result = tw.run(work, config, tw.SCORES)
    log = result.stdout + result.stderr
    assert re.search(r"score_teacher_shard\s+1\b", log), log[-3000:]
    table = pq.read_table(work / tw.SCORES)
    samples = pq.read_table(work / tw.NEGATIVES)
    assert table.column("query_id").equals(samples.column("query_id"))
    assert table.column("neg_ids").equals(samples.column("neg_ids"))
    start, stop = shard_rows(samples.num_rows, 1, 2, config["teachers"]["tiny"]["chunk_samples"])
    assert pq.read_metadata(folder / "shard-1-of-2.parquet").num_rows == stop - start


@pytest.mark.slow
def test_killed_corpus_encoding_leaves_no_embeddings(tiny, tmp_path):
    from sentence_transformers import SentenceTransformer

    from irflow.data import doc_texts

    work = workdir(tiny, tmp_path)
    env = tw.slow_hook(tmp_path / "hook", "encode_corpus.py", "irflow.dense", "_encode")
    tw.run_and_kill(work, tiny["config"], env, tmp_path / "hook" / "stalled", tw.EMBEDDINGS)
    tw.unlock(work, tiny["config"])
    embeddings = work / tw.EMBEDDINGS
    assert not embeddings.exists()
    assert temp_files(embeddings.parent), "the killed job was writing its temporary folder"
    tw.run(work, tiny["config"], tw.EMBEDDINGS)
    # (Snakemake stamps directory outputs with .snakemake_timestamp.)
    assert listing(embeddings) == [".snakemake_timestamp", "doc_ids.json", "embeddings.npy"]
    model = SentenceTransformer(str(tiny["model"]), device="cpu")
    corpus = pq.read_table(work / "results/data/corpora/tiny/corpus.parquet")
    expected = model.encode(doc_texts(corpus), normalize_embeddings=True)
    np.testing.assert_allclose(np.load(embeddings / "embeddings.npy"), expected, atol=1e-5)


@pytest.mark.slow
def test_killed_bm25_indexing_leaves_no_index(tiny, tmp_path):
    work = workdir(tiny, tmp_path)
    index = work / tw.BM25_INDEX
    reference = {p.relative_to(index): p.read_bytes() for p in index.rglob("*") if p.is_file()}
    shutil.rmtree(index)
    env = tw.slow_hook(tmp_path / "hook", "bm25_index.py", "bm25s", "BM25.save")
    tw.run_and_kill(work, tiny["config"], env, tmp_path / "hook" / "stalled", tw.BM25_INDEX)
    tw.unlock(work, tiny["config"])
    assert not index.exists()
    assert temp_files(index.parent)
    tw.run(work, tiny["config"], tw.BM25_INDEX)
    rebuilt = {p.relative_to(index): p.read_bytes() for p in index.rglob("*") if p.is_file()}
    assert rebuilt == reference


@pytest.mark.slow
def test_job_killed_between_its_outputs_is_rerun_not_taken_as_done(tiny, tmp_path):
    """select_training_queries writes three files, each atomically: killed after the second,
    two complete-looking files exist. Snakemake's incomplete-job record makes it refuse them
    (plain run) or redo the job (the profiles' rerun-incomplete). A killed Snakemake also
    leaves its lock: the next run refuses to start until ``--unlock``."""
    work = workdir(tiny, tmp_path)
    outputs = [
        work / tw.TRAIN_QUERIES,
        work / "results/training-data/tiny-train/qrels.trec",
        work / "results/training-data/tiny-train/queries.stats.json",
    ]
    reference = [path.read_bytes() for path in outputs]
    for path in outputs:
        path.unlink()
    env = tw.slow_hook(
        tmp_path / "hook",
        "select_training_queries.py",
        "irflow.training_data.selection",
        "write_trec_qrels",
    )
    tw.run_and_kill(work, tiny["config"], env, tmp_path / "hook" / "stalled", tw.TRAIN_QUERIES)
    assert [path.exists() for path in outputs] == [True, True, False]
    locked = tw.run(work, tiny["config"], tw.TRAIN_QUERIES, check=False)
    assert locked.returncode != 0 and "cannot be locked" in locked.stdout + locked.stderr
    tw.unlock(work, tiny["config"])
    config_path = work / "test-config.yaml"
    plain = subprocess.run(
        snakemake_command(work, config_path, "--cores", "1", tw.TRAIN_QUERIES),
        capture_output=True,
        text=True,
        env=offline_env(),
        cwd=work,
    )
    assert plain.returncode != 0
    assert "incomplete" in (plain.stdout + plain.stderr).lower()
    time.sleep(1)  # the rewritten files get newer modification times than the kept ones
    result = tw.run(work, tiny["config"], tw.TRAIN_QUERIES)
    assert "select_training_queries" in result.stdout + result.stderr
    assert [path.read_bytes() for path in outputs] == reference


# ---------------------------------------------------------------------------------------------
# Cluster faults: a job failing on its first attempt is resubmitted with more and completes
# ---------------------------------------------------------------------------------------------
FAIL_ONCE = """
import os, subprocess, sys
from pathlib import Path
if os.path.basename(sys.argv[0]).endswith("bm25_retrieve.py"):
    folder = Path({folder!r})
    attempt = len(list(folder.glob("attempt-*.txt"))) + 1
    job = os.environ.get("SLURM_JOB_ID", "none")
    record = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True)
    (folder / f"attempt-{{attempt}}.txt").write_text(record.stdout)
    if attempt == 1:
        import irflow.bm25
        def fail(*args, **kwargs):
            raise RuntimeError("simulated node failure on the first attempt")
        irflow.bm25.retrieve = fail
"""


def scontrol_field(record: str, name: str) -> str:
    match = re.search(rf"\b{name}=(\S+)", record)
    assert match, f"{name} not in {record!r}"
    return match.group(1)


@pytest.mark.slow
def test_slurm_retries_a_failed_job_with_more_memory_and_time(tiny, tmp_path):
    require_slurm()
    work = workdir(tiny, tmp_path)
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(FAIL_ONCE.format(folder=str(hook)))
    env = offline_env(hook)
    target = "results/runs/tiny-test/first-stage/bm25.trec"
    config_path = write_config(work, tiny["config"])
    result = subprocess.run(
        snakemake_command(work, config_path, "--profile", str(REPO / "profiles/slurm"), target),
        capture_output=True,
        text=True,
        env=env,
        cwd=work,
        timeout=600,
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    assert (work / target).is_file()
    first, second = (hook / f"attempt-{i}.txt" for i in (1, 2))
    assert first.is_file() and second.is_file() and not (hook / "attempt-3.txt").exists()
    first, second = first.read_text(), second.read_text()
    assert scontrol_field(first, "JobId") != scontrol_field(second, "JobId")
    # tiny_config: mem_mb 1000 and runtime 5 min for every rule, times the attempt number.
    assert scontrol_field(first, "MinMemoryNode") == "1000M"
    assert scontrol_field(second, "MinMemoryNode") == "2000M"
    assert scontrol_field(first, "TimeLimit") == "00:05:00"
    assert scontrol_field(second, "TimeLimit") == "00:10:00"
    assert "simulated node failure on the first attempt" in log or "Trying to restart" in log
