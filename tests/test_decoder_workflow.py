"""The unified decoder through Snakemake: configs/ci-decoder.yaml end to end with a tiny randomly
initialised Llama (built here, with the byte-level tokenizer of test_decoder_unified), the
study table and heatmaps, a reloaded joint model reproducing its run files byte for byte, rerun
isolation of one arm, and the configuration errors (before any job runs)."""

from __future__ import annotations

import copy
import json
from collections import defaultdict

import pandas as pd
import pytest
from workflow_helpers import absolute_config, planned_jobs, require_config_inputs, snakemake

CONFIG = "configs/ci-decoder.yaml"
ARMS = ["joint-lora", "embed-only", "rerank-only", "joint-lora-pcgrad", "joint-moe"]
JOINT = ["joint-lora", "joint-lora-pcgrad", "joint-moe"]
KINDS = {"dense": "first-stage/{arm}", "cosine": "rerank/given/{arm}.cosine",
         "yesno": "rerank/given/{arm}.yesno"}  # fmt: skip


def ci_config(base_path: str = "/nonexistent/tiny-llama") -> dict:
    config = absolute_config(CONFIG)
    config["models"]["tiny-llama"]["path"] = str(base_path)
    return config


def _dry_run_error(tmp_path, config) -> str:
    result = snakemake(tmp_path, config, "-n", check=False)
    assert result.returncode != 0, "a bad config must stop the workflow"
    assert not (tmp_path / "results").exists(), "nothing may be written for a bad config"
    return result.stdout + result.stderr


def read_run(path) -> dict[str, dict[str, float]]:
    run: dict[str, dict[str, float]] = defaultdict(dict)
    for line in path.read_text().splitlines():
        qid, _, doc, _, score, _ = line.split()
        run[qid][doc] = float(score)
    return dict(run)


# ------------------------------------------------------------------------------------------
# Configuration errors (no job runs; the base model need not exist)
# ------------------------------------------------------------------------------------------
def test_config_is_complete_without_the_base_model(tmp_path):
    result = snakemake(tmp_path, ci_config(), "-n")
    jobs = planned_jobs(result.stdout)
    for rule in ("train_unified", "decoder_encode_corpus", "decoder_dense_retrieve",
                 "decoder_cosine_rerank", "decoder_rerank"):  # fmt: skip
        assert jobs[rule] == len(ARMS), (rule, jobs)
    # Heatmaps: one per joint arm, plus expert usage for the MoE-LoRA arm.
    assert jobs["decoder_diagnostics"] == len(JOINT)
    assert jobs["evaluate_run"] == 3 * len(ARMS) + 1  # and the given baseline
    assert jobs["study_table"] == 1


def test_unknown_spec_key_names_the_key_path(tmp_path):
    config = ci_config()
    config["decoders"]["joint-moe"]["adapter"] = {**config["decoders"]["joint-moe"]["adapter"],
                                                  "num_experts": 4}  # fmt: skip
    message = _dry_run_error(tmp_path, config)
    assert "decoders.joint-moe: adapter: unknown keys ['num_experts']" in message


def test_bad_stage_value_names_the_stage(tmp_path):
    config = ci_config()
    stages = copy.deepcopy(config["decoders"]["joint-lora"]["training"]["stages"])
    stages[1]["tasks"] = ["embed", "rank"]
    config["decoders"]["joint-lora"]["training"] = {"optimizer": "adamw", "stages": stages}
    message = _dry_run_error(tmp_path, config)
    assert "decoders.joint-lora: training.stages[1].tasks: ['rank'] are not tasks" in message


def test_missing_training_data_names_the_producing_rule(tmp_path):
    config = ci_config()
    config["miners"]["bm25-deep"] = {"retriever": "bm25", "rank_min": 10}
    # The arms share their data mapping (a YAML merge key): give this one its own.
    config["decoders"]["rerank-only"]["data"] = {
        **config["decoders"]["rerank-only"]["data"],
        "miner": "bm25-deep",
    }
    message = _dry_run_error(tmp_path, config)
    assert "decoders.rerank-only.data" in message
    assert "teacher-scores/scifact-train/bm25-deep/tiny-llama.parquet" in message
    assert "merge_teacher_scores" in message


def test_decoder_name_clash_and_unknown_arm_are_refused(tmp_path):
    config = ci_config()
    config["decoders"]["given"] = config["decoders"]["joint-lora"]
    message = _dry_run_error(tmp_path, config)
    assert "decoders.given" in message and "retriever" in message
    config = ci_config()
    config["decoder_studies"]["unified"]["arms"].append("no-such-arm")
    (tmp_path / "arm").mkdir()
    message = _dry_run_error(tmp_path / "arm", config)
    assert "decoder_studies.unified.arms" in message and "no-such-arm" in message


def test_rerank_evaluation_needs_a_retriever(tmp_path):
    config = ci_config()
    config["decoder_studies"]["unified"]["evaluate"][1].pop("retriever")
    message = _dry_run_error(tmp_path, config)
    assert "retriever" in message


def test_gguf_base_is_converted_once_for_every_arm(tmp_path):
    config = ci_config()
    for spec in config["decoders"].values():
        spec["base"] = {"gguf": "smollm2"}
    result = snakemake(tmp_path, config, "-n", "--forceall", "decoders")
    jobs = planned_jobs(result.stdout)
    assert jobs["convert_gguf"] == 1 and jobs["train_unified"] == len(ARMS)
    assert "results/models/smollm2" in result.stdout


# ------------------------------------------------------------------------------------------
# End to end
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    import torch
    from test_decoder_unified import tiny_config, train_tokenizer
    from transformers import AutoModelForCausalLM

    folder = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = train_tokenizer(folder)
    torch.manual_seed(3)
    config = tiny_config("llama", len(tokenizer), tokenizer.eos_token_id)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def decoder_run(tmp_path_factory, tiny_llama):
    config = ci_config(tiny_llama)
    require_config_inputs(config)
    workdir = tmp_path_factory.mktemp("decoder-run")
    snakemake(workdir, config, "all")
    return workdir, config


@pytest.mark.slow
def test_every_arm_has_its_three_runs(decoder_run):
    workdir, _ = decoder_run
    runs = workdir / "results/runs/dl19"
    given = read_run(runs / "first-stage/given.trec")
    top10 = {q: set(sorted(docs, key=lambda d: -docs[d])[:10]) for q, docs in given.items()}
    for arm in ARMS:
        dense = read_run(runs / f"first-stage/{arm}.trec")
        assert len(dense) == 43 and all(len(docs) == 20 for docs in dense.values())
        for kind in ("cosine", "yesno"):
            run = read_run(runs / f"rerank/given/{arm}.{kind}.trec")
            # Exactly the given top 10 of each query, rescored.
            assert {q: set(docs) for q, docs in run.items()} == top10, (arm, kind)
        for pattern in KINDS.values():
            mean = workdir / f"results/metrics/dl19/{pattern.format(arm=arm)}/mean.tsv"
            assert mean.is_file(), mean
    # Cosine scores are cosines of unit vectors; the two heads score differently.
    cosine = read_run(runs / "rerank/given/joint-lora.cosine.trec")
    yesno = read_run(runs / "rerank/given/joint-lora.yesno.trec")
    assert all(-1.0 <= s <= 1.0 for docs in cosine.values() for s in docs.values())
    assert cosine != yesno


@pytest.mark.slow
def test_study_table_rows_and_references(decoder_run):
    workdir, _ = decoder_run
    table = pd.read_csv(workdir / "results/tables/studies/unified.tsv", sep="\t")
    assert len(table) == len(ARMS) * len(KINDS)
    assert list(dict.fromkeys(table["variant"])) == list(KINDS)
    assert list(table["arm"][: len(ARMS)]) == ARMS
    assert table["nDCG@10"].between(0, 1).all()
    for _, row in table.iterrows():
        expected = (
            "" if row["arm"] == "joint-lora" else KINDS[row["variant"]].format(arm="joint-lora")
        )
        assert (row["reference"] if isinstance(row["reference"], str) else "") == expected
    others = table[table["arm"] != "joint-lora"]
    # Every comparison is tested, or says why not (a degenerate one: ties, one query).
    tested = others["nDCG@10 p_holm"].notna()
    assert (tested | others["nDCG@10 note"].fillna("").str.len().gt(0)).all()
    per_query = pd.read_csv(workdir / "results/tables/studies/unified.per-query.tsv", sep="\t")
    # Every non-baseline row, every DL19 query, every measure of the table.
    assert len(per_query) == len(others) * 43 * 5


@pytest.mark.slow
def test_diagnostics_heatmaps_and_report(decoder_run):
    workdir, _ = decoder_run
    decoders = workdir / "results/decoders"
    for arm in ARMS:
        log = pd.read_csv(decoders / f"{arm}/diagnostics/train_log.tsv", sep="\t")
        assert len(log) == 4  # 4 steps, or 2 + 2
        cosines = pd.read_csv(decoders / f"{arm}/diagnostics/grad_cosine.tsv", sep="\t")
        # Joint stage of 2 steps, each logged: 2 layers x (7 projections + "all") x 2 steps.
        assert len(cosines) == (2 * 8 * 2 if arm in JOINT else 0), arm
        usage = pd.read_csv(decoders / f"{arm}/diagnostics/expert_usage.tsv", sep="\t")
        # MoE-LoRA: per stage, task, layer (2), MLP projection (3) and expert (3: shared, one
        # per task); the embed stage has one task, the joint stage two: (1 + 2) x 2 x 3 x 3.
        assert len(usage) == (54 if arm == "joint-moe" else 0), arm
        # Drawn for the joint arms only (the report's): both files, a placeholder panel for
        # the expert usage of a plain LoRA arm.
        svgs = sorted(p.name for p in (decoders / arm / "plots").glob("*.svg"))
        assert svgs == (["expert_usage.svg", "grad_cosine.svg"] if arm in JOINT else []), arm
        if arm in JOINT:
            svg = (decoders / arm / "plots/expert_usage.svg").read_text()
            assert ("no MoE-LoRA" in svg) == (arm != "joint-moe"), arm
        files = {p.name for p in (decoders / arm / "model").iterdir()}
        assert {"adapter_config.json", "adapter_model.safetensors", "unified.json"} <= files
        stats = json.loads((decoders / f"{arm}/train.stats.json").read_text())
        assert stats["decoder"] == arm and stats["trainable_parameters"] > 0
    html = (workdir / "results/report/index.html").read_text()
    assert html.count('data-kind="decoder-diagnostics"') == 4
    for arm in JOINT:
        assert f"decoder {arm}: cosine between the embedding and reranking gradients" in html
    assert "decoder joint-moe: MoE-LoRA expert usage" in html
    assert "Study unified" in html and "joint-moe.yesno" in html


@pytest.mark.slow
def test_saved_joint_model_reproduces_its_run_files(decoder_run):
    workdir, config = decoder_run
    targets = [f"results/runs/dl19/{KINDS[k].format(arm='joint-moe')}.trec" for k in KINDS]
    targets.append("results/embeddings/dl19/joint-moe/embeddings.npy")
    before = {t: (workdir / t).read_bytes() for t in targets}
    rules = ["decoder_rerank", "decoder_cosine_rerank", "decoder_dense_retrieve",
             "decoder_encode_corpus"]  # fmt: skip
    # The models are reloaded from their folders; the corpus is encoded again too.
    result = snakemake(workdir, config, "--forcerun", *rules, "--", *targets[:3])
    for rule in rules:
        assert f"rule {rule}:" in result.stdout + result.stderr, rule
    for target, data in before.items():
        assert (workdir / target).read_bytes() == data, target


@pytest.mark.slow
def test_changing_one_arm_reruns_only_that_arm(decoder_run):
    workdir, config = decoder_run
    changed = copy.deepcopy(config)
    stages = copy.deepcopy(changed["decoders"]["joint-moe"]["training"]["stages"])
    stages[1]["lr"] = 5.0e-4
    changed["decoders"]["joint-moe"]["training"] = {"optimizer": "adamw", "stages": stages}
    result = snakemake(workdir, changed, "decoders", "-n")
    assert planned_jobs(result.stdout) == {
        "train_unified": 1,
        "decoder_diagnostics": 1,
        "decoder_encode_corpus": 1,
        "decoder_dense_retrieve": 1,
        "decoder_cosine_rerank": 1,
        "decoder_rerank": 1,
        "evaluate_run": 3,
        "study_table": 1,
        "decoders": 1,
    }, result.stdout[-3000:]
    arms = {w.split("arm=")[1].split(",")[0] for w in result.stdout.splitlines() if "arm=" in w}
    assert arms == {"joint-moe"}


@pytest.mark.slow
def test_two_gpus_in_the_resources_train_one_decoder_in_two_processes(decoder_run, tmp_path):
    """gpus: 2 on train_unified starts torchrun from the rule itself (gloo on this CPU): two
    processes train one model on the same global batches. The LoRA arm (no dropout, no MoE
    load-balancing term) matches the one-process weights to float rounding as Adam leaves it
    (tests/test_decoder_distributed.py: WEIGHT_TOLERANCE; measured 1.7e-6). The MoE-LoRA arm
    (aux_loss_weight 0.01, the default) takes the load-balancing term over each process's share
    of one sample (the documented difference): its weights drift by up to a whole trajectory
    (measured 4.1e-3 after 4 AdamW steps at lr 1e-3, each moving an entry by at most ~lr), so
    only that bound is checked."""
    import shutil

    from safetensors.torch import load_file
    from test_decoder_distributed import WEIGHT_TOLERANCE

    workdir, config = decoder_run
    copy_dir = tmp_path / "two-processes"
    shutil.copytree(workdir, copy_dir, symlinks=True)
    changed = copy.deepcopy(config)
    changed.setdefault("resources", {})["train_unified"] = {"gpus": 2, "cpus": 2}
    targets = [f"results/decoders/{arm}/model" for arm in ("joint-lora-pcgrad", "joint-moe")]
    snakemake(copy_dir, changed, *targets, "--forcerun", "train_unified")
    for arm, tolerance in (("joint-lora-pcgrad", WEIGHT_TOLERANCE), ("joint-moe", 1e-2)):
        one = json.loads((workdir / f"results/decoders/{arm}/train.stats.json").read_text())
        two = json.loads((copy_dir / f"results/decoders/{arm}/train.stats.json").read_text())
        assert one["world_size"] == 1 and two["world_size"] == 2
        assert two["examples"] == one["examples"]
        log = (copy_dir / f"results/logs/train_unified/{arm}.log").read_text()
        assert "launching 2 training processes" in log
        weights = [
            load_file(root / f"results/decoders/{arm}/model/adapter_model.safetensors")
            for root in (workdir, copy_dir)
        ]
        diff = max(float((weights[0][k] - weights[1][k]).abs().max()) for k in weights[0])
        print(f"{arm}: two processes vs one, max |weight diff| {diff:.3g}")
        assert diff < tolerance, (arm, diff)
