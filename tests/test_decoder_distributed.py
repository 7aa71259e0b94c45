"""The unified decoder trainer in several torchrun processes (gloo on this CPU).

Two processes through :func:`irflow.launch.run` (what rule ``train_unified`` does with
``gpus: 2``) train one model from the same tiny random Llama and data as one process with the
same global batch. What agrees, and how closely:

* one step's gradient of each task (the flat gradient every process holds after the
  all-reduce) to ``GRADIENT_TOLERANCE`` relative to its largest entry: float32 rounding (the
  processes pad their shares differently and the summed gradient adds in another order);
  measured 6e-7 (embedding, with gradient caching) and 1e-6 (reranking);
* the trained weights to ``WEIGHT_TOLERANCE`` absolute, after 4 AdamW steps at lr 1e-3:
  AdamW divides each entry by its own running gradient size, so the rounding of entries
  whose gradient is tiny moves them by a visible fraction of a step (measured 7e-6 on lora_A,
  whose gradient starts near zero with lora_B; under 2e-7 on every lora_B and router);
* the per-step losses and gradient norms to ``LOSS_TOLERANCE``, the MoE usage counters
  (summed over the processes) exactly.

The run covers both multi-process paths: the embedding batch with gradient caching
(mini-batches of each process's share) and the reranking batch without, uneven shares (5
queries over 2 processes), MoE-LoRA (the other task's experts unused in a pass), PCGrad,
gradient accumulation and rank-0-only checkpoints. Dropout and the MoE load-balancing term
are off: with them the processes differ from one process by design (see irflow.decoder.train).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from test_decoder_unified import WORDS, tiny_config, train_tokenizer

from irflow.decoder import distributed

WEIGHT_TOLERANCE = 3e-5
GRADIENT_TOLERANCE = 1e-5
LOSS_TOLERANCE = 1e-5


def test_shares_are_contiguous_and_cover_every_row():
    assert distributed.sizes(5, 2) == [3, 2] and distributed.sizes(4, 4) == [1] * 4
    rows = list(range(7))
    shares = [rows[distributed.shard(7, 3, r)] for r in range(3)]
    assert shares == [[0, 1, 2], [3, 4], [5, 6]]
    assert distributed.shard(6, 1, 0) == slice(0, 6)


def test_a_reading_process_leaves_the_checkpoints_alone(tmp_path):
    from irflow.decoder.train import Checkpoints

    folder = tmp_path / "ckpt"
    writer = Checkpoints(folder, {"run": 1}, every=1)
    assert writer.latest() is None  # writes run.json
    writer.save(1, {"x": torch.ones(1)})
    (folder / ".step-00000002.pt.partial").write_bytes(b"half")
    reader = Checkpoints(folder, {"run": 1}, every=1, writer=False)
    assert torch.equal(reader.latest()["x"], torch.ones(1))
    reader.save(2, {"x": torch.zeros(1)})
    reader.clear()
    other = Checkpoints(folder, {"run": 2}, every=1, writer=False)
    assert other.latest() is None  # another run's checkpoints: none for it, none deleted
    assert sorted(p.name for p in folder.iterdir()) == [
        ".step-00000002.pt.partial", "run.json", "step-00000001.pt",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    from transformers import AutoModelForCausalLM

    folder = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = train_tokenizer(folder)
    torch.manual_seed(3)
    config = tiny_config("llama", len(tokenizer), tokenizer.eos_token_id)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    """10 samples over 5 queries, 2 to 4 hard negatives each (uneven pair counts)."""
    from irflow.data import CORPUS_SCHEMA, QUERIES_SCHEMA
    from irflow.training_data import SCORES_SCHEMA

    root = tmp_path_factory.mktemp("distributed-data")
    rng = np.random.default_rng(2)
    docs = {f"d{i}": " ".join(rng.choice(WORDS, 4 + i % 7)) for i in range(24)}
    queries = {f"q{i}": " ".join(rng.choice(WORDS, 2 + i % 3)) for i in range(5)}
    pq.write_table(
        pa.table({"doc_id": list(docs), "title": [""] * len(docs), "text": list(docs.values())},
                 schema=CORPUS_SCHEMA), root / "corpus.parquet")  # fmt: skip
    pq.write_table(pa.table({"query_id": list(queries), "text": list(queries.values())},
                            schema=QUERIES_SCHEMA), root / "queries.parquet")  # fmt: skip
    rows = {"query_id": [], "pos_id": [], "pos_score": [], "neg_ids": [], "neg_scores": []}
    for i in range(10):
        rows["query_id"].append(f"q{i % 5}")
        rows["pos_id"].append(f"d{i}")
        rows["pos_score"].append(1.0)
        negs = [f"d{10 + (i * 3 + k) % 14}" for k in range(2 + i % 3)]
        rows["neg_ids"].append(negs)
        rows["neg_scores"].append([0.0] * len(negs))
    pq.write_table(pa.table(rows, schema=SCORES_SCHEMA), root / "samples.parquet")
    return {k: str(root / f"{k}.parquet") for k in ("samples", "queries", "corpus")}


SPEC = {
    "adapter": {"kind": "moe-lora", "r": 4, "alpha": 8, "dropout": 0.0, "aux_loss_weight": 0.0,
                "num_shared_experts": 1, "num_task_experts": 1, "top_k": 2},
    "embedding": {"max_query_length": 48, "max_document_length": 24, "batch_size": 5,
                  "num_negatives": 3, "mini_batch_size": 2},
    "reranking": {"max_length": 64, "batch_size": 3, "num_negatives": 2, "ranknet_weight": 0.5},
    "training": {"optimizer": "adamw", "gradient_accumulation_steps": 2,
                 "checkpoint_every_steps": 2, "stages": [
        {"name": "embed", "tasks": ["embed"], "steps": 2, "lr": 1e-3},
        {"name": "joint", "tasks": ["embed", "rerank"], "steps": 2, "lr": 1e-3, "pcgrad": True},
    ]},
}  # fmt: skip


def call(tiny_llama, files, out: Path) -> dict:
    return {
        "spec_dict": SPEC,
        "samples_parquet": files["samples"],
        "queries_parquet": files["queries"],
        "corpus_parquet": files["corpus"],
        "base": {"name": "tiny-llama", "path": str(tiny_llama)},
        "out_dir": str(out / "model"),
        "diagnostics_dir": str(out / "diagnostics"),
        "checkpoint_dir": str(out / "checkpoints"),
    }


@pytest.mark.slow  # two fresh Python processes importing torch and transformers: ~30 s
def test_two_processes_train_the_one_process_weights(tiny_llama, files, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from irflow import launch
    from irflow.decoder.diagnostics import read_tsv
    from irflow.decoder.train import train_unified_from_config

    monkeypatch.setenv("IRFLOW_DEVICE", "cpu")
    torch.set_num_threads(1)
    one = train_unified_from_config(**call(tiny_llama, files, tmp_path / "one"))
    two = launch.run(
        2, "irflow.decoder.train:train_unified_from_config",
        call(tiny_llama, files, tmp_path / "two"), threads_per_process=1,
    )  # fmt: skip
    assert one["world_size"] == 1 and two["world_size"] == 2
    assert two["examples"] == one["examples"]  # the same global batches
    assert [s["batching"] for s in two["stages"]] == [s["batching"] for s in one["stages"]]
    assert not (tmp_path / "two" / "checkpoints").exists()  # rank 0 cleared them

    a = load_file(tmp_path / "one" / "model" / "adapter_model.safetensors")
    b = load_file(tmp_path / "two" / "model" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and any("lora_router" in k for k in a)
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    moved = max(float(v.abs().max()) for k, v in a.items() if "lora_B" in k)
    print(f"two processes vs one: max |weight diff| {diff:.3g} (max |lora_B| {moved:.3g})")
    assert moved > 0 and diff < WEIGHT_TOLERANCE

    logs = [read_tsv(tmp_path / run / "diagnostics" / "train_log.tsv") for run in ("one", "two")]
    assert [(r["stage"], r["step"]) for r in logs[0]] == [(r["stage"], r["step"]) for r in logs[1]]
    for x, y in zip(*logs, strict=True):
        for key in ("loss", "grad_norm"):
            expected = pytest.approx(float(y[key]), rel=LOSS_TOLERANCE, abs=LOSS_TOLERANCE)
            assert float(x[key]) == expected, (key, x)
    usage = [
        [(r["stage"], r["module"], r["layer"], r["task"], r["expert"], r["tokens"], r["count"])
         for r in read_tsv(tmp_path / run / "diagnostics" / "expert_usage.tsv")]
        for run in ("one", "two")
    ]  # fmt: skip
    assert usage[0] == usage[1] and usage[0]
    stats = json.loads((tmp_path / "two" / "model" / "train_stats.json").read_text())
    assert stats["world_size"] == 2


GRADIENT_SCRIPT = """
import sys, torch
sys.path.insert(0, sys.argv[4])
from irflow.decoder import distributed
from irflow.decoder.base import load_base
from irflow.decoder.checkpoint import build_model
from irflow.decoder.samples import read_training_set
from irflow.decoder.spec import parse_spec
from irflow.decoder.train import Trainer
from test_decoder_distributed import SPEC

torch.set_num_threads(1)
data_dir, base_dir, out = sys.argv[1:4]
spec = parse_spec(SPEC)
with distributed.process_group("cpu"):
    data = read_training_set(*(f"{data_dir}/{k}.parquet" for k in ("samples", "queries", "corpus")))
    base, tokenizer = load_base(base_dir, "cpu")
    model = build_model(base, tokenizer, spec)
    generator = torch.Generator().manual_seed(5)  # every adapter weight non-zero (B included)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    trainer = Trainer(model.train(), spec, data, "cpu")
    grads = {task: trainer.task_gradient(task, 1)[:2] for task in ("embed", "rerank")}
    if distributed.rank() == 0:
        torch.save(grads, out)
"""


@pytest.mark.slow  # two fresh Python processes: ~15 s
def test_two_processes_hold_the_one_process_gradient(tiny_llama, files, tmp_path):
    import os
    import subprocess
    import sys

    script = tmp_path / "gradient.py"
    script.write_text(GRADIENT_SCRIPT)
    data_dir = str(Path(files["samples"]).parent)
    args = [data_dir, str(tiny_llama)]
    tests = str(Path(__file__).parent)
    runs = {
        "one": [sys.executable, str(script)],
        "two": [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node", "2", str(script)],
    }  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    for name, command in runs.items():
        done = subprocess.run(
            [*command, *args, str(tmp_path / f"{name}.pt"), tests],
            capture_output=True, text=True, timeout=300, env=env,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
    one, two = (torch.load(tmp_path / f"{n}.pt") for n in ("one", "two"))
    for task in ("embed", "rerank"):
        (g1, loss1), (g2, loss2) = one[task], two[task]
        relative = float((g1 - g2).abs().max() / g1.abs().max())
        print(f"{task}: two processes vs one, max |grad diff| / max |grad| {relative:.3g}")
        assert relative < GRADIENT_TOLERANCE, (task, relative)
        assert loss2 == pytest.approx(loss1, rel=1e-6)
