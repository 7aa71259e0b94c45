"""Training entry points: short runs of each objective, determinism, resume after interruption.

The student is a 4-layer, 32-wide random BERT *with dropout* (so the seeded RNG states matter),
trained for a few steps on 12 teacher-scored samples of random words, on one CPU thread.
"""

from __future__ import annotations

import json
import logging

import pytest
import torch
from test_students_common import state_dicts_equal, tiny_bi_encoder, tiny_training_set

from irflow.io import InputError
from irflow.students import StudentTrainingSpec, save_untrained
from irflow.students.data import EpochSeededBatchSampler, load_samples, to_dataset
from irflow.students.train import COMPLETE_MARKER, train_bi_encoder, train_cross_encoder

TRAIN = {"cross-encoder": train_cross_encoder, "bi-encoder": train_bi_encoder}
CURVE_KEYS = {
    "step", "epoch", "loss", "lr", "grad_norm", "samples", "seconds", "samples_per_second",
    "pairs_per_second",
}  # fmt: skip


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("train")
    return {
        "init": tiny_bi_encoder(root / "init", dropout=0.1),
        "data": tiny_training_set(root / "data"),
    }


def spec(objective, **overrides) -> StudentTrainingSpec:
    config = {
        "objective": objective,
        "batch_size": 4,
        "num_negatives": 3,
        "max_length": 24,
        "max_steps": 2,
        "optimizer": {"name": "adamw", "lr": 1e-3},
        "schedule": {"name": "linear", "warmup_ratio": 0.25},
        "seed": 7,
    }
    config.update(overrides)
    return StudentTrainingSpec.from_config(config)


def run(kind, training_spec, setup, out, checkpoints=None, callbacks=None):
    data = setup["data"]
    return TRAIN[kind](
        training_spec, data["scores"], data["queries"], data["corpus"], setup["init"],
        out / "model", checkpoints, out / "curves.jsonl", device="cpu", callbacks=callbacks,
    )  # fmt: skip


def weights(kind, folder) -> dict:
    from sentence_transformers import CrossEncoder, SentenceTransformer

    if kind == "cross-encoder":
        return CrossEncoder(str(folder), device="cpu").state_dict()
    return SentenceTransformer(str(folder), device="cpu").state_dict()


def curves(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ---------------------------------------------------------------------------------------------
# Short runs
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kind", "objective"),
    [
        ("cross-encoder", {"name": "bce"}),
        ("cross-encoder", {"name": "cl", "temperature": 0.5}),
        ("cross-encoder", {"name": "kd", "temperature": 2.0}),
        ("cross-encoder", {"name": "margin_mse"}),
        ("bi-encoder", {"name": "margin_mse", "matryoshka_dims": [32, 16]}),
        ("bi-encoder", {"name": "infonce"}),
        ("bi-encoder", {"name": "cached_infonce", "mini_batch_size": 2}),
    ],
)
def test_two_steps_give_a_loadable_model_and_curves(kind, objective, setup, tmp_path):
    from sentence_transformers import CrossEncoder, SentenceTransformer

    stats = run(kind, spec(objective), setup, tmp_path)
    assert stats["steps"] == 2 and stats["samples_seen"] == 8
    assert stats["samples_used"] == 12 and stats["samples_dropped_too_few_negatives"] == 0
    assert stats["pairs_per_sample"] == 4 and stats["score_kind"] == "logit"
    assert stats["device"] == "cpu" and stats["bf16"] is False
    rows = curves(tmp_path / "curves.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    assert all(set(r) == CURVE_KEYS for r in rows)
    assert all(r["samples"] == 4 and r["grad_norm"] > 0 for r in rows)
    # Warm-up over ceil(0.25 * 2) = 1 step, from 0; then linear decay (the lr each step used).
    assert [r["lr"] for r in rows] == [0.0, pytest.approx(1e-3)]
    assert stats["final_loss"] == rows[-1]["loss"]
    texts = [("cat dog", "the cat and the dog"), ("river", "gene of a drug")]
    if kind == "cross-encoder":
        model = CrossEncoder(str(tmp_path / "model"), device="cpu")
        assert model.num_labels == 1
        assert model.predict(texts).shape == (2,)
    else:
        model = SentenceTransformer(str(tmp_path / "model"), device="cpu")
        assert model.encode([t for t, _ in texts]).shape == (2, 32)
    untrained = weights(kind, setup["init"])
    trained = model.state_dict()
    assert any(not torch.equal(trained[k], untrained[k]) for k in untrained if k in trained)


def test_runs_are_deterministic_and_depend_on_the_seed(setup, tmp_path):
    training = spec({"name": "cl", "in_batch_negatives": 1}, max_steps=3)
    run("cross-encoder", training, setup, tmp_path / "a")
    run("cross-encoder", training, setup, tmp_path / "b")
    run("cross-encoder", spec({"name": "cl", "in_batch_negatives": 1}, max_steps=3, seed=8),
        setup, tmp_path / "c")  # fmt: skip
    a, b, c = (weights("cross-encoder", tmp_path / x / "model") for x in "abc")
    assert state_dicts_equal(a, b)
    assert not state_dicts_equal(a, c)
    for name in ("model.safetensors", "config.json"):
        first, second = (tmp_path / x / "model" / name for x in "ab")
        assert first.read_bytes() == second.read_bytes()


class Interrupt(Exception):
    pass


def interrupt_after(step: int):
    from transformers import TrainerCallback

    class Stop(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == step:
                raise Interrupt(f"stopped after step {step}")

    return Stop()


@pytest.mark.parametrize(
    ("kind", "objective"),
    [
        ("cross-encoder", {"name": "cl", "in_batch_negatives": 2}),  # uses the global RNG
        ("bi-encoder", {"name": "margin_mse"}),
    ],
)
def test_resumed_run_equals_an_uninterrupted_one(kind, objective, setup, tmp_path, caplog):
    # 12 samples, 4 per step: 3 steps per epoch, 2 epochs. Checkpoints at steps 2 and 4; the
    # interruption at step 5 (in the second epoch) loses step 5, redone after resuming from 4.
    # The bi-encoder batches by length (irflow's sampler), the cross-encoder by the library's.
    training = spec(
        objective,
        max_steps=None,
        epochs=2,
        checkpoint_every_steps=2,
        group_by_length=kind == "bi-encoder",
    )
    run(kind, training, setup, tmp_path / "straight", tmp_path / "straight-checkpoints")
    checkpoints = tmp_path / "checkpoints"
    with pytest.raises(Interrupt):
        run(kind, training, setup, tmp_path / "resumed", checkpoints, [interrupt_after(5)])
    assert not (tmp_path / "resumed" / "model").exists()
    assert not (tmp_path / "resumed" / "curves.jsonl").exists()
    assert sorted(p.name for p in checkpoints.glob("checkpoint-*")) == [
        "checkpoint-2", "checkpoint-4",
    ]  # fmt: skip
    assert (checkpoints / "checkpoint-4" / COMPLETE_MARKER).is_file()
    stats = run(kind, training, setup, tmp_path / "resumed", checkpoints)
    assert stats["resumed_from_step"] == 4 and stats["steps"] == 6
    straight = weights(kind, tmp_path / "straight" / "model")
    resumed = weights(kind, tmp_path / "resumed" / "model")
    assert state_dicts_equal(straight, resumed)
    # The curve is complete and identical except for timings.
    timing = {"seconds", "samples_per_second", "pairs_per_second"}
    a = [
        {k: v for k, v in r.items() if k not in timing}
        for r in curves(tmp_path / "straight" / "curves.jsonl")
    ]  # noqa: E501
    b = [
        {k: v for k, v in r.items() if k not in timing}
        for r in curves(tmp_path / "resumed" / "curves.jsonl")
    ]  # noqa: E501
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]
    assert a == b


def test_checkpoints_of_another_run_or_incomplete_ones_are_not_resumed(setup, tmp_path, caplog):
    training = spec({"name": "kd"}, max_steps=4, checkpoint_every_steps=1)
    checkpoints = tmp_path / "checkpoints"
    with pytest.raises(Interrupt):
        run("cross-encoder", training, setup, tmp_path / "a", checkpoints, [interrupt_after(3)])
    (checkpoints / "checkpoint-2" / COMPLETE_MARKER).unlink()  # as if killed while saving
    with caplog.at_level(logging.WARNING), pytest.raises(Interrupt):
        run("cross-encoder", training, setup, tmp_path / "a", checkpoints, [interrupt_after(3)])
    assert "discarding incomplete checkpoint" in caplog.text
    caplog.clear()
    other = spec({"name": "kd"}, max_steps=4, checkpoint_every_steps=1, seed=9)
    with caplog.at_level(logging.WARNING):
        stats = run("cross-encoder", other, setup, tmp_path / "b", checkpoints)
    assert "of a different run" in caplog.text
    assert stats["resumed_from_step"] is None and stats["steps"] == 4
    fresh = run("cross-encoder", other, setup, tmp_path / "c")
    assert fresh["steps"] == 4
    assert state_dicts_equal(
        weights("cross-encoder", tmp_path / "b" / "model"),
        weights("cross-encoder", tmp_path / "c" / "model"),
    )


def test_lora_adapters_are_merged_into_a_plain_model(setup, tmp_path):
    training = spec({"name": "kd"}, lora={"r": 2, "alpha": 4, "target_modules": ["query", "value"]})
    stats = run("cross-encoder", training, setup, tmp_path)
    assert stats["lora"] is True and stats["params_trainable"] < stats["params_total"]
    trained = weights("cross-encoder", tmp_path / "model")
    assert not any("lora" in k or "modules_to_save" in k for k in trained)
    untrained_dir = tmp_path / "untrained"
    save_untrained("cross-encoder", training, setup["init"], untrained_dir, device="cpu")
    untrained = weights("cross-encoder", untrained_dir)
    assert trained.keys() == untrained.keys()
    changed = {k for k in trained if not torch.equal(trained[k], untrained[k])}
    # LoRA on query/value: those projections and the (fully trained) head change, nothing else.
    assert changed and all(("query" in k or "value" in k or "classifier" in k) for k in changed)
    assert any("classifier" in k for k in changed)


def test_untrained_student_is_seeded(setup, tmp_path):
    training = spec({"name": "kd"})
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        save_untrained("cross-encoder", spec({"name": "kd"}, seed=seed), setup["init"],
                       tmp_path / name, device="cpu")  # fmt: skip
    a, b, c = (weights("cross-encoder", tmp_path / x) for x in "abc")
    assert state_dicts_equal(a, b) and not state_dicts_equal(a, c)
    head = [k for k in a if k.endswith("classifier.weight")]  # (its bias starts at zero)
    assert len(head) == 1 and not torch.equal(a[head[0]], c[head[0]])
    assert training.seed == 7


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------
def test_samples_use_the_first_negatives_and_drop_short_ones(setup):
    data = setup["data"]
    samples = load_samples(data["scores"], data["queries"], data["corpus"], 4)
    # Every other sample has 4 negatives, the rest 3.
    assert len(samples) == 6 and samples.stats["samples_dropped_too_few_negatives"] == 6
    three = load_samples(data["scores"], data["queries"], data["corpus"], 3)
    table = __import__("pyarrow.parquet").parquet.read_table(data["scores"])
    first = table.slice(1, 1).to_pylist()[0]  # sample 1 has 4 negatives; 3 are used
    assert three.neg_scores[1].tolist() == pytest.approx(first["neg_scores"][:3])
    assert three.pos_scores[1] == pytest.approx(first["pos_score"])
    dataset = to_dataset(three, "ntuple_scores")
    assert dataset.column_names == [
        "query", "positive", "negative_1", "negative_2", "negative_3", "label",
    ]  # fmt: skip
    assert dataset[1]["label"] == pytest.approx([first["pos_score"], *first["neg_scores"][:3]])
    pairs = to_dataset(three, "pairs")
    assert len(pairs) == 48 and pairs[0]["label"] == 1.0 and pairs[1]["label"] == 0.0
    assert pairs[0]["document"] == three.positives[0]
    with pytest.raises(InputError, match="no sample has 5 negatives"):
        load_samples(data["scores"], data["queries"], data["corpus"], 5)


def test_missing_texts_and_foreign_files_are_refused(setup, tmp_path):
    import pyarrow.parquet as pq

    data = setup["data"]
    corpus = pq.read_table(data["corpus"])
    pq.write_table(corpus.slice(0, 30), tmp_path / "corpus.parquet")
    with pytest.raises(InputError, match="are not in the corpus"):
        load_samples(data["scores"], data["queries"], tmp_path / "corpus.parquet", 3)
    with pytest.raises(InputError, match="no 'irflow' metadata"):
        load_samples(data["corpus"], data["queries"], data["corpus"], 3)
    with pytest.raises(ValueError, match="unknown cross-encoder objective 'infonce'"):
        run("cross-encoder", spec({"name": "infonce"}), setup, tmp_path)
    assert not (tmp_path / "model").exists()


def test_epoch_seeded_sampler_covers_every_row_and_groups_by_length(setup):
    data = setup["data"]
    samples = load_samples(data["scores"], data["queries"], data["corpus"], 3)
    dataset = to_dataset(samples, "pairs")  # 48 rows
    plain = EpochSeededBatchSampler(dataset, batch_size=8, drop_last=False, seed=3)
    grouped = EpochSeededBatchSampler(
        dataset, batch_size=8, drop_last=False, seed=3, group_by_length=True, megabatch_batches=6
    )
    orders = {}
    for sampler in (plain, grouped):
        for epoch in (0, 1):
            sampler.set_epoch(epoch)
            batches = list(sampler)
            assert sorted(i for b in batches for i in b) == list(range(48))
            assert batches == list(sampler)  # a function of (seed, epoch) alone
            orders[sampler is grouped, epoch] = batches
    assert orders[False, 0] != orders[False, 1]
    lengths = grouped.lengths
    for batch in orders[True, 0]:  # one mega-batch of 6 batches: sorted by length
        assert [lengths[i] for i in batch] == sorted((lengths[i] for i in batch), reverse=True)
    spread = [max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in orders[True, 0]]
    random_spread = [
        max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in orders[False, 0]
    ]  # noqa: E501
    assert sum(spread) < sum(random_spread)


DDP_SCRIPT = """
import json, os, sys, torch
from irflow.students import StudentTrainingSpec, train_cross_encoder
torch.set_num_threads(1)
init, scores, queries, corpus, out = sys.argv[1:6]
spec = StudentTrainingSpec.from_config(json.loads(sys.argv[6]))
stats = train_cross_encoder(spec, scores, queries, corpus, init, out + "/model",
                            out + "/checkpoints", out + "/curves.jsonl", device="cpu")
with open(f"{out}/stats-{os.environ['RANK']}.json", "w") as handle:
    json.dump({k: stats[k] for k in ("world_size", "steps", "samples_seen")}, handle)
"""


@pytest.mark.slow  # two fresh Python processes importing torch: about 20 s on 2 cores
def test_two_processes_under_torchrun_train_one_model(setup, tmp_path):
    """The multi-GPU launch path, on CPU: torchrun, two processes, gloo, a global batch of 4."""
    import os
    import subprocess
    import sys

    from sentence_transformers import CrossEncoder

    (tmp_path / "ddp.py").write_text(DDP_SCRIPT)
    config = {"objective": {"name": "kd"}, "batch_size": 4, "num_negatives": 3,
              "max_length": 24, "max_steps": 3, "checkpoint_every_steps": 2}  # fmt: skip
    data = setup["data"]
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_port", str(29500 + os.getpid() % 1000), str(tmp_path / "ddp.py"),
        str(setup["init"]), str(data["scores"]), str(data["queries"]), str(data["corpus"]),
        str(tmp_path / "out"), json.dumps(config),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    reports = [json.loads((tmp_path / "out" / f"stats-{r}.json").read_text()) for r in (0, 1)]
    # Each process takes 2 of the 4 samples of a step: 12 samples are 3 steps.
    assert reports == [{"world_size": 2, "steps": 3, "samples_seen": 12}] * 2
    assert [r["step"] for r in curves(tmp_path / "out" / "curves.jsonl")] == [1, 2, 3]
    assert CrossEncoder(str(tmp_path / "out" / "model"), device="cpu").predict([("a", "b")]).shape
    assert not (tmp_path / "out" / "checkpoints").exists()  # removed once the model is saved
