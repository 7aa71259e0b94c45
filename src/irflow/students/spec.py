"""The training specification of one student, built from the plain dict of the config.

:meth:`StudentTrainingSpec.from_config` is the only way in from configuration: every key is
checked (an unknown key raises :class:`ValueError` naming it, with its section, e.g.
``optimizer.beta``), numbers written as strings by YAML (``1e-5`` is a string to PyYAML) are
converted, and the result is frozen, so it can be hashed into provenance with
:meth:`StudentTrainingSpec.describe`.

Which objective keys an objective accepts, and which objectives a model kind has, is decided by
the registry in :mod:`irflow.students.losses`; the optimizer names by
:mod:`irflow.students.optim`. Both are checked when training starts, before any model loads.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

SCHEDULES = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}
BATCH_SAMPLERS = ("random", "no_duplicates")

# The kd objective's default temperature by the teacher's score kind (the ``score_kind`` of the
# teacher-scores artifact, :data:`irflow.training_data.artifacts.SCORE_KINDS`). A bi-encoder
# teacher's cosines lie in [-1, 1]: at T = 1 their softmax over a list is nearly uniform and
# teaches almost nothing, so they get sentence-transformers' scale 20 (T = 0.05, as its
# MultipleNegativesRankingLoss). Cross-encoder and causal-LM logits are used as they are (T = 1).
KD_TEMPERATURE_BY_SCORE_KIND = {"cosine": 0.05, "logit": 1.0, "yes_minus_no_logit": 1.0}
KD_DEFAULT_TEMPERATURE = 1.0  # a score kind not in the table (e.g. a file without one)


def default_kd_temperature(score_kind: str | None) -> float:
    """The kd temperature used when ``objective.temperature`` is not given."""
    return KD_TEMPERATURE_BY_SCORE_KIND.get(score_kind, KD_DEFAULT_TEMPERATURE)


def _float(section: str, key: str, value: Any, allow_none: bool = False) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool):
        raise ValueError(f"{section}{key}: expected a number, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{section}{key}: expected a number, got {value!r}") from None


def _int(section: str, key: str, value: Any, minimum: int | None = None, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
        raise ValueError(f"{section}{key}: expected an integer, got {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{section}{key}: must be >= {minimum}, got {value}")
    return value


def _check_keys(section: str, entry: Any, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(entry, dict):
        raise ValueError(f"{section or 'training spec'}: expected a mapping, got {entry!r}")
    unknown = sorted(str(k) for k in set(entry) - allowed)
    if unknown:
        raise ValueError(
            f"unknown key {section + unknown[0]!r} in the student training spec; allowed "
            f"{'in ' + section.rstrip('.') if section else 'at the top level'}: {sorted(allowed)}"
        )
    return dict(entry)


@dataclass(frozen=True)
class ObjectiveSpec:
    """The loss: its registry name and the parameters it takes (None: the objective's default).

    ``temperature``           softmax temperature (cl, kd, infonce, cached_infonce). kd's
                              default follows the teacher's score kind
                              (:data:`KD_TEMPERATURE_BY_SCORE_KIND`): 0.05 for a bi-encoder
                              teacher's cosines, 1 for cross-encoder or causal-LM logits; a
                              given value always wins
    ``temperature_squared``   kd: multiply the KL by T^2 (Hinton et al.), off by default
    ``in_batch_negatives``    cross-encoder cl: in-batch negatives per query besides the hard
                              ones (0: the positive and its own hard negatives only)
    ``matryoshka_dims``       bi-encoder: wrap the loss in MatryoshkaLoss at these dimensions
    ``matryoshka_weights``    bi-encoder: one weight per dimension (default 1 each)
    ``similarity``            bi-encoder: ``cosine`` or ``dot`` (margin_mse, infonce)
    ``mini_batch_size``       cached_infonce: GradCache mini-batch size
    """

    name: str
    temperature: float | None = None
    temperature_squared: bool | None = None
    in_batch_negatives: int | None = None
    matryoshka_dims: tuple[int, ...] | None = None
    matryoshka_weights: tuple[float, ...] | None = None
    similarity: str | None = None
    mini_batch_size: int | None = None

    def given(self) -> set[str]:
        """The parameters set in the config (not left at None)."""
        return {
            f.name
            for f in dataclasses.fields(self)
            if f.name != "name" and getattr(self, f.name) is not None
        }

    @classmethod
    def from_config(cls, entry: dict[str, Any] | str) -> ObjectiveSpec:
        if isinstance(entry, str):
            entry = {"name": entry}
        section = "objective."
        entry = _check_keys(section, entry, {f.name for f in dataclasses.fields(cls)})
        if not isinstance(entry.get("name"), str):
            raise ValueError("objective.name: the objective needs a name")
        out: dict[str, Any] = {"name": entry["name"]}
        if "temperature" in entry:
            out["temperature"] = _float(section, "temperature", entry["temperature"], True)
            if out["temperature"] is not None and out["temperature"] <= 0:
                raise ValueError("objective.temperature: must be > 0")
        if entry.get("temperature_squared") is not None:
            out["temperature_squared"] = bool(entry["temperature_squared"])
        if "in_batch_negatives" in entry:
            out["in_batch_negatives"] = _int(
                section, "in_batch_negatives", entry["in_batch_negatives"], 0, True
            )
        if entry.get("matryoshka_dims") is not None:
            dims = entry["matryoshka_dims"]
            if not isinstance(dims, list | tuple) or not dims:
                raise ValueError("objective.matryoshka_dims: expected a non-empty list")
            out["matryoshka_dims"] = tuple(_int(section, "matryoshka_dims", d, 1) for d in dims)
            if len(set(out["matryoshka_dims"])) != len(dims):
                raise ValueError("objective.matryoshka_dims: dimensions repeat")
        if entry.get("matryoshka_weights") is not None:
            weights = entry["matryoshka_weights"]
            if not isinstance(weights, list | tuple):
                raise ValueError("objective.matryoshka_weights: expected a list")
            out["matryoshka_weights"] = tuple(
                _float(section, "matryoshka_weights", w) for w in weights
            )
            if len(weights) != len(out.get("matryoshka_dims", ())):
                raise ValueError(
                    "objective.matryoshka_weights: needs one weight per matryoshka_dims entry"
                )
        if entry.get("similarity") is not None:
            if entry["similarity"] not in ("cosine", "dot"):
                raise ValueError(
                    f"objective.similarity: {entry['similarity']!r} is not one of ['cosine', 'dot']"
                )
            out["similarity"] = entry["similarity"]
        if "mini_batch_size" in entry:
            out["mini_batch_size"] = _int(
                section, "mini_batch_size", entry["mini_batch_size"], 1, True
            )
        return cls(**out)


@dataclass(frozen=True)
class OptimizerSpec:
    """An optimizer by registry ``name`` or by ``class_path`` (config key ``class``)."""

    name: str | None = "adamw"
    class_path: str | None = None
    lr: float = 2e-5
    weight_decay: float = 0.01
    betas: tuple[float, float] | None = None
    eps: float | None = None
    kwargs: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def from_config(cls, entry: dict[str, Any]) -> OptimizerSpec:
        section = "optimizer."
        entry = _check_keys(
            section, entry, {"name", "class", "lr", "weight_decay", "betas", "eps", "kwargs"}
        )
        name, class_path = entry.get("name"), entry.get("class")
        if name is not None and class_path is not None:
            raise ValueError("optimizer: give either 'name' or 'class', not both")
        if name is None and class_path is None:
            name = "adamw"
        if name is not None and not isinstance(name, str):
            raise ValueError(f"optimizer.name: expected a string, got {name!r}")
        if class_path is not None and (not isinstance(class_path, str) or "." not in class_path):
            raise ValueError(
                f"optimizer.class: expected a dotted path such as 'torch.optim.SGD', got "
                f"{class_path!r}"
            )
        out: dict[str, Any] = {"name": name, "class_path": class_path}
        if "lr" in entry:
            out["lr"] = _float(section, "lr", entry["lr"])
            if out["lr"] <= 0:
                raise ValueError("optimizer.lr: must be > 0")
        if "weight_decay" in entry:
            out["weight_decay"] = _float(section, "weight_decay", entry["weight_decay"])
        if entry.get("betas") is not None:
            betas = entry["betas"]
            if not isinstance(betas, list | tuple) or len(betas) != 2:
                raise ValueError(f"optimizer.betas: expected two numbers, got {betas!r}")
            out["betas"] = tuple(_float(section, "betas", b) for b in betas)
        if entry.get("eps") is not None:
            out["eps"] = _float(section, "eps", entry["eps"])
        kwargs = entry.get("kwargs") or {}
        if not isinstance(kwargs, dict):
            raise ValueError(f"optimizer.kwargs: expected a mapping, got {kwargs!r}")
        clash = sorted(set(kwargs) & {"lr", "weight_decay", "betas", "eps", "params"})
        if clash:
            raise ValueError(f"optimizer.kwargs: {clash} must be given as optimizer keys")
        out["kwargs"] = tuple(sorted((str(k), _freeze(v)) for k, v in kwargs.items()))
        return cls(**out)


def _freeze(value: Any) -> Any:
    """Lists become tuples (the spec is frozen); nested mappings are not optimizer arguments."""
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        raise ValueError(f"optimizer.kwargs: nested mappings are not supported, got {value!r}")
    return value


@dataclass(frozen=True)
class ScheduleSpec:
    """Learning-rate schedule: ``linear`` or ``cosine`` decay or ``constant``, after a linear
    warm-up over ``warmup_ratio`` of the steps."""

    name: str = "linear"
    warmup_ratio: float = 0.0

    @classmethod
    def from_config(cls, entry: dict[str, Any]) -> ScheduleSpec:
        entry = _check_keys("schedule.", entry, {"name", "warmup_ratio"})
        name = entry.get("name", "linear")
        if name not in SCHEDULES:
            raise ValueError(
                f"schedule.name: unknown schedule {name!r}; allowed: {list(SCHEDULES)}"
            )
        ratio = _float("schedule.", "warmup_ratio", entry.get("warmup_ratio", 0.0))
        if not 0.0 <= ratio < 1.0:
            raise ValueError(f"schedule.warmup_ratio: must be in [0, 1), got {ratio}")
        return cls(name=name, warmup_ratio=ratio)


@dataclass(frozen=True)
class LoraSpec:
    """Low-rank adapters (peft ``LoraConfig``); merged into the weights of the saved model."""

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] | None = None  # None: peft's default for the model type

    @classmethod
    def from_config(cls, entry: dict[str, Any]) -> LoraSpec:
        section = "lora."
        entry = _check_keys(section, entry, {"r", "alpha", "dropout", "target_modules"})
        out: dict[str, Any] = {}
        if "r" in entry:
            out["r"] = _int(section, "r", entry["r"], 1)
        if "alpha" in entry:
            out["alpha"] = _float(section, "alpha", entry["alpha"])
        if "dropout" in entry:
            out["dropout"] = _float(section, "dropout", entry["dropout"])
        if entry.get("target_modules") is not None:
            modules = entry["target_modules"]
            if isinstance(modules, str):
                modules = [modules]
            out["target_modules"] = tuple(str(m) for m in modules)
        return cls(**out)


@dataclass(frozen=True)
class StudentTrainingSpec:
    """Everything that determines how a student is trained (but not on what data or from what
    initialisation: those are the entry points' file arguments).

    ``batch_size`` counts samples (a query, its positive and ``num_negatives`` negatives);
    ``num_negatives`` is how many of each sample's negatives are used, in file order (samples
    with fewer are dropped and counted: every sample then has the same list length, so
    objectives are comparable and sentence-transformers' n-tuple losses apply unchanged).
    ``epochs`` and ``max_steps`` (optimizer steps; overrides ``epochs`` when set) bound
    training. ``grad_clip`` is the maximum gradient norm (None or 0: no clipping). ``bf16``
    applies on CUDA only (mixed precision; on CPU training stays fp32 and the stats say so).
    ``checkpoint_every_steps`` (None: no checkpoints) saves a resumable checkpoint.
    ``batch_sampler`` ``no_duplicates`` keeps repeated texts out of a batch (for in-batch
    negatives); ``group_by_length`` batches samples of similar length (within shuffled
    mega-batches), which saves padding.
    """

    objective: ObjectiveSpec
    optimizer: OptimizerSpec = field(default_factory=OptimizerSpec)
    schedule: ScheduleSpec = field(default_factory=ScheduleSpec)
    epochs: float = 1.0
    max_steps: int | None = None
    batch_size: int = 16
    gradient_accumulation_steps: int = 1
    num_negatives: int = 7
    max_length: int | None = None
    grad_clip: float | None = 1.0
    seed: int = 42
    bf16: bool = False
    group_by_length: bool = False
    batch_sampler: str = "random"
    lora: LoraSpec | None = None
    checkpoint_every_steps: int | None = None
    log_every_steps: int = 1

    @classmethod
    def from_config(cls, entry: dict[str, Any]) -> StudentTrainingSpec:
        """Build from a config dict; unknown keys raise ValueError naming the key."""
        entry = _check_keys("", entry, {f.name for f in dataclasses.fields(cls)})
        if "objective" not in entry:
            raise ValueError("objective: the student training spec needs an objective")
        out: dict[str, Any] = {"objective": ObjectiveSpec.from_config(entry["objective"])}
        if entry.get("optimizer") is not None:
            out["optimizer"] = OptimizerSpec.from_config(entry["optimizer"])
        if entry.get("schedule") is not None:
            out["schedule"] = ScheduleSpec.from_config(entry["schedule"])
        if entry.get("lora") is not None:
            out["lora"] = LoraSpec.from_config(entry["lora"])
        if "epochs" in entry:
            out["epochs"] = _float("", "epochs", entry["epochs"])
            if out["epochs"] <= 0:
                raise ValueError("epochs: must be > 0")
        for key, minimum, allow_none in (
            ("max_steps", 1, True),
            ("batch_size", 1, False),
            ("gradient_accumulation_steps", 1, False),
            ("num_negatives", 1, False),
            ("max_length", 8, True),
            ("seed", 0, False),
            ("checkpoint_every_steps", 1, True),
            ("log_every_steps", 1, False),
        ):
            if key in entry:
                out[key] = _int("", key, entry[key], minimum, allow_none)
        if "grad_clip" in entry:
            clip = _float("", "grad_clip", entry["grad_clip"], True)
            out["grad_clip"] = clip if clip else None
        for key in ("bf16", "group_by_length"):
            if key in entry:
                if not isinstance(entry[key], bool):
                    raise ValueError(f"{key}: expected true or false, got {entry[key]!r}")
                out[key] = entry[key]
        if "batch_sampler" in entry:
            if entry["batch_sampler"] not in BATCH_SAMPLERS:
                raise ValueError(
                    f"batch_sampler: unknown sampler {entry['batch_sampler']!r}; allowed: "
                    f"{list(BATCH_SAMPLERS)}"
                )
            out["batch_sampler"] = entry["batch_sampler"]
        spec = cls(**out)
        if spec.group_by_length and spec.batch_sampler != "random":
            raise ValueError("group_by_length works with batch_sampler 'random' only")
        return spec

    def describe(self) -> dict[str, Any]:
        """A JSON-serialisable dict of every setting (for provenance and resume checks)."""
        return _plain(dataclasses.asdict(self))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
