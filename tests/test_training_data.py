"""Training data: pairs, leakage, hard-negative mining, teacher scoring, consistency filtering.

Fast: the teachers are tiny randomly initialised models (2-layer BERT and Llama with a
hand-written vocabulary) built once per session in a temporary directory. The test marked
``models`` checks the real MiniLM against the plain library call.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tiny_builders import (
    EXTRA_WORDS,
    PROMPT_WORDS,
    tiny_bert,
    tiny_sentence_transformer,
    write_corpus_parquet,
    write_queries_parquet,
)
from tiny_builders import WORDS as BASE_WORDS
from tiny_builders import scores_table as tiny_scores_table
from workflow_helpers import MODELS, require_models

from irflow.batching import plan_batches
from irflow.io import InputError, write_trec_qrels, write_trec_run
from irflow.models import ModelRef
from irflow.training_data import (
    NEGATIVES_SCHEMA,
    SCORES_SCHEMA,
    TeacherSpec,
    check_leakage,
    filter_consistency,
    filter_scores,
    load_teacher,
    merge_shards,
    mine_negatives,
    score_samples,
    score_shard,
    shard_rows,
    training_pairs,
    write_negatives,
)
from irflow.training_data.artifacts import ParquetSink, read_meta
from irflow.training_data.consistency import ConsistencyParams
from irflow.training_data.negatives import MiningParams, relative_threshold
from irflow.training_data.teachers import causal_lm_teacher

REPO = Path(__file__).resolve().parents[1]
WORDS = [*BASE_WORDS, *EXTRA_WORDS, *PROMPT_WORDS]


def listing(folder: Path) -> list[str]:
    return sorted(os.listdir(folder)) if folder.exists() else []


# ---------------------------------------------------------------------------------------------
# Tiny models
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    import torch
    from sentence_transformers import CrossEncoder
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    root = tmp_path_factory.mktemp("tiny-models")
    # Dropout 0.1 (BertConfig's default) as these models were first built; off in eval mode.
    bert = tiny_bert(root / "bert", WORDS, dropout=0.1, vocab_file=root / "vocab.txt")
    bi = tiny_sentence_transformer(root / "bi-encoder", bert, max_seq_length=48, normalize=False)

    torch.manual_seed(1)
    cross = root / "cross-encoder"
    CrossEncoder(str(bert), num_labels=1, device="cpu", max_length=48).save(str(cross))

    llama = root / "causal-lm"
    lm_vocab = {w: i for i, w in enumerate(["<pad>", "<unk>", "<s>", *WORDS, ":", "?", "."])}
    backend = Tokenizer(models.WordLevel(lm_vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Whitespace(), pre_tokenizers.Punctuation()]
    )
    PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>", bos_token="<s>"
    ).save_pretrained(llama)
    torch.manual_seed(2)
    LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(lm_vocab),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=128,
            pad_token_id=0,
            bos_token_id=2,
            eos_token_id=2,
        )
    ).save_pretrained(llama)
    return {"bert": bert, "bi-encoder": bi, "cross-encoder": cross, "causal-lm": llama}


def spec(kind: str, path: Path, **kwargs) -> TeacherSpec:
    return TeacherSpec(
        name=f"tiny-{kind}", kind=kind, model=ModelRef(kind, path=str(path)), **kwargs
    )


@pytest.fixture(scope="session")
def teachers(tiny_models):
    import torch

    torch.set_num_threads(1)
    kwargs = {"causal-lm": {"yes_token": "yes", "no_token": "no"}}
    return {
        kind: load_teacher(spec(kind, tiny_models[kind], **kwargs.get(kind, {})), "cpu")
        for kind in ("bi-encoder", "cross-encoder", "causal-lm")
    }


# ---------------------------------------------------------------------------------------------
# A small training set on disk
# ---------------------------------------------------------------------------------------------
def make_training_set(root: Path, n_queries: int = 12, n_docs: int = 80, seed: int = 0) -> dict:
    """Queries, qrels, a run covering each query's positives mostly, and a corpus (Parquet)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    docs = [f"d{i}" for i in range(n_docs)]
    texts = [" ".join(rng.choice(WORDS[:-6], size=rng.integers(3, 30))) for _ in docs]
    titles = ["" if i % 3 else "title words" for i in range(n_docs)]
    write_corpus_parquet(root / "corpus.parquet", docs, texts, titles)
    qids = [f"q{i}" for i in range(n_queries)]
    queries = {q: " ".join(rng.choice(WORDS[:-6], size=rng.integers(2, 6))) for q in qids}
    write_queries_parquet(root / "queries.parquet", queries)
    qrels, run = {}, {}
    for q in qids:
        judged = rng.choice(n_docs, size=8, replace=False)
        qrels[q] = {docs[i]: int(rng.integers(0, 3)) for i in judged}
        qrels[q][docs[judged[0]]] = 2  # at least one positive
        ranked_docs = rng.choice(n_docs, size=60, replace=False)
        run[q] = {docs[i]: float(30 - 0.4 * r) for r, i in enumerate(ranked_docs)}
    write_trec_qrels(root / "qrels.trec", qrels)
    write_trec_run(root / "run.trec", run, tag="bm25")
    return {"queries": queries, "qrels": qrels, "run": run, "root": root}


@pytest.fixture
def training_set(tmp_path) -> dict:
    return make_training_set(tmp_path / "data")


def mine_files(data: dict, out: Path, **params) -> dict:
    root = data["root"]
    return write_negatives(
        root / "queries.parquet",
        root / "qrels.trec",
        root / "run.trec",
        out / "negatives.parquet",
        out / "negatives.json",
        params={"num_negatives": 4, "rank_min": 1, "rank_max": 60, **params},
        corpus_parquet=root / "corpus.parquet",
    )


# ---------------------------------------------------------------------------------------------
# Pairs and leakage
# ---------------------------------------------------------------------------------------------
def test_training_pairs_keeps_positives_and_counts_dropped_queries():
    queries = {"q1": "one", "q2": "two", "q3": "three"}
    qrels = {"q1": {"b": 2, "a": 1, "c": 0}, "q2": {"x": 0, "y": 1}, "q3": {"z": 3}}
    pairs = training_pairs(queries, qrels, min_label=2)
    assert dict(pairs) == {"q1": ["b"], "q3": ["z"]}
    assert pairs.stats["queries_without_positives"] == 1
    assert pairs.stats["positives"] == 2
    assert dict(training_pairs(queries, qrels, min_label=1)) == {
        "q1": ["a", "b"],
        "q2": ["y"],
        "q3": ["z"],
    }


def test_training_pairs_refuses_judged_query_without_text():
    with pytest.raises(InputError, match=r"judged queries have no text.*'q9'"):
        training_pairs({"q1": "one"}, {"q1": {"a": 1}, "q9": {"b": 1}}, min_label=1)


def test_leakage_names_ids_texts_and_test_set():
    train = {"t1": "What is  the Cat?", "t2": "unique train query", "shared": "x"}
    tests = {"dl19": {"s7": "what is the cat?", "shared": "y"}, "clean": {"c1": "other"}}
    with pytest.raises(InputError) as err:
        check_leakage(train, tests)
    message = str(err.value)
    assert "'dl19'" in message and "['shared']" in message
    assert "train 't1' = test 's7'" in message
    assert "'clean'" not in message
    summary = check_leakage({"t2": "unique train query"}, tests)
    assert summary["test_sets"] == {"clean": 1, "dl19": 2}
    check_leakage(train, {"other-ids": {"shared": "different"}}, by_id=False)


# ---------------------------------------------------------------------------------------------
# Hard-negative mining
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("exclude_judged", [True, False])
def test_no_positive_ever_becomes_a_negative(seed, exclude_judged):
    rng = np.random.default_rng(seed)
    docs = [f"d{i}" for i in range(100)]
    qrels = {f"q{q}": {d: int(rng.integers(0, 4)) for d in rng.choice(docs, 40)} for q in range(20)}
    for q in qrels:
        qrels[q]["d0"] = 3
    run = {q: {d: float(rng.normal()) for d in docs} for q in qrels}
    pairs = training_pairs({q: q for q in qrels}, qrels, min_label=2)
    params = MiningParams(
        num_negatives=10,
        rank_min=1,
        rank_max=100,
        seed=seed,
        min_label=2,
        exclude_judged=exclude_judged,
        relative_margin=None,
    )
    table, stats = mine_negatives(pairs, qrels, run, params)
    assert table.num_rows == sum(len(p) for p in pairs.values())
    for row in table.to_pylist():
        labels = qrels[row["query_id"]]
        for doc, rank, score in zip(
            row["neg_ids"], row["neg_ranks"], row["neg_scores"], strict=True
        ):
            assert labels.get(doc, 0) < 2
            if exclude_judged:
                assert labels.get(doc, 0) == 0
            assert run[row["query_id"]][doc] == score
            assert sorted(run[row["query_id"]].values(), reverse=True)[rank - 1] == score
        assert row["neg_ranks"] == sorted(row["neg_ranks"])
        assert len(row["neg_ids"]) == 10
    assert stats["dropped_judged_positive"] > 0
    assert (stats["dropped_judged_relevant"] > 0) == exclude_judged


def test_relative_margin_drops_exactly_the_candidates_above_95_percent():
    run = {
        "q": {
            "pos": 10.0,
            "above": 12.0,  # above the positive: dropped
            "close": 9.6,  # 96%: dropped
            "edge": 9.5,  # exactly 95%: kept (the rule is score > 0.95 * pos)
            "under": 9.4,
            "low": 1.0,
            "other-pos": 9.0,  # judged positive: never a negative
        }
    }
    qrels = {"q": {"pos": 1, "other-pos": 1, "low": 0}}
    pairs = training_pairs({"q": "q"}, qrels, min_label=1)
    params = MiningParams(num_negatives=10, rank_min=1, rank_max=10, sampling="top")
    table, stats = mine_negatives(pairs, qrels, run, params)
    rows = {r["pos_id"]: r for r in table.to_pylist()}
    assert rows["pos"]["neg_ids"] == ["edge", "under", "low"]
    assert rows["pos"]["pos_retriever_score"] == 10.0 and rows["pos"]["pos_rank"] == 2
    # The other positive (9.0) allows up to 8.55: only "low" survives.
    assert rows["other-pos"]["neg_ids"] == ["low"]
    assert stats["dropped_relative_margin"] == 2 + 4
    assert stats["dropped_judged_positive"] == 2 * 2
    assert stats["samples_short"] == 2
    # Absolute margin instead: drop above pos - 0.55 = 9.45.
    params = MiningParams(
        num_negatives=10,
        rank_min=1,
        rank_max=10,
        sampling="top",
        relative_margin=None,
        absolute_margin=0.55,
    )
    table, stats = mine_negatives({"q": ["pos"]}, qrels, run, params)
    assert table.column("neg_ids").to_pylist() == [["under", "low"]]
    assert stats["dropped_absolute_margin"] == 3 and stats["dropped_margin"] == 3


def test_relative_threshold_is_sign_robust():
    assert relative_threshold(10.0, 0.95) == 9.5
    assert relative_threshold(-10.0, 0.95) == pytest.approx(-10.5)
    run = {"q": {"pos": -1.0, "a": -1.04, "b": -1.06, "c": -0.5}}
    params = MiningParams(num_negatives=5, rank_min=1, rank_max=5, sampling="top")
    table, _ = mine_negatives({"q": ["pos"]}, {"q": {"pos": 1}}, run, params)
    assert table.column("neg_ids").to_pylist() == [["b"]]


def test_rank_window_and_missing_positive_policies():
    run = {"q": {f"d{i}": float(100 - i) for i in range(1, 31)}}
    qrels = {"q": {"unretrieved": 1, "d12": 0}}
    base = dict(num_negatives=5, rank_min=10, rank_max=20, seed=3)
    table, stats = mine_negatives({"q": ["unretrieved"]}, qrels, run, MiningParams(**base))
    row = table.to_pylist()[0]
    assert row["pos_rank"] is None and row["pos_retriever_score"] is None
    assert all(10 <= r <= 20 for r in row["neg_ranks"]) and len(row["neg_ids"]) == 5
    assert stats["samples_positive_not_in_run"] == 1 and stats["candidates_considered"] == 11
    table, stats = mine_negatives(
        {"q": ["unretrieved"]}, qrels, run, MiningParams(**base, missing_positive="drop")
    )
    assert table.num_rows == 0 and stats["samples_dropped_positive_not_in_run"] == 1


def test_sample_without_negatives_is_dropped_and_counted():
    run = {"q": {"pos": 1.0, "high": 5.0}, "r": {"pos": 1.0, "low": 0.1}}
    qrels = {"q": {"pos": 1}, "r": {"pos": 1}}
    table, stats = mine_negatives(
        {"q": ["pos"], "r": ["pos"]}, qrels, run, MiningParams(rank_min=1, rank_max=5)
    )
    assert table.column("query_id").to_pylist() == ["r"]
    assert stats["samples_dropped_no_negatives"] == 1 and stats["samples_short"] == 1
    assert stats["queries"] == 2 and stats["queries_out"] == 1


def test_empty_candidate_list_and_missing_query_are_refused():
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}}
    with pytest.raises(InputError, match=r"empty candidate list: \['q1'\]"):
        mine_negatives({"q1": ["a"]}, qrels, {"q1": {}})
    with pytest.raises(InputError, match=r"not in the run: \['q2'\]"):
        mine_negatives({"q1": ["a"], "q2": ["b"]}, qrels, {"q1": {"x": 1.0}})


def test_negatives_do_not_depend_on_query_order_or_other_queries():
    run = {q: {f"d{i}": float(-i) for i in range(50)} for q in ("a", "b")}
    qrels = {"a": {"d0": 1}, "b": {"d0": 1}}
    params = MiningParams(num_negatives=5, rank_min=2, rank_max=50, seed=7, relative_margin=None)
    both, _ = mine_negatives({"b": ["d0"], "a": ["d0"]}, qrels, run, params)
    alone, _ = mine_negatives({"b": ["d0"]}, {"b": qrels["b"]}, {"b": run["b"]}, params)
    assert both.column("neg_ids").to_pylist()[1] == alone.column("neg_ids").to_pylist()[0]
    # Same run for both queries, different query ids: different samples.
    assert both.column("neg_ids").to_pylist()[0] != both.column("neg_ids").to_pylist()[1]


def test_mined_file_is_byte_identical_for_a_seed_and_differs_for_another(training_set, tmp_path):
    stats = mine_files(training_set, tmp_path / "one", seed=5)
    mine_files(training_set, tmp_path / "two", seed=5)
    mine_files(training_set, tmp_path / "three", seed=6)
    one, two, three = (
        (tmp_path / name / "negatives.parquet").read_bytes() for name in ("one", "two", "three")
    )
    assert one == two and one != three
    assert listing(tmp_path / "one") == ["negatives.json", "negatives.parquet"]
    table = pq.read_table(tmp_path / "one" / "negatives.parquet")
    assert table.schema.remove_metadata() == NEGATIVES_SCHEMA
    assert (
        read_meta(tmp_path / "one" / "negatives.parquet", "hard-negatives")["params"]["seed"] == 5
    )
    written = json.loads((tmp_path / "one" / "negatives.json").read_text())
    assert written == json.loads(json.dumps(stats))
    assert written["samples"] == table.num_rows
    assert written["pairs"]["queries"] == 12


def test_mining_refuses_positive_missing_from_corpus_and_leaves_nothing(training_set, tmp_path):
    root = training_set["root"]
    qrels = dict(training_set["qrels"])
    qrels["q3"] = {**qrels["q3"], "ghost-doc": 2}
    write_trec_qrels(root / "qrels.trec", qrels)
    with pytest.raises(
        InputError, match=r"positives are not in the corpus.*'ghost-doc' \(query 'q3'\)"
    ):
        mine_files(training_set, tmp_path / "out")
    assert listing(tmp_path / "out") == []


def test_mining_can_drop_positives_without_text(training_set, tmp_path):
    root = training_set["root"]
    qrels = dict(training_set["qrels"])
    qrels["q3"] = {**qrels["q3"], "ghost-doc": 2}
    qrels["q5"] = {"ghost-2": 1, "d1": 0}  # its only positive has no text: query dropped
    write_trec_qrels(root / "qrels.trec", qrels)
    stats = mine_files(training_set, tmp_path / "out", positives_without_text="drop")
    table = pq.read_table(tmp_path / "out" / "negatives.parquet")
    assert not {"ghost-doc", "ghost-2"} & set(table.column("pos_id").to_pylist())
    assert "q5" not in table.column("query_id").to_pylist()
    check = stats["corpus_check"]
    assert check["positives_dropped_without_text"] == 2
    assert check["queries_dropped_without_positive_text"] == 1


def test_mining_refuses_leakage_before_writing(training_set, tmp_path):
    root = training_set["root"]
    write_queries_parquet(
        root / "test-queries.parquet", {"t1": training_set["queries"]["q4"].upper()}
    )
    with pytest.raises(InputError, match=r"test set 'dl19'.*train 'q4' = test 't1'"):
        write_negatives(
            root / "queries.parquet",
            root / "qrels.trec",
            root / "run.trec",
            tmp_path / "out" / "n.parquet",
            tmp_path / "out" / "n.json",
            test_queries={"dl19": root / "test-queries.parquet"},
        )
    assert listing(tmp_path / "out") == []


# ---------------------------------------------------------------------------------------------
# Consistency filtering
# ---------------------------------------------------------------------------------------------
def scores_table(rows: list[tuple[str, float, list[float]]]) -> pa.Table:
    return tiny_scores_table((query, "p", pos, negs) for query, pos, negs in rows)


CONSISTENCY_ROWS = [
    ("clean", 5.0, [1.0, 2.0, 3.0]),
    ("one-bad", 5.0, [1.0, 4.5, 6.0]),  # 4.5 >= 5 - 1 and 6.0 >= 4: inconsistent
    ("edge", 5.0, [4.0, 3.99]),  # 4.0 = 5 - 1: inconsistent (>=); 3.99 is fine
    ("all-bad", 2.0, [3.0]),
]


def test_consistency_drop_negatives():
    from irflow.training_data.consistency import _new_stats

    params = ConsistencyParams(mode="drop_negatives", margin=1.0, min_negatives=1)
    stats = _new_stats(params)
    out = filter_scores(scores_table(CONSISTENCY_ROWS), params, stats)
    assert out.column("query_id").to_pylist() == ["clean", "one-bad", "edge"]
    assert out.column("neg_ids").to_pylist() == [["n0", "n1", "n2"], ["n0"], ["n1"]]
    assert out.column("neg_scores").to_pylist() == [[1.0, 2.0, 3.0], [1.0], [3.990000009536743]]
    assert stats["negatives_dropped_inconsistent"] == 4
    assert stats["samples_dropped_too_few_negatives"] == 1
    assert (stats["samples_in"], stats["samples_out"]) == (4, 3)
    assert (stats["negatives_in"], stats["negatives_out"]) == (9, 5)
    stats = _new_stats(params := ConsistencyParams(margin=1.0, min_negatives=2))
    out = filter_scores(scores_table(CONSISTENCY_ROWS), params, stats)
    assert out.column("query_id").to_pylist() == ["clean"]
    assert stats["samples_dropped_too_few_negatives"] == 3


def test_consistency_drop_samples():
    from irflow.training_data.consistency import _new_stats

    params = ConsistencyParams(mode="drop_samples", margin=1.0, min_negatives=3)
    stats = _new_stats(params)
    out = filter_scores(scores_table(CONSISTENCY_ROWS), params, stats)
    assert out.column("query_id").to_pylist() == ["clean"]
    assert stats["samples_dropped_inconsistent"] == 3
    assert stats["negatives_dropped_inconsistent"] == 0
    stats = _new_stats(params := ConsistencyParams(mode="drop_samples", margin=-0.5))
    out = filter_scores(scores_table(CONSISTENCY_ROWS), params, stats)
    # Negatives may now reach pos + 0.5: only one-bad (6.0 >= 5.5) and all-bad (3.0) go.
    assert out.column("query_id").to_pylist() == ["clean", "edge"]


# ---------------------------------------------------------------------------------------------
# Teacher scoring
# ---------------------------------------------------------------------------------------------
def test_plan_batches_respects_the_token_budget():
    lengths = [5, 50, 7, 50, 3, 12, 12]
    batches = plan_batches(lengths, batch_tokens=100, max_batch=3)
    assert [i for b in batches for i in b] == [1, 3, 5, 6, 2, 0, 4]
    assert all(len(b) * lengths[b[0]] <= 100 and len(b) <= 3 for b in batches)
    assert plan_batches([500], batch_tokens=100, max_batch=8) == [[0]]


def test_shard_rows_are_contiguous_chunk_aligned_and_cover_everything():
    for rows, shards, chunk in [(1000, 4, 64), (10, 4, 3), (3, 8, 1), (0, 2, 5)]:
        ranges = [shard_rows(rows, i, shards, chunk) for i in range(shards)]
        assert ranges[0][0] == 0 and ranges[-1][1] == rows
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))
        assert all(start % chunk == 0 for start, _ in ranges)


def test_bi_encoder_scores_equal_the_library_call(teachers):
    teacher = teachers["bi-encoder"]
    queries = ["what is the cat", "river city", "what is the cat"]
    docs = ["the cat is in the tree", "gold " * 40, "a dog"]
    expected_q = teacher.model.encode(queries, normalize_embeddings=True)
    expected_d = teacher.model.encode(docs, normalize_embeddings=True)
    expected = (expected_q * expected_d).sum(axis=1)
    np.testing.assert_allclose(teacher.score(queries, docs), expected, atol=1e-5)
    assert teacher.score_kind == "cosine"


def test_bi_encoder_prompts_match_the_library_call(tiny_models, teachers):
    from irflow.training_data.teacher import BiEncoderTeacher

    model = teachers["bi-encoder"].model
    prompted = spec("bi-encoder", tiny_models["bi-encoder"], query_prompt="query ")
    teacher = BiEncoderTeacher(prompted, model, "cpu")
    queries, docs = ["cat", "river city law"], ["the cat", "the law"]
    expected = (
        model.encode(queries, prompt="query ", normalize_embeddings=True)
        * model.encode(docs, normalize_embeddings=True)
    ).sum(axis=1)
    np.testing.assert_allclose(teacher.score(queries, docs), expected, atol=1e-5)
    assert np.abs(teachers["bi-encoder"].score(queries, docs) - expected).max() > 1e-4


def test_cross_encoder_scores_equal_the_library_call(teachers):
    import torch

    teacher = teachers["cross-encoder"]
    pairs = [("what is the cat", "the cat is in the tree"), ("law", "court " * 60), ("a", "b")]
    expected = teacher.model.predict(pairs, activation_fn=torch.nn.Identity())
    got = teacher.score([q for q, _ in pairs], [d for _, d in pairs])
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert teacher.score_kind == "logit"


def test_causal_lm_scores_equal_unpadded_forward(teachers):
    import torch

    teacher = teachers["causal-lm"]
    queries = ["what is the cat", "law", "what is the cat"]
    docs = ["the cat is in the tree river city", "court", "fish " * 10]
    got = teacher.score(queries, docs)
    ids = teacher.input_ids(queries, docs)
    assert ids[0][0] == teacher.tokenizer.bos_token_id or teacher.bos == []
    with torch.inference_mode():
        expected = [
            (lambda row: float(row[teacher.yes_id] - row[teacher.no_id]))(
                teacher.model(input_ids=torch.tensor([x])).logits[0, -1]
            )
            for x in ids
        ]
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert teacher.score_kind == "yes_minus_no_logit"


def test_causal_lm_refuses_multi_token_answers(tiny_models, teachers):
    bad = spec("causal-lm", tiny_models["causal-lm"], yes_token="yes no", no_token="no")
    with pytest.raises(InputError, match=r"answer 'yes no' is 2 tokens.*exactly one"):
        causal_lm_teacher(bad, teachers["causal-lm"].model, teachers["causal-lm"].tokenizer)


# ---------------------------------------------------------------------------------------------
# The causal-LM teacher's prompt: template pieces, truncation and BOS, against ids built by hand
# ---------------------------------------------------------------------------------------------
# The tiny Llama's word-level vocabulary (tiny_models): token strings map one to one to ids, so
# the expected sequences below are written as token lists and looked up, never re-tokenized.
LM_VOCAB = ["<pad>", "<unk>", "<s>", *WORDS, ":", "?", "."]
PROMPT_TEMPLATE = "query : {query} document : {document} relevant ? answer :"
TAIL_QUERY_TEMPLATE = "document : {document} query : {query} ? answer :"


def word_tokenizer(bos: bool):
    """The tiny Llama's tokenizer; with ``bos`` its post-processor adds ``<s>`` in front and a
    trailing ``.`` as an end marker (neither may leak into the pieces the teacher joins)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(LM_VOCAB)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Whitespace(), pre_tokenizers.Punctuation()]
    )
    if bos:
        backend.post_processor = processors.TemplateProcessing(
            single="<s> $A .", special_tokens=[("<s>", vocab["<s>"]), (".", vocab["."])]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>", bos_token="<s>"
    )


def prompt_teacher(teachers, tokenizer, template=PROMPT_TEMPLATE, max_length=None):
    model = teachers["causal-lm"].model
    ref = ModelRef("causal-lm", path=teachers["causal-lm"].spec.model.path, max_length=max_length)
    spec = TeacherSpec(
        name="prompt",
        kind="causal-lm",
        model=ref,
        template=template,
        yes_token="yes",
        no_token="no",
    )
    return causal_lm_teacher(spec, model, tokenizer)


def by_hand(tokenizer, tokens: list[str]) -> list[int]:
    ids = tokenizer.convert_tokens_to_ids(tokens)
    assert tokenizer.unk_token_id not in ids, tokens  # every hand-written token is in the vocab
    return ids


QUERY, QUERY_TOKENS = "what is the cat", ["what", "is", "the", "cat"]
DOC = "the cat is in the tree river city"
DOC_TOKENS = ["the", "cat", "is", "in", "the", "tree", "river", "city"]


@pytest.mark.parametrize("bos", [False, True])
def test_causal_lm_prompt_is_the_template_pieces_joined(teachers, bos):
    tokenizer = word_tokenizer(bos)
    assert (tokenizer("cat").input_ids[:1] == [2]) is bos  # the tokenizer adds <s> by itself
    teacher = prompt_teacher(teachers, tokenizer)
    head = ["query", ":", *QUERY_TOKENS, "document", ":"]
    tail = ["relevant", "?", "answer", ":"]
    start = ["<s>"] if bos else []
    expected = [
        by_hand(tokenizer, [*start, *head, *DOC_TOKENS, *tail]),
        by_hand(tokenizer, [*start, "query", ":", "law", "document", ":", "court", *tail]),
    ]
    assert teacher.input_ids([QUERY, "law"], [DOC, "court"]) == expected
    # The same, from the pieces encoded one by one without special tokens.
    pieces = [
        tokenizer.encode(f"query : {QUERY} document : ", add_special_tokens=False),
        tokenizer.encode(DOC, add_special_tokens=False),
        tokenizer.encode(" relevant ? answer :", add_special_tokens=False),
    ]
    assert expected[0] == [2] * bos + pieces[0] + pieces[1] + pieces[2]
    # One BOS exactly, no end marker: the answer position is the template's last token.
    assert expected[0].count(2) == int(bos) and expected[0][-1] == by_hand(tokenizer, [":"])[0]


def test_causal_lm_prompt_query_in_the_tail(teachers):
    tokenizer = word_tokenizer(bos=False)
    teacher = prompt_teacher(teachers, tokenizer, template=TAIL_QUERY_TEMPLATE)
    expected = by_hand(
        tokenizer, ["document", ":", *DOC_TOKENS, "query", ":", *QUERY_TOKENS, "?", "answer", ":"]
    )
    assert teacher.input_ids([QUERY], [DOC]) == [expected]


@pytest.mark.parametrize("bos", [False, True])
def test_causal_lm_truncation_shortens_only_the_document(teachers, bos):
    tokenizer = word_tokenizer(bos)
    max_length = 16
    teacher = prompt_teacher(teachers, tokenizer, max_length=max_length)
    head = ["query", ":", *QUERY_TOKENS, "document", ":"]  # 8 tokens
    tail = ["relevant", "?", "answer", ":"]  # 4 tokens
    start = ["<s>"] if bos else []
    room = max_length - len(start) - len(head) - len(tail)  # 3 with BOS, 4 without
    assert room == (3 if bos else 4)
    long_doc = by_hand(tokenizer, [*start, *head, *DOC_TOKENS[:room], *tail])  # cut to room
    short_doc = by_hand(tokenizer, [*start, *head, "fish", *tail])  # untouched
    fits = long_doc  # a document of exactly `room` tokens is kept whole
    ids = teacher.input_ids([QUERY] * 3, [DOC, "fish", " ".join(DOC_TOKENS[:room])])
    assert ids == [long_doc, short_doc, fits]
    assert len(ids[0]) == max_length and len(ids[1]) == max_length - room + 1
    # The scores are the model's on exactly these ids, one row at a time.
    import torch

    with torch.inference_mode():
        logits = [teacher.model(input_ids=torch.tensor([x])).logits[0, -1] for x in ids]
    expected = [float(row[teacher.yes_id] - row[teacher.no_id]) for row in logits]
    got = teacher.score([QUERY] * 3, [DOC, "fish", " ".join(DOC_TOKENS[:room])])
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_causal_lm_template_longer_than_max_length_is_refused(teachers):
    teacher = prompt_teacher(teachers, word_tokenizer(bos=True), max_length=12)
    # BOS + 8 head + 4 tail = 13 > 12: nothing is left for the document, and the template
    # would have to be cut, so the pair is refused rather than silently mis-built.
    # (The message counts the template's 12 tokens, without the BOS.)
    with pytest.raises(
        InputError, match=r"teacher 'prompt': .* is 12 tokens, longer than max_length 12"
    ):
        teacher.input_ids([QUERY], [DOC])
    # With room for zero document tokens the template is kept whole and the document dropped.
    teacher = prompt_teacher(teachers, word_tokenizer(bos=True), max_length=13)
    tokenizer = teacher.tokenizer
    template = ["query", ":", *QUERY_TOKENS, "document", ":", "relevant", "?", "answer", ":"]
    expected = by_hand(tokenizer, ["<s>", *template])
    assert teacher.input_ids([QUERY], [DOC]) == [expected]


def scoring_inputs(training_set, tmp_path) -> dict:
    mine_files(training_set, tmp_path / "mined", seed=1)
    root = training_set["root"]
    return {
        "samples": tmp_path / "mined" / "negatives.parquet",
        "corpus": root / "corpus.parquet",
        "queries": root / "queries.parquet",
    }


@pytest.mark.parametrize("kind", ["bi-encoder", "cross-encoder", "causal-lm"])
def test_four_shards_merged_equal_unsharded_scoring(kind, teachers, training_set, tmp_path):
    inputs = scoring_inputs(training_set, tmp_path)
    teacher = teachers[kind]
    common = dict(corpus_parquet=inputs["corpus"], queries_parquet=inputs["queries"])
    score_samples(
        inputs["samples"],
        teacher,
        out_parquet=tmp_path / "whole.parquet",
        stats_json=tmp_path / "whole.json",
        chunk_samples=5,
        **common,
    )
    shards = []
    for index in (2, 0, 3, 1):  # any order
        path = tmp_path / "shards" / f"shard-{index}-of-4.parquet"
        stats = score_shard(
            inputs["samples"],
            index,
            4,
            teacher,
            out_parquet=path,
            stats_json=path.with_suffix(".json"),
            chunk_samples=5,
            **common,
        )
        assert stats["score_kind"] == teacher.score_kind
        shards.append(path)
    merged_stats = merge_shards(shards, tmp_path / "merged.parquet", tmp_path / "merged.json")
    whole = pq.read_table(tmp_path / "whole.parquet")
    merged = pq.read_table(tmp_path / "merged.parquet")
    assert merged.equals(whole)
    assert (tmp_path / "merged.parquet").read_bytes() == (tmp_path / "whole.parquet").read_bytes()
    samples = pq.read_table(inputs["samples"])
    assert merged.column("query_id").equals(samples.column("query_id"))
    assert merged.column("neg_ids").to_pylist() == samples.column("neg_ids").to_pylist()
    meta = read_meta(tmp_path / "merged.parquet", "teacher-scores")
    assert meta["score_kind"] == teacher.score_kind and meta["teacher"]["kind"] == kind
    assert merged_stats["samples"] == samples.num_rows
    assert listing(tmp_path) == sorted(
        ["data", "mined", "shards", "whole.parquet", "whole.json", "merged.parquet", "merged.json"]
    )
    # Each pair's score is what the teacher gives that pair alone.
    row = merged.slice(3, 1).to_pylist()[0]
    queries = pq.read_table(inputs["queries"]).to_pydict()
    query = dict(zip(queries["query_id"], queries["text"], strict=True))[row["query_id"]]
    corpus = pq.read_table(inputs["corpus"]).to_pylist()
    text = {d["doc_id"]: f"{d['title']} {d['text']}".strip() for d in corpus}
    alone = teacher.score([query], [text[row["neg_ids"][0]]])[0]
    assert abs(alone - row["neg_scores"][0]) < 1e-4


def test_merge_refuses_missing_duplicated_and_foreign_shards(teachers, training_set, tmp_path):
    inputs = scoring_inputs(training_set, tmp_path)
    common = dict(
        corpus_parquet=inputs["corpus"], queries_parquet=inputs["queries"], chunk_samples=4
    )
    paths = []
    for index in range(3):
        path = tmp_path / f"s{index}.parquet"
        score_shard(inputs["samples"], index, 3, teachers["bi-encoder"], out_parquet=path, **common)
        paths.append(path)
    out = tmp_path / "out" / "merged.parquet"
    with pytest.raises(InputError, match=r"shards \[1\] of 3 are missing"):
        merge_shards([paths[0], paths[2]], out)
    with pytest.raises(InputError, match=r"shard 2 of 3 given twice"):
        merge_shards([paths[0], paths[1], paths[2], paths[2]], out)
    other = tmp_path / "other.parquet"
    score_shard(inputs["samples"], 1, 3, teachers["cross-encoder"], out_parquet=other, **common)
    with pytest.raises(InputError, match=r"shard teacher"):
        merge_shards([paths[0], other, paths[2]], out)
    four = tmp_path / "four.parquet"
    score_shard(inputs["samples"], 1, 4, teachers["bi-encoder"], out_parquet=four, **common)
    with pytest.raises(InputError, match=r"shard count 4 differs"):
        merge_shards([paths[0], four, paths[2]], out)
    assert listing(tmp_path / "out") == []


def test_scoring_refuses_document_missing_from_corpus(teachers, training_set, tmp_path):
    inputs = scoring_inputs(training_set, tmp_path)
    corpus = pq.read_table(inputs["corpus"])
    samples = pq.read_table(inputs["samples"])
    pos = samples.column("pos_id")[0].as_py()
    qid = samples.column("query_id")[0].as_py()
    keep = pa.compute.not_equal(corpus.column("doc_id"), pos)
    pq.write_table(corpus.filter(keep), inputs["corpus"])
    out = tmp_path / "scores" / "shard.parquet"
    with pytest.raises(InputError, match=rf"positive '{pos}' of query '{qid}'"):
        score_shard(
            inputs["samples"],
            0,
            1,
            teachers["bi-encoder"],
            inputs["corpus"],
            inputs["queries"],
            out,
        )
    assert listing(out.parent) == []


def test_scoring_refuses_a_teacher_that_cannot_load(training_set, tmp_path):
    inputs = scoring_inputs(training_set, tmp_path)
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    out = tmp_path / "scores" / "shard.parquet"
    for kind in ("bi-encoder", "cross-encoder", "causal-lm"):
        with pytest.raises(InputError, match=rf"teacher 'tiny-{kind}'.*broken-model"):
            score_shard(
                inputs["samples"],
                0,
                1,
                spec(kind, broken),
                inputs["corpus"],
                inputs["queries"],
                out,
                device="cpu",
            )
    with pytest.raises(InputError, match=r"teacher 'tiny-bi-encoder'.*does not exist"):
        load_teacher(spec("bi-encoder", tmp_path / "nowhere"), "cpu")
    assert listing(out.parent) == []


def test_consistency_filter_file_keeps_schema_and_chains(teachers, training_set, tmp_path):
    inputs = scoring_inputs(training_set, tmp_path)
    scores = tmp_path / "scores.parquet"
    score_samples(
        inputs["samples"], teachers["cross-encoder"], inputs["corpus"], inputs["queries"], scores
    )
    out = tmp_path / "filtered" / "margin.parquet"
    stats = filter_consistency(scores, out, out.with_suffix(".json"), {"margin": 0.0}, name="m0")
    table = pq.read_table(out)
    assert table.schema.remove_metadata() == SCORES_SCHEMA
    for row in table.to_pylist():
        assert all(s < row["pos_score"] for s in row["neg_scores"]) and row["neg_scores"]
    assert stats["samples_out"] == table.num_rows and stats["score_kind"] == "logit"
    again = tmp_path / "filtered" / "again.parquet"
    filter_consistency(out, again, params={"mode": "drop_samples", "margin": 0.0})
    assert pq.read_table(again).equals(table)
    assert [f["name"] for f in read_meta(again)["filters"]] == ["m0", None]


def test_parquet_sink_leaves_no_file_on_error(tmp_path):
    with (
        pytest.raises(RuntimeError),
        ParquetSink(tmp_path / "x.parquet", SCORES_SCHEMA, {}) as sink,
    ):
        sink.write(scores_table(CONSISTENCY_ROWS))
        raise RuntimeError("killed")
    with pytest.raises(ValueError), ParquetSink(tmp_path / "y.parquet", SCORES_SCHEMA, {}) as sink:
        sink.write(pa.table({"query_id": ["a"]}))
    assert listing(tmp_path) == []


@pytest.mark.models
def test_real_minilm_teacher_equals_library_call():
    import torch

    require_models("all-MiniLM-L6-v2")
    path = MODELS / "all-MiniLM-L6-v2"
    torch.set_num_threads(2)
    teacher = load_teacher(
        TeacherSpec(name="minilm", kind="bi-encoder", model=ModelRef("minilm", path=str(path))),
        "cpu",
    )
    queries = ["what is the fastest land animal", "how do vaccines work"] * 3
    docs = [
        "The cheetah is the fastest land animal.",
        "Vaccines train the immune system.",
        "Paris is the capital of France. " * 30,
        "short",
        "a b c",
        "Vaccines work.",
    ]
    expected = (
        teacher.model.encode(queries, normalize_embeddings=True)
        * teacher.model.encode(docs, normalize_embeddings=True)
    ).sum(axis=1)
    np.testing.assert_allclose(teacher.score(queries, docs), expected, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# Bad input to every training-data stage: an error naming the item, and no artifact
# ---------------------------------------------------------------------------------------------
def select_files(data: dict, out: Path, **kwargs) -> dict:
    from irflow.training_data.selection import select_training_queries

    root = data["root"]
    return select_training_queries(
        root / "queries.parquet",
        root / "qrels.trec",
        {},
        out / "queries.parquet",
        out / "qrels.trec",
        out / "queries.stats.json",
        min_label=1,
        **kwargs,
    )


def rewrite_queries(data: dict, queries: dict[str, str]) -> None:
    write_queries_parquet(data["root"] / "queries.parquet", dict(sorted(queries.items())))


def test_selection_refuses_a_judged_query_without_text_and_writes_nothing(training_set, tmp_path):
    queries = dict(training_set["queries"])
    del queries["q3"]
    rewrite_queries(training_set, queries)
    root = training_set["root"]
    with pytest.raises(InputError) as err:
        select_files(training_set, tmp_path / "out")
    message = str(err.value)
    assert "judged queries have no text" in message and "['q3']" in message
    assert str(root / "queries.parquet") in message and str(root / "qrels.trec") in message
    assert listing(tmp_path / "out") == []


def test_selection_refuses_a_judged_query_with_blank_text(training_set, tmp_path):
    rewrite_queries(training_set, {**training_set["queries"], "q5": "  \t "})
    with pytest.raises(InputError, match=r"judged queries with empty text: \['q5'\]"):
        select_files(training_set, tmp_path / "out")
    assert listing(tmp_path / "out") == []


def test_mining_refuses_a_query_without_candidates_and_writes_nothing(training_set, tmp_path):
    root = training_set["root"]
    run = {q: docs for q, docs in training_set["run"].items() if q != "q7"}
    write_trec_run(root / "run.trec", run, tag="bm25")
    with pytest.raises(InputError) as err:
        mine_files(training_set, tmp_path / "out")
    assert str(root / "run.trec") in str(err.value)
    assert "1 training queries are not in the run: ['q7']" in str(err.value)
    assert listing(tmp_path / "out") == []
    (root / "run.trec").write_text("")  # an empty run: every query is named (up to SHOW)
    with pytest.raises(InputError, match=r"12 training queries are not in the run: \['q0'"):
        mine_files(training_set, tmp_path / "out")
    assert listing(tmp_path / "out") == []


def test_scoring_refuses_a_query_without_text_and_writes_nothing(teachers, training_set, tmp_path):
    inputs = scoring_inputs(training_set, tmp_path)
    qid = pq.read_table(inputs["samples"]).column("query_id")[0].as_py()
    queries = dict(training_set["queries"])
    del queries[qid]
    rewrite_queries(training_set, queries)
    out = tmp_path / "scores" / "shard.parquet"
    with pytest.raises(InputError) as err:
        teacher = teachers["bi-encoder"]
        score_shard(inputs["samples"], 0, 1, teacher, inputs["corpus"], inputs["queries"], out)
    assert f"['{qid}']" in str(err.value) and "have no text" in str(err.value)
    assert str(inputs["queries"]) in str(err.value)
    assert listing(out.parent) == []


def test_scoring_checks_inputs_before_loading_the_teacher(training_set, tmp_path):
    """A bad samples file is reported as such, not hidden behind a model-loading failure, and
    the (slow) model load is not wasted on inputs that cannot be scored."""
    inputs = scoring_inputs(training_set, tmp_path)
    corpus = pq.read_table(inputs["corpus"])
    pq.write_table(corpus.slice(0, 0), inputs["corpus"])
    out = tmp_path / "scores" / "shard.parquet"
    with pytest.raises(InputError, match=r"not in the corpus"):
        score_shard(
            inputs["samples"],
            0,
            1,
            spec("bi-encoder", tmp_path / "no-such-model"),
            inputs["corpus"],
            inputs["queries"],
            out,
            device="cpu",
        )
    assert listing(out.parent) == []


# Through Snakemake: the job fails with the item named in its log, and no output remains.
@pytest.fixture(scope="module")
def tiny_collection(tmp_path_factory):
    from tiny_workflow import make_bi_encoder, make_collection

    root = tmp_path_factory.mktemp("tiny-workflow")
    return {"root": root, "data": make_collection(root / "data"), "model": make_bi_encoder(root)}


def test_workflow_positive_missing_from_corpus_fails_mining_and_leaves_nothing(
    tiny_collection, tmp_path
):
    import shutil

    from tiny_workflow import NEGATIVES, run, tiny_config

    data = tmp_path / "data"
    shutil.copytree(tiny_collection["data"], data)
    with open(data / "qrels" / "train.tsv", "a", encoding="utf-8") as handle:
        handle.write("t2\tghost-doc\t1\n")
    work = tmp_path / "work"
    work.mkdir()
    result = run(work, tiny_config(data, tiny_collection["model"]), NEGATIVES, check=False)
    assert result.returncode != 0
    log = (work / "results/logs/mine_negatives/tiny-train/bm25.log").read_text()
    assert "positives are not in the corpus" in log and "'ghost-doc' (query 't2')" in log
    negatives = work / Path(NEGATIVES).parent
    assert listing(negatives) == []
    # The stages before it did complete: the failure is the mining job's alone.
    assert (work / "results/training-data/tiny-train/queries.parquet").is_file()


def test_workflow_mines_only_the_selected_queries(tiny_collection, tmp_path):
    """With max_queries the miner's first stage retrieves for the selected training queries
    only (not the whole training dataset), in one job or in query shards alike."""
    from tiny_workflow import NEGATIVES, TRAIN_QUERIES, run, tiny_config

    from irflow.data import read_queries
    from irflow.io import read_run_dict

    miner_run = "results/training-data/tiny-train/runs/bm25.trec"
    training_set = {"dataset": "tiny-train", "held_out": ["tiny-test"], "max_queries": 3}
    runs = {}
    for shards in (1, 2):
        config = tiny_config(tiny_collection["data"], tiny_collection["model"])
        config["training_sets"]["tiny-train"] = training_set
        config["resources"]["bm25_retrieve"] = {"query_shards": shards}
        work = tmp_path / f"shards-{shards}"
        work.mkdir()
        run(work, config, NEGATIVES)
        selected = set(read_queries(str(work / TRAIN_QUERIES)))
        assert len(selected) == 3  # of the dataset's 8 judged training queries
        assert set(read_run_dict(work / miner_run)) == selected
        mined = set(pq.read_table(work / NEGATIVES).column("query_id").to_pylist())
        assert mined == selected
        # The training dataset's own first-stage run (all its queries) was never made.
        assert not (work / "results/runs/tiny-train").exists()
        runs[shards] = (work / miner_run).read_bytes()
    assert runs[1] == runs[2]


@pytest.mark.slow
def test_workflow_teacher_that_cannot_load_fails_scoring_and_leaves_nothing(
    tiny_collection, tmp_path
):
    from tiny_workflow import SHARD0, run, tiny_config

    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    config = tiny_config(tiny_collection["data"], tiny_collection["model"])
    config["models"]["broken"] = {"path": str(broken)}
    config["teachers"]["tiny"]["model"] = "broken"
    work = tmp_path / "work"
    work.mkdir()
    result = run(work, config, SHARD0, check=False)
    assert result.returncode != 0
    log = work / "results/logs/score_teacher_shard/tiny-train/bm25/tiny/shard-0-of-2.log"
    assert "teacher 'tiny'" in log.read_text() and "broken-model" in log.read_text()
    assert listing(work / Path(SHARD0).parent) == []


def test_training_data_table_without_filter_or_teacher_stages(tmp_path):
    """Stages with no artifact are left out of the Markdown (no KeyError on an empty stage)."""
    import json

    from irflow.training_data.table import training_data_table

    root = tmp_path / "results"
    files = {
        "training-data/t/queries.stats.json": {"selected_queries": 3, "selected_positives": 4},
        "training-data/t/negatives/bm25.stats.json": {"samples": 4, "negatives": 12},
        "teacher-scores/t/bm25/m.stats.json": {"samples": 4, "pairs": 16},
    }
    for name, stats in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(json.dumps(stats))
    table = training_data_table(
        [str(root / n) for n in files], str(root), tmp_path / "t.tsv", tmp_path / "t.md"
    )
    assert list(table["stage"]) == ["queries", "negatives", "teacher-scores"]
    markdown = (tmp_path / "t.md").read_text()
    assert "## teacher-scores" in markdown and "## filtered" not in markdown
    assert "16" in markdown.split("## teacher-scores")[1]
