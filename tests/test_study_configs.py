"""The four paper-study configs (configs/studies/*.yaml): each plans on its own, offline, to
every arm's training job, every evaluation and its study table; its hyperparameters, read
back from the resolved plan, are the source document's; and scripts/list_expectations.py lists
the published figures it checks without running anything.

The documents are /work/shared/seeds/00{0,1,2,3}_*.txt (cited in each config's comments).
"""

from __future__ import annotations

import importlib.util
import math

import pytest
import yaml
from workflow_helpers import REPO, planned_jobs, snakemake

from irflow.plan import Plan
from irflow.students.spec import StudentTrainingSpec

SCHEMA = REPO / "schemas" / "config.schema.yaml"
STUDIES = REPO / "configs" / "studies"
CONFIGS = ["optimizers", "cl-vs-kd", "distilled-embedder", "unified-decoder"]

# Jobs per rule of `snakemake -n all` for each config (fresh results folder).
EXPECTED_JOBS = {
    "optimizers": {
        "train_student": 6,
        "rerank_cross_encoder": 12,  # 6 arms x (DL19, dev)
        "evaluate_run": 14,  # + the two given first stages
        "study_table": 3,
        "score_teacher_shard": 4,
        "mine_negatives": 1,
        "reproduction_table": 1,
    },
    "cl-vs-kd": {
        "train_student": 8,
        "rerank_cross_encoder": 128,  # 8 arms x 16 test sets
        "evaluate_run": 144,  # + 16 first stages
        "study_table": 4,
        "score_teacher_shard": 12,  # 4 unused-scores shards + 8 RankQwen-7B-CL shards
        "merge_teacher_scores": 2,
        "mine_negatives": 1,
        "reproduction_table": 1,
    },
    "distilled-embedder": {
        "init_student": 2,
        "train_student": 2,
        "encode_corpus": 56,  # 14 corpora x (2 students + 2 inits)
        "dense_retrieve": 160,  # 16 test sets x (2 arms x (full + 3 dims) + 2 untrained)
        "evaluate_run": 161,  # + DL19's given first stage
        "study_table": 1,
        "consistency_filter": 1,
        "score_teacher_shard": 8,
    },
    "unified-decoder": {
        "train_unified": 6,
        "decoder_encode_corpus": 24,  # 6 arms x 4 corpora
        "decoder_dense_retrieve": 30,  # 6 arms x 5 test sets
        "decoder_cosine_rerank": 12,  # 6 arms x (DL19, DL20)
        "decoder_rerank": 12,
        "decoder_diagnostics": 4,  # the joint arms
        "study_table": 1,
        "consistency_filter": 1,
        "mine_negatives": 1,
    },
}


def load(name: str) -> dict:
    return yaml.safe_load((STUDIES / f"{name}.yaml").read_text())


def plan_of(name: str) -> Plan:
    return Plan.from_config(load(name), SCHEMA, REPO)


def spec_of(plan: Plan, student: str) -> StudentTrainingSpec:
    return StudentTrainingSpec.from_config(plan.student_params(student)["training"])


# ---------------------------------------------------------------------------------------------
# Every config plans alone, offline, to its arms, evaluations and tables
# ---------------------------------------------------------------------------------------------
def expected_targets(plan: Plan) -> list[str]:
    r = plan.results
    targets = [f"{r}/students/{s}/model" for s in plan.names("students")]
    targets += [f"{r}/decoders/{d}/model" for d in plan.names("decoders")]
    for study in plan.names("studies"):
        targets.append(f"{r}/tables/studies/{study}.tsv")
        targets += [f"{r}/metrics/{d}/{run}/mean.tsv" for _, _, d, run in plan.study_runs(study)]
    for study in plan.names("decoder_studies"):
        targets.append(f"{r}/tables/studies/{study}.tsv")
        targets += [
            f"{r}/metrics/{row[2]}/{row[3]}/mean.tsv" for row in plan.decoder_study_rows(study)
        ]
    targets += [f"{r}/metrics/{d}/{run}/mean.tsv" for d, run in plan.baseline_runs()]
    return targets


@pytest.mark.parametrize("name", CONFIGS)
def test_config_plans_every_arm_evaluation_and_table(tmp_path, name):
    plan = plan_of(name)
    assert plan.scale == "paper"
    result = snakemake(tmp_path, STUDIES / f"{name}.yaml", "-n", "all", cores=1)
    jobs = planned_jobs(result.stdout)
    for rule, count in EXPECTED_JOBS[name].items():
        assert jobs.get(rule) == count, (rule, jobs)
    # One training job per arm, one evaluation per (dataset, run) row.
    assert jobs.get("train_student", 0) == len(plan.names("students"))
    assert jobs.get("train_unified", 0) == len(plan.names("decoders"))
    missing = [t for t in expected_targets(plan) if t not in result.stdout]
    assert not missing, missing[:10]
    # Placeholder revisions (main) are listed as unpinned at every plan.
    unpinned, said = plan.unpinned_models(), result.stdout + result.stderr
    assert all(f"{n} ({h} @ " in said for n, h, _ in unpinned), said[-2000:]
    assert bool(unpinned) == ("hub models are unpinned" in said)


@pytest.mark.parametrize("name", CONFIGS)
def test_expectations_name_configured_runs_and_cite_the_document(name):
    plan = plan_of(name)
    config = load(name)
    document = {"optimizers": "001", "cl-vs-kd": "002"}.get(name)
    runs = set(plan.baseline_runs())
    for study in plan.names("studies"):
        runs.update((d, run) for _, _, d, run in plan.study_runs(study))
    for exp in config.get("expectations", []):
        assert (exp["dataset"], exp["run"]) in runs, exp
        assert exp["source"].startswith(f"{document} Table"), exp
        assert 0 < exp["tolerance"] <= exp.get("tolerance_okish", 2 * exp["tolerance"])
        assert 0 < exp["value"] < 1
    if document is None:  # the guide and the research findings publish no figures
        assert config["expectations"] == []


# ---------------------------------------------------------------------------------------------
# Hyperparameters equal the documents'
# ---------------------------------------------------------------------------------------------
def test_optimizers_hyperparameters_are_the_thesis():
    """001 Table 4.1 / 4.2: batch 16, 3 epochs, weight decay 0.01, 1,000 warm-up steps,
    lr 2e-5 (MiniLM, GTE) / 2e-6 (ModernBERT), AdamW betas (0.9, 0.999) eps 1e-8, Lion betas
    (0.9, 0.99), gradient clipping 1.0, max length 512 / 8192 / 8192, BCE."""
    plan = plan_of("optimizers")
    expected = {
        "minilm": ("microsoft/MiniLM-L12-H384-uncased", 2e-5, 512, "constant"),
        "gte": ("Alibaba-NLP/gte-multilingual-base", 2e-5, 8192, "constant"),
        "modernbert": ("answerdotai/ModernBERT-base", 2e-6, 8192, "cosine"),
    }
    assert sorted(plan.names("students")) == sorted(
        f"{m}-{o}" for m in expected for o in ("adamw", "lion")
    )
    steps_per_epoch = math.ceil(532_761 / 16)  # (query, positive) pairs of train/judged
    for model, (hf_id, lr, max_length, schedule) in expected.items():
        for optimizer in ("adamw", "lion"):
            name = f"{model}-{optimizer}"
            params = plan.student_params(name)
            spec = spec_of(plan, name)
            assert params["kind"] == "cross-encoder"
            assert params["init"]["hf_id"] == hf_id
            assert spec.objective.name == "bce"
            assert spec.batch_size == 16 and spec.gradient_accumulation_steps == 1
            assert spec.epochs == 3
            assert spec.optimizer.name == optimizer
            assert spec.optimizer.lr == pytest.approx(lr)
            assert spec.optimizer.weight_decay == pytest.approx(0.01)
            assert spec.grad_clip == 1.0
            assert spec.max_length == max_length
            assert spec.schedule.name == schedule
            warmup_steps = spec.schedule.warmup_ratio * 3 * steps_per_epoch
            assert warmup_steps == pytest.approx(1000, rel=0.01)
            if optimizer == "lion":
                assert spec.optimizer.betas == (0.9, 0.99) and spec.optimizer.eps is None
            else:
                assert spec.optimizer.betas == (0.9, 0.999)
                assert spec.optimizer.eps == pytest.approx(1e-8)
    studies = plan.section("studies")
    for study in studies.values():
        assert [e["dataset"] for e in study["evaluate"]] == ["dl19", "msmarco-dev"]


def test_cl_vs_kd_hyperparameters_are_the_paper():
    """002 section 4 and Appendix B: LoRA r 16 alpha 32, AdamW, lr within [3e-5, 1e-4] with
    linear warm-up and decay, 1 epoch, global batch 128, 15 negatives from the top 200 sampled
    at random, the pair's own negatives only; KD from RankQwen-7B-CL on the same triples."""
    plan = plan_of("cl-vs-kd")
    sizes = {
        "0.5b": "Qwen/Qwen2.5-0.5B",
        "1.5b": "Qwen/Qwen2.5-1.5B",
        "3b": "Qwen/Qwen2.5-3B",
        "7b": "Qwen/Qwen2.5-7B",
    }
    students = plan.names("students")
    assert sorted(students) == sorted(
        [f"rankqwen-{s}-cl" for s in sizes] + [f"rankqwen-{s}-kd" for s in sizes]
    )
    for name in students:
        size, method = name.split("-")[1:]
        params = plan.student_params(name)
        spec = spec_of(plan, name)
        assert params["kind"] == "cross-encoder"
        assert params["init"]["hf_id"] == sizes[size]
        assert spec.lora is not None and spec.lora.r == 16 and spec.lora.alpha == 32
        assert spec.optimizer.name == "adamw"
        assert 3e-5 <= spec.optimizer.lr <= 1e-4
        assert spec.schedule.name == "linear" and spec.schedule.warmup_ratio > 0
        assert spec.epochs == 1
        assert spec.batch_size * spec.gradient_accumulation_steps == 128
        assert spec.num_negatives == 15
        assert spec.bf16
        assert spec.objective.name == method
        if method == "cl":
            assert spec.objective.in_batch_negatives == 0
            assert params["data"]["teacher"] == "unused-scores"
        else:
            assert spec.objective.temperature == 1.0
            assert params["data"]["teacher"] == "rankqwen-7b-cl"
        assert params["data"]["miner"] == "bm25" and params["data"].get("filter") is None
    gpus = plan.section("resources")["train_student"]["gpus"]
    assert gpus == 8 and spec.batch_size // gpus == 4 and spec.gradient_accumulation_steps == 4
    teacher = plan.entry("teachers", "rankqwen-7b-cl")
    assert teacher["kind"] == "cross-encoder" and teacher["model"] == "rankqwen-7b-cl"
    miner = plan.entry("miners", "bm25")
    assert (miner["num_negatives"], miner["rank_min"], miner["rank_max"]) == (15, 1, 200)
    assert miner["sampling"] == "random" and miner["relative_margin"] is None
    for study in plan.section("studies").values():
        assert {e["depth"] for e in study["evaluate"]} == {200}
        assert len(study["evaluate"]) == 16  # dev, DL19, DL20 and the 13 BEIR sets


def test_distilled_embedder_hyperparameters_are_the_guide():
    """003: GUIDE layers 0, 4, 8, 12, 16, 20 of the 22-layer ModernBERT (vs the first 6),
    BGE-reranker scores, consistency filter, MarginMSE in MatryoshkaLoss, 3 epochs, lr 2e-5,
    batch 64, group_by_length, bf16."""
    plan = plan_of("distilled-embedder")
    inits = plan.section("inits")
    assert inits["modernbert-guide-6"]["layers"] == [0, 4, 8, 12, 16, 20]
    assert inits["modernbert-first-6"]["strategy"] == "first"
    assert inits["modernbert-first-6"]["num_layers"] == 6
    assert plan.entry("models", "modernbert-base")["hf_id"] == "answerdotai/ModernBERT-base"
    assert plan.entry("models", "bge-reranker-v2-m3")["hf_id"].startswith("BAAI/bge-reranker")
    assert plan.entry("filters", "consistency")["margin"] == 0.0
    for name in ("modernbert-small-guide", "modernbert-small-first"):
        params = plan.student_params(name)
        spec = spec_of(plan, name)
        assert params["kind"] == "bi-encoder"
        assert params["data"]["filter"] == "consistency"
        assert spec.objective.name == "margin_mse"
        assert 128 in spec.objective.matryoshka_dims
        assert spec.epochs == 3
        assert spec.optimizer.lr == pytest.approx(2e-5)
        assert 64 <= spec.batch_size <= 128
        assert spec.group_by_length and spec.bf16


def test_unified_decoder_hyperparameters_are_the_recommendations():
    """000 Summary of Specific Recommendations: LoRA r 16, alpha 16, dropout 0.05 on
    q/k/v/o/gate/up/down; AdamW 8-bit; lr 1e-4 then 5e-5, cosine with warm-up ratio 0.05,
    staged; InfoNCE temperature 0.05, effective batch >= 1024 via caching, 7-15 negatives;
    yes/no reranking; MoE-LoRA r 16 per expert; PCGrad arms."""
    plan = plan_of("unified-decoder")
    projections = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    decoders = plan.section("decoders")
    assert set(decoders) == {
        "joint-lora",
        "embed-only",
        "rerank-only",
        "joint-lora-pcgrad",
        "joint-moe",
        "joint-moe-pcgrad",
    }
    assert plan.entry("models", "qwen3-0.6b-base")["hf_id"] == "Qwen/Qwen3-0.6B-Base"
    for arm, entry in decoders.items():
        spec = plan.parsed_decoder_spec(arm)
        adapter = spec.adapter
        assert adapter.kind == ("moe-lora" if "moe" in arm else "lora")
        assert (adapter.r, adapter.alpha, adapter.dropout) == (16, 16, 0.05)
        assert list(adapter.target_modules) == projections
        assert spec.embedding.temperature == 0.05
        assert spec.embedding.append_eos
        assert spec.embedding.batch_size >= 1024 and spec.embedding.mini_batch_size
        assert 7 <= spec.embedding.num_negatives <= 15
        assert spec.reranking.head == "yes_no"
        optimizer = spec.training.optimizer
        assert (optimizer if isinstance(optimizer, str) else optimizer["name"]) == "adamw8bit"
        for stage in spec.training.stages:
            assert stage.schedule == "cosine" and stage.warmup_ratio == 0.05
        if arm.startswith("joint"):
            first, second = spec.training.stages
            assert first.tasks == ("embed",) and first.lr == pytest.approx(1e-4)
            assert second.tasks == ("embed", "rerank") and second.lr == pytest.approx(5e-5)
            assert second.pcgrad == arm.endswith("pcgrad")
        assert entry["data"]["filter"] == "consistency"
    assert plan.entry("miners", "qwen3-embedding")["relative_margin"] == 0.95


# ---------------------------------------------------------------------------------------------
# scripts/list_expectations.py
# ---------------------------------------------------------------------------------------------
def _script():
    spec = importlib.util.spec_from_file_location(
        "list_expectations", REPO / "scripts" / "list_expectations.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "name,count",
    [("optimizers", 30), ("cl-vs-kd", 144), ("distilled-embedder", 0), ("unified-decoder", 0)],
)
def test_list_expectations_without_metrics(tmp_path, capsys, name, count):
    script = _script()
    assert script.main([str(STUDIES / f"{name}.yaml"), "--directory", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    if count == 0:
        assert "(no expectations configured)" in out
        return
    table = [line for line in out.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(table) == count + 1  # header
    assert all(line.rstrip().endswith("| not yet measured |") for line in table[1:])
    assert f"{count} figures; {count} not yet measured" in out


def test_list_expectations_reads_a_measured_row(tmp_path, capsys):
    metrics = tmp_path / "results-optimizers/metrics/dl19/rerank/given/minilm-adamw"
    metrics.mkdir(parents=True)
    (metrics / "mean.tsv").write_text(
        "dataset\trun\tnDCG@10\tAP\nDL19\trerank/given/minilm-adamw\t0.7127\t0.4400\n"
    )
    script = _script()
    code = script.main(
        [str(STUDIES / "optimizers.yaml"), "--directory", str(tmp_path), "--format", "tsv"]
    )
    assert code == 0
    rows = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    header, body = rows[0], rows[1:]
    status = {(r[1], r[2]): r[header.index("status")] for r in body}
    assert status[("rerank/given/minilm-adamw", "nDCG@10")] == "0.7127 (exact)"
    assert status[("rerank/given/minilm-adamw", "AP")] == "0.4400 (missed)"  # 0.4908 +- 0.04
    assert status[("rerank/given/minilm-adamw", "R-Prec")] == "not yet measured"
    assert status[("rerank/given/minilm-lion", "nDCG@10")] == "not yet measured"


def test_list_expectations_flags_a_run_no_stage_builds(tmp_path, capsys):
    config = load("optimizers")
    config["expectations"] = [
        {
            "dataset": "dl19",
            "run": "rerank/given/nobody",
            "measure": "nDCG@10",
            "value": 0.5,
            "tolerance": 0.01,
            "source": "test",
        }
    ]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    assert _script().main([str(path), "--directory", str(tmp_path)]) == 0
    assert "| not configured |" in capsys.readouterr().out


def test_list_expectations_refuses_an_invalid_config(tmp_path, capsys):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({**load("optimizers"), "scale": "huge"}))
    assert _script().main([str(path), "--directory", str(tmp_path)]) == 2
    assert "scale" in capsys.readouterr().err
