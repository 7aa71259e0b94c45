"""A tiny self-contained collection, a tiny random bi-encoder and a config that runs the whole
eval path on them in seconds (prepare → BM25 → bi-encoder rerank → evaluate → tables → report).

Shared by test_provenance.py, test_checks.py and test_report.py (it holds no tests itself).

The collection is built so that BM25's ranking, and so its metrics, follow by hand: every query
shares terms only with its relevant documents, and the document matching more query terms is
the more relevant one. Hence BM25 ranks every relevant document first, in label order, and
nDCG@10 = RR@10 = AP = 1.0 for every query.
"""

from __future__ import annotations

from pathlib import Path

from tiny_builders import tiny_bert, tiny_sentence_transformer, write_beir

DOCS = {
    "d1": "apple banana orchard",
    "d2": "river bridge stone",
    "d3": "violin concerto orchestra",
    "d4": "galaxy telescope orbit",
    "d5": "bread flour oven",
    "d6": "oven kitchen tile",
    "d7": "glacier summit rope",
    "d8": "pepper salt tomato",
}
QUERIES = {"q1": "apple banana", "q2": "river stone", "q3": "telescope orbit", "q4": "bread oven"}
QRELS = {"q1": {"d1": 1}, "q2": {"d2": 1}, "q3": {"d4": 1}, "q4": {"d5": 2, "d6": 1}}
# Hand-derived (see the module docstring).
BM25_NDCG10 = 1.0


def tiny_beir(folder: Path) -> Path:
    """corpus.jsonl, queries.jsonl and qrels/test.tsv in BEIR's layout."""
    rows = [(q, d, label) for q, docs in QRELS.items() for d, label in docs.items()]
    return write_beir(folder, DOCS, QUERIES, {"test": rows})


def tiny_bi_encoder(folder: Path, seed: int = 0) -> Path:
    """A sentence-transformers folder: random 2-layer BERT (hidden 32), mean pooling, normalised."""
    words = sorted({w for text in [*DOCS.values(), *QUERIES.values()] for w in text.split()})
    bert = tiny_bert(folder.parent / f"{folder.name}-bert", words, seed=seed)
    return tiny_sentence_transformer(folder, bert, max_seq_length=32)


def tiny_config(data: Path, model: Path | None = None, **overrides) -> dict:
    """The eval path on the tiny collection; with ``model`` also a bi-encoder reranker."""
    config = {
        "seed": 42,
        "datasets": {"tiny": {"beir_folder": str(data), "split": "test"}},
        "models": {},
        "retrievers": {"bm25": {"kind": "bm25", "k1": 0.9, "b": 0.4, "depth": 5}},
        "rerankers": {},
        "baselines": [{"dataset": "tiny", "retriever": "bm25"}],
        "expectations": [
            {
                "dataset": "tiny",
                "run": "first-stage/bm25",
                "measure": "nDCG@10",
                "value": BM25_NDCG10,
                "tolerance": 0.0001,
                "source": "hand-computed (tests/report_fixtures.py)",
            }
        ],
        "resources": {"default": {"mem_mb": 1000, "runtime": 10, "cpus": 1}},
    }
    if model is not None:
        config["models"]["tiny-st"] = {"path": str(model), "max_length": 32, "batch_size": 8}
        config["rerankers"]["tiny-st"] = {"kind": "bi-encoder", "model": "tiny-st", "depth": 5}
        config["baselines"][0]["rerankers"] = ["tiny-st"]
    config.update(overrides)
    return config


# ---------------------------------------------------------------------------------------------
# A report's files without a workflow run: three studies (students of two objectives with
# untrained rows, an embedder study with a Matryoshka dim on two datasets, a decoder study),
# made by the real study-table writer from seeded per-query values.
# ---------------------------------------------------------------------------------------------
STUDY_QUERIES = 40
FIXTURE_STUDIES = {
    "rerankers": {
        "description": "Cross-encoder students: contrastive vs distilled objectives.",
        "arms": ["cl-guide", "kd-guide", "kd_lion_2e6"],
        "baseline": "cl-guide",
        "measures": ["nDCG@10", "RR@10", "AP"],
        "untrained": True,
    },
    "embedder": {
        "arms": ["emb-guide", "emb-first"],
        "measures": ["nDCG@10", "R-Prec"],
        "matryoshka_dims": [64],
        "test": "randomization",
    },
    "unified": {
        "arms": ["joint-lora", "embed-only", "rerank-only"],
        "measures": ["nDCG@10", "RR@10"],
    },
}
# arm -> (mean shift against the baseline, objective)
ARM_EFFECTS = {
    "cl-guide": (0.0, "cl"),
    "kd-guide": (0.08, "kd"),
    "kd_lion_2e6": (-0.05, "kd"),
    "emb-guide": (0.0, "margin_mse"),
    "emb-first": (-0.04, "margin_mse"),
    "joint-lora": (0.0, None),
    "embed-only": (-0.06, None),
    "rerank-only": (0.02, None),
}


def _per_query(results: Path, dataset: str, run: str, measures: list[str], values) -> str:
    import numpy as np
    import pandas as pd

    folder = results / "metrics" / dataset / run
    folder.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame({"query_id": [f"q{i}" for i in range(len(values))]})
    for k, measure in enumerate(measures):
        frame[measure] = np.clip(values + 0.03 * k, 0, 1)
    frame.to_csv(folder / "per-query.tsv", sep="\t", index=False, float_format="%.6f")
    means = {m: float(frame[m].mean()) for m in measures}
    mean = pd.DataFrame([{"dataset": dataset, "run": run, "rel_level": 1, **means,
                          "queries": len(frame)}])  # fmt: skip
    mean.to_csv(folder / "mean.tsv", sep="\t", index=False, float_format="%.4f")
    return str(folder / "per-query.tsv")


def study_report_inputs(root: Path, seed: int = 7):
    """ReportInputs of the three fixture studies (FIXTURE_STUDIES) under ``root/results``."""
    import json

    import numpy as np

    from irflow.checks import COLUMNS as REPRODUCTION_COLUMNS
    from irflow.report.html import ReportInputs
    from irflow.studies import write_study_table

    rng = np.random.default_rng(seed)
    results = root / "results"
    tables = results / "tables" / "studies"
    tables.mkdir(parents=True, exist_ok=True)
    studies, deltas, curves, train_logs = {}, {}, {}, {}
    for study, spec in FIXTURE_STUDIES.items():
        datasets = ["scifact-test", "nfcorpus-test"] if study == "embedder" else ["dl19"]
        rows, per_query = [], []
        for dataset in datasets:
            base = rng.uniform(0.1, 0.8, STUDY_QUERIES)
            for arm in spec["arms"]:
                shift, _ = ARM_EFFECTS[arm]
                noise = rng.normal(0, 0.08, STUDY_QUERIES)
                trained = np.clip(base + shift + noise, 0, 1)
                # A few queries exactly tied with the baseline (the same ranking).
                if arm != spec.get("baseline", spec["arms"][0]):
                    trained[:3] = base[:3]
                else:
                    trained = base
                variants = [("", trained)]
                for dim in spec.get("matryoshka_dims", []):
                    variants.append((f".dim{dim}", np.clip(trained - 0.03, 0, 1)))
                if spec.get("untrained"):
                    variants.append((".untrained", np.clip(trained * 0.6, 0, 1)))
                for suffix, values in variants:
                    reranker = arm + suffix
                    if study == "unified":
                        run = f"first-stage/{reranker}"
                    elif study == "embedder":
                        run = f"rerank/bm25/{reranker}"
                    else:
                        run = f"rerank/given/{reranker}"
                    rows.append((arm, reranker, dataset, run))
                    per_query.append(_per_query(results, dataset, run, spec["measures"], values))
        write_study_table(
            study,
            spec,
            rows,
            per_query,
            str(tables / f"{study}.tsv"),
            str(tables / f"{study}.md"),
            str(tables / f"{study}.per-query.tsv"),
        )
        studies[study] = str(tables / f"{study}.tsv")
        deltas[study] = str(tables / f"{study}.per-query.tsv")
        for k, arm in enumerate(spec["arms"]):
            if study == "unified":
                log = results / "decoders" / arm / "diagnostics" / "train_log.tsv"
                log.parent.mkdir(parents=True, exist_ok=True)
                lines = ["stage\tstep\tlr\tloss\tloss_embed\tloss_rerank"]
                for step in range(1, 41):
                    total = 2.0 / (1 + 0.1 * step * (k + 1))
                    embed = "" if arm == "rerank-only" else f"{total * 0.6:.5f}"
                    rerank = "" if arm == "embed-only" else f"{total * 0.4:.5f}"
                    lines.append(f"joint\t{step}\t0.001\t{total:.5f}\t{embed}\t{rerank}")
                log.write_text("\n".join(lines) + "\n")
                train_logs[arm] = str(log)
            else:
                path = results / "students" / arm / "curves.jsonl"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(
                    "".join(
                        json.dumps(
                            {
                                "step": s,
                                "epoch": s / 100,
                                "lr": 2e-5,
                                "loss": 1.5 / (1 + s / (20 + 15 * k)) + 0.1 * k,
                            }
                        )  # fmt: skip
                        + "\n"
                        for s in range(10, 210, 10)
                    )
                )
                curves[arm] = str(path)
    reproduction = results / "tables" / "reproduction.tsv"
    reproduction.write_text("\t".join(REPRODUCTION_COLUMNS) + "\n")
    metric_files = sorted(str(p) for p in (results / "metrics").rglob("mean.tsv"))
    config = {
        "seed": 42,
        "students": {
            arm: {"training": {"objective": {"name": objective}}}
            for arm, (_, objective) in ARM_EFFECTS.items()
            if objective
        },
        "studies": {s: FIXTURE_STUDIES[s] for s in ("rerankers", "embedder")},
        "decoder_studies": {"unified": FIXTURE_STUDIES["unified"]},
    }
    return ReportInputs(
        results_dir=str(results),
        studies=studies,
        study_deltas=deltas,
        study_specs=dict(FIXTURE_STUDIES),
        metric_files=metric_files,
        curves=curves,
        train_logs=train_logs,
        reproduction=str(reproduction),
        config=config,
        configfiles=[
            "configs/a-rather-long-configuration-file-name-for-wrapping.yaml",
            "configs/ci-studies.yaml",
        ],
    )
