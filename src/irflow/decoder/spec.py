"""The unified decoder's configuration: one dict, four sections, every key defaulted and checked.

``parse_spec(spec_dict)`` fills defaults and refuses unknown keys and bad values with an
:class:`irflow.io.InputError` that names the key path (``adapter.top_k``,
``training.stages[1].ratio``), so a config mistake is reported before any model is loaded.
:data:`DEFAULTS` is the full default spec (``describe_defaults()`` prints it).

Batch sizes (see :mod:`.train` for the details):

``embedding.batch_size``
    queries per InfoNCE batch; each is contrasted with the positives and hard negatives of the
    whole batch, so this is the contrastive batch (``batch_size x (1 + num_negatives)``
    documents).
``embedding.mini_batch_size``, ``reranking.mini_batch_size``
    gradient caching (GradCache): rows (queries or documents; (query, document) pairs) per
    forward pass, the loss and gradient still those of the whole batch; ``null`` (default):
    the whole batch in one pass. At most the batch's rows. Costs one more forward pass.
``training.gradient_accumulation_steps``
    batches of each task averaged into one optimizer step (times the stage's ``ratio``);
    ``steps``, schedules and checkpoints count optimizer steps. It does not enlarge the
    InfoNCE batch: the negatives stay those of each batch.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from irflow.io import InputError

TASKS = ("embed", "rerank")

DEFAULT_QUERY_TEMPLATE = (
    "Instruct: Given a search query, retrieve relevant passages that answer the query\n"
    "Query: {query}"
)
DEFAULT_DOCUMENT_TEMPLATE = "{document}"
# Same wording as the causal-LM teacher's default (irflow.training_data.teacher), so a decoder
# student and a decoder teacher see the same prompt unless configured otherwise.
DEFAULT_RERANK_TEMPLATE = (
    "Query: {query}\nDocument: {document}\n"
    "Is the document relevant to the query? Answer yes or no.\nAnswer:"
)
ALL_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
MLP_PROJECTIONS = ["gate_proj", "up_proj", "down_proj"]
SCHEDULES = ("constant", "constant_with_warmup", "linear", "cosine")
ADAPTER_KINDS = ("lora", "moe-lora")
RERANK_HEADS = ("yes_no", "mlp")

DEFAULTS: dict[str, Any] = {
    "adapter": {
        "kind": "lora",
        "r": 16,
        "alpha": 16,
        "dropout": 0.05,
        "target_modules": ALL_PROJECTIONS,
        # moe-lora only:
        "moe_modules": MLP_PROJECTIONS,
        "num_shared_experts": 1,
        "num_task_experts": 2,
        "top_k": 2,
        "router_init_std": 0.02,
        "aux_loss_weight": 0.01,
    },
    "embedding": {
        "query_template": DEFAULT_QUERY_TEMPLATE,
        "document_template": DEFAULT_DOCUMENT_TEMPLATE,
        "max_query_length": 64,
        "max_document_length": 256,
        "append_eos": True,
        "padding_side": "right",
        "temperature": 0.05,
        "matryoshka_dims": None,
        "batch_size": 8,
        "num_negatives": 3,
        # Gradient caching (GradCache): rows per forward pass; None: the whole batch at once.
        "mini_batch_size": None,
    },
    "reranking": {
        "template": DEFAULT_RERANK_TEMPLATE,
        "max_length": 384,
        "yes": "yes",
        "no": "no",
        "head": "yes_no",
        "mlp_hidden": 256,
        "ranknet_weight": 0.0,
        "batch_size": 4,
        "num_negatives": 3,
        # Gradient caching: (query, document) pairs per forward pass; None: all at once.
        "mini_batch_size": None,
    },
    "training": {
        "seed": 0,
        # A name of irflow.students.optim's registry (adamw8bit, adamw, lion, lion8bit) or a
        # mapping {name | class, weight_decay, betas, eps, kwargs} as for the students; the
        # learning rate is per stage.
        "optimizer": "adamw8bit",
        "max_grad_norm": 1.0,
        "gradient_checkpointing": False,
        # Batches of each task accumulated into one optimizer step (times the stage's ratio).
        "gradient_accumulation_steps": 1,
        "log_every": 1,
        # Global optimizer steps between resumable checkpoints (None: no checkpoints).
        "checkpoint_every_steps": None,
        "stages": [
            {"name": "embed", "tasks": ["embed"], "steps": 100, "lr": 1e-4},
            {"name": "joint", "tasks": ["embed", "rerank"], "steps": 100, "lr": 5e-5},
        ],
    },
}

STAGE_DEFAULTS: dict[str, Any] = {
    "lr": 1e-4,
    "schedule": "linear",
    "warmup_ratio": 0.1,
    "ratio": {"embed": 1, "rerank": 1},
    "lambda_rerank": 1.0,
    "pcgrad": False,
}


@dataclass(frozen=True)
class AdapterSpec:
    kind: str
    r: int
    alpha: float
    dropout: float
    target_modules: tuple[str, ...]
    moe_modules: tuple[str, ...]
    num_shared_experts: int
    num_task_experts: int
    top_k: int
    router_init_std: float
    aux_loss_weight: float


@dataclass(frozen=True)
class EmbeddingSpec:
    query_template: str
    document_template: str
    max_query_length: int
    max_document_length: int
    append_eos: bool
    padding_side: str
    temperature: float
    matryoshka_dims: tuple[int, ...] | None
    batch_size: int
    num_negatives: int
    mini_batch_size: int | None = None


@dataclass(frozen=True)
class RerankingSpec:
    template: str
    max_length: int
    yes: str
    no: str
    head: str
    mlp_hidden: int
    ranknet_weight: float
    batch_size: int
    num_negatives: int
    mini_batch_size: int | None = None


@dataclass(frozen=True)
class StageSpec:
    name: str
    tasks: tuple[str, ...]
    steps: int
    lr: float
    schedule: str
    warmup_ratio: float
    ratio: dict[str, int]
    lambda_rerank: float
    pcgrad: bool


@dataclass(frozen=True)
class TrainingSpec:
    seed: int
    optimizer: dict[str, Any]
    max_grad_norm: float | None
    gradient_checkpointing: bool
    log_every: int
    checkpoint_every_steps: int | None
    stages: tuple[StageSpec, ...]
    gradient_accumulation_steps: int = 1


@dataclass(frozen=True)
class DecoderSpec:
    adapter: AdapterSpec
    embedding: EmbeddingSpec
    reranking: RerankingSpec
    training: TrainingSpec
    raw: dict[str, Any] = field(compare=False, repr=False, default_factory=dict)

    @property
    def tasks(self) -> tuple[str, ...]:
        """The tasks any stage trains, in :data:`TASKS` order."""
        used = {t for s in self.training.stages for t in s.tasks}
        return tuple(t for t in TASKS if t in used)

    def as_dict(self) -> dict[str, Any]:
        """The complete spec with defaults filled in (what the artifacts record)."""
        return copy.deepcopy(self.raw)


def describe_defaults() -> dict[str, Any]:
    return copy.deepcopy(DEFAULTS)


class _Checker:
    def __init__(self, where: str):
        self.where = where

    def fail(self, key: str, message: str) -> InputError:
        return InputError(f"{self.where}: {key}: {message}")

    def section(self, spec: dict[str, Any], name: str, defaults: dict[str, Any]) -> dict[str, Any]:
        given = spec.get(name) or {}
        if not isinstance(given, dict):
            raise self.fail(name, f"expected a mapping, got {type(given).__name__}")
        unknown = sorted(set(given) - set(defaults))
        if unknown:
            raise self.fail(name, f"unknown keys {unknown}; known: {sorted(defaults)}")
        return {**copy.deepcopy(defaults), **copy.deepcopy(given)}

    def integer(self, key: str, value: Any, minimum: int = 1) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.fail(key, f"expected an integer >= {minimum}, got {value!r}")
        return value

    def number(
        self, key: str, value: Any, low: float = 0.0, high: float | None = None, open_low=False
    ) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(key, f"expected a number, got {value!r}")
        if value < low or (open_low and value == low) or (high is not None and value > high):
            bound = f"{'>' if open_low else '>='} {low}" + (f" and <= {high}" if high else "")
            raise self.fail(key, f"expected a number {bound}, got {value!r}")
        return float(value)

    def choice(self, key: str, value: Any, choices: tuple[str, ...]) -> str:
        if value not in choices:
            raise self.fail(key, f"{value!r} is not one of {list(choices)}")
        return value

    def boolean(self, key: str, value: Any) -> bool:
        if not isinstance(value, bool):
            raise self.fail(key, f"expected true or false, got {value!r}")
        return value

    def template(self, key: str, value: Any, placeholders: tuple[str, ...]) -> str:
        if not isinstance(value, str):
            raise self.fail(key, f"expected a string, got {value!r}")
        for placeholder in placeholders:
            if value.count(placeholder) != 1:
                raise self.fail(key, f"the template must contain {placeholder} exactly once")
        return value

    def mini_batch(self, section: str, value: Any, rows: int, what: str) -> int | None:
        """``<section>.mini_batch_size``: None (no gradient caching) or 1..``rows``."""
        key = f"{section}.mini_batch_size"
        if value is None:
            return None
        value = self.integer(key, value)
        if value > rows:
            raise self.fail(
                key,
                f"{value} is larger than {what} ({rows}): a mini-batch is a slice of the "
                f"batch; set it to null to embed the whole batch in one pass",
            )
        return value

    def names(self, key: str, value: Any) -> tuple[str, ...]:
        if not isinstance(value, list | tuple) or not value:
            raise self.fail(key, f"expected a non-empty list of names, got {value!r}")
        if not all(isinstance(v, str) and v for v in value) or len(set(value)) != len(value):
            raise self.fail(key, f"expected distinct non-empty names, got {value!r}")
        return tuple(value)


def _optimizer(check: _Checker, value: Any) -> dict[str, Any]:
    """The optimizer entry as a students ``optimizer`` mapping (weight decay 0 by default:
    adapters are small and start at zero), checked by the students' own parser."""
    from irflow.students.optim import OPTIMIZERS
    from irflow.students.spec import OptimizerSpec

    entry = {"name": value} if isinstance(value, str) else value
    if not isinstance(entry, dict):
        raise check.fail("training.optimizer", f"expected a name or a mapping, got {value!r}")
    if "lr" in entry:
        raise check.fail("training.optimizer.lr", "the learning rate is set per stage")
    entry = {"weight_decay": 0.0, **entry}
    try:
        parsed = OptimizerSpec.from_config(entry)
    except ValueError as err:
        raise check.fail("training.optimizer", str(err)) from None
    if parsed.class_path is None and parsed.name not in OPTIMIZERS:
        raise check.fail(
            "training.optimizer", f"{parsed.name!r} is not one of {sorted(OPTIMIZERS)}"
        )
    return entry


def parse_spec(spec: dict[str, Any] | None, where: str = "decoder spec") -> DecoderSpec:
    """Validate ``spec`` and fill in :data:`DEFAULTS`."""
    spec = dict(spec or {})
    check = _Checker(where)
    unknown = sorted(set(spec) - set(DEFAULTS))
    if unknown:
        raise check.fail("(top level)", f"unknown sections {unknown}; known: {sorted(DEFAULTS)}")

    a = check.section(spec, "adapter", DEFAULTS["adapter"])
    adapter = AdapterSpec(
        kind=check.choice("adapter.kind", a["kind"], ADAPTER_KINDS),
        r=check.integer("adapter.r", a["r"]),
        alpha=check.number("adapter.alpha", a["alpha"], open_low=True),
        dropout=check.number("adapter.dropout", a["dropout"], 0.0, 0.99),
        target_modules=check.names("adapter.target_modules", a["target_modules"]),
        moe_modules=check.names("adapter.moe_modules", a["moe_modules"]),
        num_shared_experts=check.integer("adapter.num_shared_experts", a["num_shared_experts"], 0),
        num_task_experts=check.integer("adapter.num_task_experts", a["num_task_experts"], 0),
        top_k=check.integer("adapter.top_k", a["top_k"]),
        router_init_std=check.number("adapter.router_init_std", a["router_init_std"]),
        aux_loss_weight=check.number("adapter.aux_loss_weight", a["aux_loss_weight"]),
    )
    if adapter.kind == "moe-lora":
        missing = sorted(set(adapter.moe_modules) - set(adapter.target_modules))
        if missing:
            raise check.fail("adapter.moe_modules", f"{missing} are not in adapter.target_modules")
        eligible = adapter.num_shared_experts + adapter.num_task_experts
        if eligible < 1:
            raise check.fail("adapter", "moe-lora needs num_shared_experts + num_task_experts >= 1")
        if adapter.top_k > eligible:
            raise check.fail(
                "adapter.top_k",
                f"{adapter.top_k} exceeds the {eligible} experts a task can use "
                f"(num_shared_experts + num_task_experts)",
            )

    e = check.section(spec, "embedding", DEFAULTS["embedding"])
    dims = e["matryoshka_dims"]
    if dims is not None:
        if not isinstance(dims, list | tuple) or not dims:
            raise check.fail("embedding.matryoshka_dims", f"expected a list of sizes, got {dims!r}")
        dims = tuple(check.integer("embedding.matryoshka_dims", d) for d in dims)
    embedding = EmbeddingSpec(
        query_template=check.template(
            "embedding.query_template", e["query_template"], ("{query}",)
        ),
        document_template=check.template(
            "embedding.document_template", e["document_template"], ("{document}",)
        ),
        max_query_length=check.integer("embedding.max_query_length", e["max_query_length"], 2),
        max_document_length=check.integer(
            "embedding.max_document_length", e["max_document_length"], 2
        ),
        append_eos=check.boolean("embedding.append_eos", e["append_eos"]),
        padding_side=check.choice("embedding.padding_side", e["padding_side"], ("left", "right")),
        temperature=check.number("embedding.temperature", e["temperature"], open_low=True),
        matryoshka_dims=dims,
        batch_size=check.integer("embedding.batch_size", e["batch_size"]),
        num_negatives=check.integer("embedding.num_negatives", e["num_negatives"], 0),
        mini_batch_size=check.mini_batch(
            "embedding", e["mini_batch_size"], e["batch_size"], "embedding.batch_size"
        ),
    )

    r = check.section(spec, "reranking", DEFAULTS["reranking"])
    for key in ("yes", "no"):
        if not isinstance(r[key], str) or not r[key].strip() or r[key] != r[key].strip():
            raise check.fail(
                f"reranking.{key}",
                f"expected the answer word without surrounding spaces, got {r[key]!r} (the "
                f"leading-space variant is chosen from the tokenizer)",
            )
    reranking = RerankingSpec(
        template=check.template("reranking.template", r["template"], ("{query}", "{document}")),
        max_length=check.integer("reranking.max_length", r["max_length"], 8),
        yes=r["yes"],
        no=r["no"],
        head=check.choice("reranking.head", r["head"], RERANK_HEADS),
        mlp_hidden=check.integer("reranking.mlp_hidden", r["mlp_hidden"]),
        ranknet_weight=check.number("reranking.ranknet_weight", r["ranknet_weight"]),
        batch_size=check.integer("reranking.batch_size", r["batch_size"]),
        num_negatives=check.integer("reranking.num_negatives", r["num_negatives"], 0),
        mini_batch_size=check.mini_batch(
            "reranking",
            r["mini_batch_size"],
            r["batch_size"] * (1 + r["num_negatives"]),
            "the pairs of a batch, reranking.batch_size x (1 + reranking.num_negatives)",
        ),
    )
    if reranking.yes == reranking.no:
        raise check.fail("reranking.no", "the yes and no answers must differ")

    t = check.section(spec, "training", DEFAULTS["training"])
    raw_stages = t["stages"]
    if not isinstance(raw_stages, list) or not raw_stages:
        raise check.fail("training.stages", "expected a non-empty list of stages")
    stages = []
    raw_out_stages = []
    for i, stage in enumerate(raw_stages):
        key = f"training.stages[{i}]"
        if not isinstance(stage, dict):
            raise check.fail(key, f"expected a mapping, got {stage!r}")
        allowed = {"name", "tasks", "steps", *STAGE_DEFAULTS}
        unknown = sorted(set(stage) - allowed)
        if unknown:
            raise check.fail(key, f"unknown keys {unknown}; known: {sorted(allowed)}")
        for required in ("name", "tasks", "steps"):
            if required not in stage:
                raise check.fail(key, f"missing {required!r}")
        s = {**copy.deepcopy(STAGE_DEFAULTS), **copy.deepcopy(stage)}
        tasks = check.names(f"{key}.tasks", s["tasks"])
        bad = sorted(set(tasks) - set(TASKS))
        if bad:
            raise check.fail(f"{key}.tasks", f"{bad} are not tasks; known: {list(TASKS)}")
        ratio = s["ratio"]
        if not isinstance(ratio, dict) or sorted(set(ratio) - set(TASKS)):
            raise check.fail(f"{key}.ratio", f"expected {{embed: n, rerank: m}}, got {ratio!r}")
        ratio = {task: check.integer(f"{key}.ratio.{task}", ratio.get(task, 1)) for task in TASKS}
        s["ratio"] = ratio
        stages.append(
            StageSpec(
                name=check.names(f"{key}.name", [s["name"]])[0],
                tasks=tuple(task for task in TASKS if task in tasks),
                steps=check.integer(f"{key}.steps", s["steps"]),
                lr=check.number(f"{key}.lr", s["lr"], open_low=True),
                schedule=check.choice(f"{key}.schedule", s["schedule"], SCHEDULES),
                warmup_ratio=check.number(f"{key}.warmup_ratio", s["warmup_ratio"], 0.0, 1.0),
                ratio=ratio,
                lambda_rerank=check.number(f"{key}.lambda_rerank", s["lambda_rerank"]),
                pcgrad=check.boolean(f"{key}.pcgrad", s["pcgrad"]),
            )
        )
        raw_out_stages.append(s)
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        raise check.fail("training.stages", f"stage names must be distinct, got {names}")
    max_norm = t["max_grad_norm"]
    training = TrainingSpec(
        seed=check.integer("training.seed", t["seed"], 0),
        optimizer=_optimizer(check, t["optimizer"]),
        max_grad_norm=None
        if max_norm is None
        else check.number("training.max_grad_norm", max_norm, open_low=True),
        gradient_checkpointing=check.boolean(
            "training.gradient_checkpointing", t["gradient_checkpointing"]
        ),
        gradient_accumulation_steps=check.integer(
            "training.gradient_accumulation_steps", t["gradient_accumulation_steps"]
        ),
        log_every=check.integer("training.log_every", t["log_every"]),
        checkpoint_every_steps=None
        if t["checkpoint_every_steps"] is None
        else check.integer("training.checkpoint_every_steps", t["checkpoint_every_steps"]),
        stages=tuple(stages),
    )
    t["stages"] = raw_out_stages
    raw = {"adapter": a, "embedding": e, "reranking": r, "training": t}
    return DecoderSpec(adapter, embedding, reranking, training, raw=raw)
