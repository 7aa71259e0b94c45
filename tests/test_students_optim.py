"""Optimizers by name and class path, and the training spec built from a config dict."""

from __future__ import annotations

import pytest
import torch

from irflow.students.optim import OPTIMIZERS, build_optimizer, check_runnable, resolve_optimizer
from irflow.students.spec import OptimizerSpec, StudentTrainingSpec


def _step(optimizer, params):
    loss = sum((p**2).sum() for p in params)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()


@pytest.mark.parametrize("name", ["adamw", "lion", "adamw8bit", "lion8bit"])
def test_optimizers_by_name_construct_and_step_on_cpu(name):
    torch.manual_seed(0)
    weights = torch.nn.Parameter(torch.randn(128, 64))  # >= 4096 values: 8-bit state applies
    before = weights.detach().clone()
    spec = OptimizerSpec.from_config({"name": name, "lr": 0.01, "weight_decay": 0.0})
    optimizer = build_optimizer(spec, [weights], "cpu")
    _step(optimizer, [weights])
    assert not torch.equal(before, weights.detach())
    # Gradient 2w, first step: both Adam (bias-corrected) and Lion move each weight by about lr
    # against the sign of its gradient.
    assert torch.allclose(weights.detach(), before - 0.01 * before.sign(), atol=2e-3)
    state = optimizer.state[weights]
    if name.endswith("8bit"):
        assert state["state1"].dtype == torch.uint8
    elif name == "lion":
        assert state["state1"].dtype == torch.float32


def test_optimizer_classes_and_arguments():
    cls, kwargs = resolve_optimizer(OptimizerSpec.from_config({"name": "lion", "lr": "3e-5"}))
    assert f"{cls.__module__}.{cls.__name__}" == "bitsandbytes.optim.lion.Lion"
    assert kwargs == {"lr": 3e-5, "optim_bits": 32}
    spec = OptimizerSpec.from_config(
        {"class": "torch.optim.SGD", "lr": 0.1, "kwargs": {"momentum": 0.9, "nesterov": True}}
    )
    cls, kwargs = resolve_optimizer(spec)
    assert cls is torch.optim.SGD
    assert kwargs == {"lr": 0.1, "momentum": 0.9, "nesterov": True}
    weights = torch.nn.Parameter(torch.ones(3))
    optimizer = build_optimizer(spec, [weights])
    assert optimizer.param_groups[0]["momentum"] == 0.9
    _step(optimizer, [weights])
    # Gradient 2 plus weight decay 0.01 * 1 (the default); the first momentum buffer is that
    # gradient; Nesterov step: 1 - 0.1 * (2.01 + 0.9 * 2.01) = 0.6181.
    assert torch.allclose(weights.detach(), torch.full((3,), 0.6181))


def test_unknown_and_bad_optimizers_are_refused():
    allowed = r"allowed: \['adamw', 'adamw8bit', 'lion', 'lion8bit'\]"
    with pytest.raises(ValueError, match="unknown optimizer 'sgd'; " + allowed):
        resolve_optimizer(OptimizerSpec(name="sgd"))
    with pytest.raises(ValueError, match="is not a torch.optim.Optimizer"):
        resolve_optimizer(OptimizerSpec(name=None, class_path="torch.nn.Linear"))
    with pytest.raises(ValueError, match="has no 'Nadamm'"):
        resolve_optimizer(OptimizerSpec(name=None, class_path="torch.optim.Nadamm"))
    with pytest.raises(RuntimeError, match="cannot import"):
        resolve_optimizer(OptimizerSpec(name=None, class_path="nowhere.Optimizer"))
    with pytest.raises(ValueError, match="takes no eps"):
        resolve_optimizer(OptimizerSpec(name="lion8bit", eps=1e-8))
    with pytest.raises(ValueError, match="either 'name' or 'class'"):
        OptimizerSpec.from_config({"name": "adamw", "class": "torch.optim.AdamW"})
    assert sorted(OPTIMIZERS) == ["adamw", "adamw8bit", "lion", "lion8bit"]


def test_a_bitsandbytes_optimizer_that_cannot_run_fails_clearly():
    # The meta device has no kernels: the probe step fails, and nothing is substituted.
    with pytest.raises(RuntimeError, match=r"'adamw8bit' .*cannot run on device 'meta'.*none is"):
        check_runnable(OptimizerSpec(name="adamw8bit"), "meta")
    check_runnable(OptimizerSpec(name="adamw"), "meta")  # torch optimizers are not probed


# ---------------------------------------------------------------------------------------------
# The training spec
# ---------------------------------------------------------------------------------------------
def test_spec_from_config_with_defaults_and_strings_from_yaml():
    spec = StudentTrainingSpec.from_config(
        {
            "objective": {"name": "kd", "temperature": "2"},
            "optimizer": {"name": "lion8bit", "lr": "1e-5", "betas": [0.9, 0.99]},
            "schedule": {"name": "cosine", "warmup_ratio": 0.1},
            "epochs": 2,
            "batch_size": 8,
            "num_negatives": 4,
            "grad_clip": 0,
            "lora": {"r": 4, "target_modules": "query"},
        }
    )
    assert spec.objective.temperature == 2.0
    assert spec.optimizer.lr == 1e-5 and spec.optimizer.betas == (0.9, 0.99)
    assert spec.schedule.name == "cosine" and spec.grad_clip is None
    assert spec.lora.target_modules == ("query",)
    assert spec.seed == 42 and spec.max_steps is None and spec.checkpoint_every_steps is None
    described = spec.describe()
    assert described["optimizer"]["betas"] == [0.9, 0.99]
    assert StudentTrainingSpec.from_config({"objective": "bce"}).objective.name == "bce"
    hash(spec)  # frozen all the way down


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"objective": "kd", "epoch": 1}, "unknown key 'epoch'"),
        ({"objective": {"name": "kd", "temp": 1}}, "unknown key 'objective.temp'"),
        ({"objective": "kd", "optimizer": {"beta": 1}}, "unknown key 'optimizer.beta'"),
        ({"objective": "kd", "schedule": {"name": "step"}}, "unknown schedule 'step'"),
        ({"objective": "kd", "lora": {"rank": 4}}, "unknown key 'lora.rank'"),
        ({"objective": "kd", "batch_size": 0}, "batch_size: must be >= 1"),
        ({"objective": "kd", "batch_size": 2.5}, "batch_size: expected an integer"),
        ({"objective": "kd", "optimizer": {"lr": "fast"}}, "optimizer.lr: expected a number"),
        ({"objective": "kd", "bf16": "yes"}, "bf16: expected true or false"),
        ({"epochs": 1}, "needs an objective"),
        ({"objective": "kd", "batch_sampler": "x"}, "allowed: \\['random', 'no_duplicates'\\]"),
        (
            {"objective": {"name": "x", "matryoshka_dims": [8, 4], "matryoshka_weights": [1]}},
            "one weight per matryoshka_dims",
        ),
    ],
)
def test_spec_refuses_bad_keys_naming_them(config, message):
    with pytest.raises(ValueError, match=message):
        StudentTrainingSpec.from_config(config)
