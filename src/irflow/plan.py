"""The resolved plan: the validated configuration turned into every named component of a run.

The rules never write ``config``; they ask a :class:`Plan` built once from it. The plan is the
one place that knows that a student is also a model (by its name), a reranker or a dense
retriever (as a study arm), and that an init is a model too; that an arm's untrained variant
starts from its init; which artifact path a component produces and which rule makes it.

Two kinds of settings are kept apart:

* **deciding keys** change what an artifact contains (a learning rate, a BM25 ``k1``, a model
  folder). Only these reach rule params, so only these make Snakemake rerun a job;
* **operational keys** do not (``description``, checkpoint intervals, YAML-anchor ``x-`` keys).
  Editing them plans nothing. :data:`NON_DECIDING` lists them per section.

Validation happens here too (:func:`validate`), on a copy: defaults from the JSON schema are
filled in the copy, never in the caller's dict, and errors are one line each naming the key
path, without echoing the refused value (a value may be a credential).

Everything here is plain Python: the module imports neither Snakemake nor torch, so it can be
unit-tested and used by a script (the report rebuilds the plan from the config files it is
given) as well as by ``rules/common.smk``.
"""

from __future__ import annotations

import copy
import difflib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from irflow.io import InputError

# Keys that never decide an artifact: editing them reruns nothing. "description" is dropped at
# every level of every entry; the others only inside the named section's entries.
NON_DECIDING_EVERYWHERE = frozenset({"description"})
NON_DECIDING = {
    "students.training": frozenset({"checkpoint_every_steps"}),
    "decoders.training": frozenset({"checkpoint_every_steps"}),
}
# Sections whose entries are named components (name -> entry).
NAMED_SECTIONS = (
    "datasets",
    "models",
    "retrievers",
    "rerankers",
    "training_sets",
    "miners",
    "teachers",
    "filters",
    "inits",
    "students",
    "studies",
    "decoders",
    "decoder_studies",
)
SCALES = ("smoke", "small", "paper")
# A decoder arm is evaluated as a dense retriever, a cosine reranker or a yes/no reranker.
DECODER_DEFAULT_DEPTH = {"dense": 1000, "cosine": 100, "yesno": 100}
DECODER_RUN_SUFFIX = {"cosine": ".cosine", "yesno": ".yesno"}
DECODER_SPEC_SECTIONS = ("adapter", "embedding", "reranking", "training")


class ConfigError(InputError):
    """A configuration mistake, reported before any job runs; the message names the key."""


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------
def load_schema(path: str | os.PathLike) -> dict:
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def _key_path(path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _describe_error(error) -> str:
    """One line for a schema error, naming the key and never the value the user wrote."""
    where = _key_path(error.absolute_path)
    kind = error.validator
    schema = error.schema if isinstance(error.schema, dict) else {}
    if kind == "additionalProperties" and isinstance(error.instance, dict):
        known = sorted(schema.get("properties", {}))
        patterns = list(schema.get("patternProperties", {}))
        extra = [
            k
            for k in error.instance
            if k not in known and not any(re.match(p, k) for p in patterns)
        ]
        parts = []
        for key in extra:
            near = difflib.get_close_matches(key, known, n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(near)}?" if near else ""
            parts.append(f"unknown key {key!r}{hint}")
        allowed = f" (known keys: {', '.join(known)})" if len(known) <= 12 else ""
        return f"config: {where}: {'; '.join(parts)}{allowed}"
    if kind == "required":
        missing = [k for k in error.validator_value if k not in (error.instance or {})]
        return f"config: {where}: missing required key {', '.join(map(repr, missing))}"
    if kind == "enum":
        return f"config: {where}: must be one of {list(error.validator_value)}"
    if kind == "type":
        return f"config: {where}: must be of type {error.validator_value}"
    if kind in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        return f"config: {where}: must satisfy {kind} {error.validator_value}"
    if kind in ("minItems", "maxItems", "minLength", "maxLength", "uniqueItems"):
        return f"config: {where}: must satisfy {kind} {error.validator_value}"
    if kind == "pattern":
        return f"config: {where}: does not match the pattern {error.validator_value}"
    if kind == "propertyNames":
        return (
            f"config: {where}: a name there is not allowed (names use letters, digits, '.', "
            f"'_' and '-', and start with a letter or digit)"
        )
    if kind in ("oneOf", "anyOf"):
        options = [
            sorted(o.get("required", [])) for o in error.validator_value if isinstance(o, dict)
        ]
        options = [o for o in options if o]
        hint = f" (set exactly one of {options})" if options else ""
        return f"config: {where}: matches none of the allowed forms{hint}"
    if kind == "not" and isinstance(error.validator_value, dict):
        forbidden = error.validator_value
        if "required" in forbidden:
            keys = ", ".join(forbidden["required"])
            return f"config: {where}: may not set {keys} together"
        options = [k for o in forbidden.get("anyOf", []) for k in o.get("required", [])]
        if options:
            return f"config: {where}: may not set {', '.join(options)} here"
    return f"config: {where}: fails the schema's {kind!r} rule"


def validate(config: Mapping, schema: Mapping) -> dict:
    """A validated deep copy of ``config`` with the schema's defaults filled in.

    Raises :class:`ConfigError` listing each problem on one line (at most 10), key path first.
    """
    import jsonschema

    base = jsonschema.validators.validator_for(schema)
    validate_properties = base.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, subschema):
        if isinstance(instance, dict):
            for name, prop in properties.items():
                if isinstance(prop, dict) and "default" in prop:
                    instance.setdefault(name, copy.deepcopy(prop["default"]))
        yield from validate_properties(validator, properties, instance, subschema)

    validator_class = jsonschema.validators.extend(base, {"properties": set_defaults})
    resolved = copy.deepcopy(dict(config))
    errors = sorted(
        validator_class(schema).iter_errors(resolved),
        key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))),
    )
    if errors:
        lines = list(dict.fromkeys(_describe_error(e) for e in errors))
        more = f"\n(and {len(lines) - 10} more)" if len(lines) > 10 else ""
        raise ConfigError("\n".join(lines[:10]) + more)
    return resolved


def check_results_dir(value: str, workdir: str | os.PathLike) -> str:
    """The results folder, normalised; refuses '', '/', and the repository root itself."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError("config: results_dir: must be a non-empty path")
    normal = os.path.normpath(value)
    resolved = Path(workdir, normal).resolve()
    if resolved == Path(resolved.anchor):
        raise ConfigError("config: results_dir: must not be the file-system root")
    if resolved == Path(workdir).resolve():
        raise ConfigError(
            "config: results_dir: must not be the repository root itself (use e.g. 'results')"
        )
    return normal


def deciding(entry: Any, section: str | None = None) -> Any:
    """``entry`` without its operational keys (see :data:`NON_DECIDING`), as a new value with
    its keys sorted: reordering keys in the YAML decides nothing either, and Snakemake compares
    params by their printed form."""
    if isinstance(entry, Mapping):
        drop = NON_DECIDING_EVERYWHERE | NON_DECIDING.get(section or "", frozenset())
        return {
            k: deciding(entry[k], f"{section}.{k}" if section else None)
            for k in sorted(entry, key=str)
            if k not in drop and not str(k).startswith("x-")
        }
    if isinstance(entry, list | tuple):
        return [deciding(v) for v in entry]
    return copy.deepcopy(entry)


# ---------------------------------------------------------------------------------------------
# The plan
# ---------------------------------------------------------------------------------------------
class Plan:
    """Every named component of a validated config, resolved; nothing here writes the config.

    Accessors return fresh copies, so no caller can change the plan (or the config) by
    mutating what it was given.
    """

    def __init__(self, config: Mapping, workdir: str | os.PathLike = "."):
        self._config = copy.deepcopy(dict(config))
        self.workdir = Path(workdir)
        self.results = check_results_dir(self._config.get("results_dir", "results"), workdir)
        self.seed = self._config.get("seed", 42)
        self.scale = self._config.get("scale")
        for section in NAMED_SECTIONS:
            self._config.setdefault(section, {})
        self._config.setdefault("baselines", [])
        self._config.setdefault("training_data", [])
        self._config.setdefault("expectations", [])
        self._models: dict[str, dict] = copy.deepcopy(self._config["models"])
        self._rerankers: dict[str, dict] = copy.deepcopy(self._config["rerankers"])
        self._retrievers: dict[str, dict] = copy.deepcopy(self._config["retrievers"])
        self._produced: dict[str, tuple[str, str]] = {}  # model name -> (path, rule)
        self._origin: dict[tuple[str, str], str] = {}
        self._student_specs: dict[str, Any] = {}
        self._replicates: dict[str, list[str]] = {}  # replicated student -> its replicates
        self._replicate_seed: dict[str, int] = {}  # replicate -> its seed
        self._expand_seed_replicates()
        self._register_produced_models()
        self._register_study_models()
        self._check_references()
        self._check_training_data("students")
        self._parse_student_training()
        self._check_decoders()
        self._decoder_depths = self._check_decoder_studies()

    # -- construction -----------------------------------------------------------------------
    @classmethod
    def from_config(
        cls, config: Mapping, schema: Mapping | str | os.PathLike, workdir: str | os.PathLike = "."
    ) -> Plan:
        if not isinstance(schema, Mapping):
            schema = load_schema(schema)
        return cls(validate(config, schema), workdir)

    def section(self, name: str) -> dict:
        """A copy of a configured section as validated (defaults filled), produced names not
        included; use :meth:`model`, :meth:`reranker`, :meth:`retriever` for those."""
        return copy.deepcopy(self._config.get(name, {}))

    def get(self, key: str, default: Any = None) -> Any:
        return copy.deepcopy(self._config.get(key, default))

    def entry(self, section: str, name: str) -> dict:
        """A copy of one named entry (produced models, rerankers and retrievers included)."""
        table = {
            "models": self._models,
            "rerankers": self._rerankers,
            "retrievers": self._retrievers,
        }.get(section, self._config.get(section, {}))
        if name not in table:
            raise ConfigError(
                f"config: no {section[:-1]} named {name!r} (known: {self._known(section)})"
            )
        return copy.deepcopy(table[name])

    def names(self, section: str, kind: str | None = None) -> list[str]:
        table = {
            "models": self._models,
            "rerankers": self._rerankers,
            "retrievers": self._retrievers,
        }.get(section, self._config.get(section, {}))
        return [n for n, e in table.items() if kind is None or e.get("kind") == kind]

    def model(self, name: str) -> dict:
        """The deciding settings of a model as a ModelRef config entry ({name, path|hf_id, ...})."""
        return {"name": name, **deciding(self.entry("models", name))}

    def reranker(self, name: str) -> dict:
        return deciding(self.entry("rerankers", name))

    def retriever(self, name: str) -> dict:
        return deciding(self.entry("retrievers", name))

    def produced_model(self, name: str) -> tuple[str, str] | None:
        """(artifact path, producing rule) of an init or student; None for a configured model."""
        return self._produced.get(name)

    def unpinned_models(self) -> list[tuple[str, str, str | None]]:
        """(name, hf_id, revision) of every configured hub model whose ``revision`` is not a
        40-hex commit: none, or a branch or tag such as ``main``, which moves, so the weights
        (and any remote code) a run loads are not fixed by the config."""
        return [
            (name, entry["hf_id"], entry.get("revision"))
            for name, entry in self._config["models"].items()
            if entry.get("hf_id") and not re.fullmatch(r"[0-9a-f]{40}", str(entry.get("revision")))
        ]

    def model_files(self, name: str) -> list[str]:
        """What a job that loads model ``name`` takes as input: the producing rule's folder for
        a produced model; every file of a configured ``path:`` folder (so editing a weight or a
        pooling file reruns what used it, and each job's record holds their digests); nothing
        for a hub id (its pinned ``revision`` is a deciding key instead)."""
        produced = self.produced_model(name)
        if produced:
            return [produced[0]]
        path = self._models.get(name, {}).get("path")
        return self.folder_files(path) if path else []

    def folder_files(self, path: str) -> list[str]:
        """Every file below a model folder (hidden ones aside), as paths under ``path``."""
        folder = Path(path)
        if not folder.is_absolute():
            folder = self.workdir / folder
        if not folder.is_dir():
            return []  # the job names the missing folder and the key
        return sorted(
            os.path.join(path, str(p.relative_to(folder)))
            for p in folder.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        )

    # -- registries -------------------------------------------------------------------------
    def _known(self, section: str) -> str:
        return ", ".join(self.names(section)) or "(none configured)"

    def check_reference(self, where: str, section: str, name: str) -> None:
        table = {
            "models": self._models,
            "rerankers": self._rerankers,
            "retrievers": self._retrievers,
        }.get(section, self._config.get(section, {}))
        if name not in table and name in self._replicates:
            raise ConfigError(
                f"config: {where} refers to {name!r}, which is trained once per seed "
                f"(students.{name}.seeds); name one replicate: {', '.join(self._replicates[name])}"
            )
        if name not in table:
            raise ConfigError(
                f"config: {where} refers to {section[:-1]} {name!r}, which is not defined "
                f"under '{section}:' (known: {self._known(section)})"
            )

    def _model_settings(self, name: str) -> dict:
        base = self._models[name]
        return {k: base[k] for k in ("max_length", "batch_size", "query_prompt") if k in base}

    def _register(self, table: dict, section: str, name: str, entry: dict, origin: str) -> None:
        if name in table:
            raise ConfigError(
                f"config: {origin} defines the {section[:-1]} name {name!r}, which is already "
                f"{self._origin.get((section, name), f'configured under {section!r}')}; "
                f"rename one of them"
            )
        table[name] = entry
        self._origin[(section, name)] = f"defined by {origin}"

    def _expand_seed_replicates(self) -> None:
        """A student with ``seeds: [..]`` (its own, or its study's) becomes one student per seed,
        ``<name>.seed<k>`` with ``training.seed: k``, sharing every upstream artifact; the name
        itself is then no model (a reference to it names the replicates)."""
        students = self._config["students"]
        wanted: dict[str, tuple[list[int], str]] = {}
        for name, spec in students.items():
            if spec.get("seeds"):
                wanted[name] = (list(spec["seeds"]), f"students.{name}.seeds")
        for study, spec in self._config["studies"].items():
            if not spec.get("seeds"):
                continue
            for arm in spec["arms"]:
                self.check_reference(f"studies.{study}.arms", "students", arm)
                seeds, origin = list(spec["seeds"]), f"studies.{study}.seeds"
                if arm in wanted and wanted[arm][0] != seeds:
                    raise ConfigError(
                        f"config: {origin} {seeds} disagrees with {wanted[arm][1]} "
                        f"{wanted[arm][0]} for arm {arm!r}; give both the same seeds"
                    )
                wanted[arm] = (seeds, origin)
        for name, (seeds, origin) in wanted.items():
            spec = students.pop(name)
            spec.pop("seeds", None)
            if "seed" in (spec.get("training") or {}):
                raise ConfigError(
                    f"config: students.{name}.training.seed and {origin} both set the seed; "
                    f"drop one"
                )
            replicates = []
            for seed in seeds:
                replicate = f"{name}.seed{seed}"
                if replicate in students or replicate in self._config["models"]:
                    raise ConfigError(
                        f"config: {origin} makes student {replicate!r}, a name already "
                        f"configured; rename it"
                    )
                entry = copy.deepcopy(spec)
                entry["training"] = {**entry.get("training", {}), "seed": seed}
                students[replicate] = entry
                self._replicate_seed[replicate] = seed
                replicates.append(replicate)
            self._replicates[name] = replicates

    def replicates(self, student: str) -> list[str]:
        """The students a study arm trains: its seed replicates, or itself."""
        return list(self._replicates.get(student, [student]))

    def replicate_seed(self, student: str) -> int | None:
        """The seed of a seed replicate; None for a student trained once."""
        return self._replicate_seed.get(student)

    def _register_produced_models(self) -> None:
        for name, spec in self._config["inits"].items():
            self.check_reference(f"inits.{name}.from", "models", spec["from"])
            path = f"{self.results}/inits/{name}/model"
            entry = {"path": path, **self._model_settings(spec["from"])}
            self._register(self._models, "models", name, entry, f"inits.{name}")
            self._produced[name] = (path, "init_student")
        pending = dict(self._config["students"])
        while pending:  # students may start from other students: dependency order
            ready = [n for n, s in pending.items() if s["init"] not in pending]
            if not ready:
                raise ConfigError(
                    f"config: students {sorted(pending)} initialise from each other in a cycle"
                )
            for name in ready:
                spec = pending.pop(name)
                self.check_reference(f"students.{name}.init", "models", spec["init"])
                settings = self._model_settings(spec["init"])
                if "max_length" in spec["training"]:
                    settings["max_length"] = spec["training"]["max_length"]
                settings["batch_size"] = spec["eval_batch_size"]
                path = f"{self.results}/students/{name}/model"
                self._register(
                    self._models, "models", name, {"path": path, **settings}, f"students.{name}"
                )
                self._produced[name] = (path, "train_student")
                if spec["kind"] == "cross-encoder":
                    untrained = f"{self.results}/students/{name}/untrained"
                    self._register(
                        self._models,
                        "models",
                        f"{name}.untrained",
                        {"path": untrained, **settings},
                        f"students.{name}",
                    )
                    self._produced[f"{name}.untrained"] = (untrained, "untrained_student")

    def study_variants(self, study: str) -> list[tuple[str, str, str, dict, int | None]]:
        """(arm, name, section, entry, seed) of every model a study evaluates, in table order.

        Cross-encoder arms rerank each evaluated dataset's candidates (rerankers); bi-encoder
        arms retrieve from the full corpus (dense retrievers), also with their embeddings cut
        to each Matryoshka dim. An untrained variant is the model training starts from: for a
        bi-encoder its init itself (arms sharing an init share its embeddings; one row however
        many seeds), for a cross-encoder the init with its freshly initialised (seeded) head.
        An arm trained once per seed gives one row per seed replicate (``seed`` set; None for
        an arm trained once).
        """
        spec = self._config["studies"][study]
        depth = spec["evaluate"][0]["depth"]
        rows = []
        for arm in spec["arms"]:
            if arm not in self._replicates:
                self.check_reference(f"studies.{study}.arms", "students", arm)
            replicates = self.replicates(arm)
            student = self._config["students"][replicates[0]]
            if student["kind"] == "cross-encoder":
                base = {"kind": "cross-encoder", "depth": depth}
                for name in replicates:
                    seed = self.replicate_seed(name)
                    rows.append((arm, name, "rerankers", {**base, "model": name}, seed))
                if spec["untrained"]:
                    for name in replicates:
                        entry = {**base, "model": f"{name}.untrained"}
                        seed = self.replicate_seed(name)
                        rows.append((arm, f"{name}.untrained", "rerankers", entry, seed))
            else:
                base = {"kind": "dense", "depth": depth}
                for name in replicates:
                    seed = self.replicate_seed(name)
                    rows.append((arm, name, "retrievers", {**base, "model": name}, seed))
                for dim in spec.get("matryoshka_dims", []):
                    for name in replicates:
                        entry = {**base, "model": name, "dim": dim}
                        seed = self.replicate_seed(name)
                        rows.append((arm, f"{name}.dim{dim}", "retrievers", entry, seed))
                if spec["untrained"]:
                    entry = {**base, "model": student["init"]}
                    rows.append((arm, f"{arm}.untrained", "retrievers", entry, None))
        return rows

    def _register_study_models(self) -> None:
        for study, spec in self._config["studies"].items():
            for i, evaluation in enumerate(spec["evaluate"]):
                where = f"studies.{study}.evaluate[{i}]"
                self.check_reference(f"{where}.dataset", "datasets", evaluation["dataset"])
                self.check_reference(f"{where}.retriever", "retrievers", evaluation["retriever"])
            depths = {e["depth"] for e in spec["evaluate"]}
            if len(depths) > 1:
                raise ConfigError(
                    f"config: studies.{study}.evaluate asks for depths {sorted(depths)}; a "
                    f"study evaluates every dataset to one depth"
                )
            self._check_baseline("studies", study, spec)
            for _, name, section, entry, _ in self.study_variants(study):
                table = self._rerankers if section == "rerankers" else self._retrievers
                existing = table.get(name)
                if existing is None:
                    table[name] = entry
                    self._origin[(section, name)] = f"evaluated by studies.{study}"
                elif existing != entry:
                    raise ConfigError(
                        f"config: studies.{study} evaluates {name!r} as {entry}, but "
                        f"'{section}:' already has {name!r} as {existing} (another study, or "
                        f"configured); give the studies one depth or rename"
                    )

    @staticmethod
    def _check_baseline(section: str, study: str, spec: Mapping) -> None:
        if "baseline" in spec and spec["baseline"] not in spec["arms"]:
            raise ConfigError(
                f"config: {section}.{study}.baseline {spec['baseline']!r} is not one of its "
                f"arms {spec['arms']}"
            )

    def _check_references(self) -> None:
        cfg = self._config
        for name, spec in cfg["retrievers"].items():
            if spec["kind"] == "dense":
                self.check_reference(f"retrievers.{name}.model", "models", spec["model"])
        for name, spec in cfg["rerankers"].items():
            self.check_reference(f"rerankers.{name}.model", "models", spec["model"])
        for i, baseline in enumerate(cfg["baselines"]):
            self.check_reference(f"baselines[{i}].dataset", "datasets", baseline["dataset"])
            self.check_reference(f"baselines[{i}].retriever", "retrievers", baseline["retriever"])
            for reranker in baseline.get("rerankers", []):
                self.check_reference(f"baselines[{i}].rerankers", "rerankers", reranker)
            retriever = self._retrievers[baseline["retriever"]]
            dataset = cfg["datasets"][baseline["dataset"]]
            if retriever["kind"] == "given" and not (
                dataset.get("candidates") or dataset.get("ir_datasets")
            ):
                raise ConfigError(
                    f"config: baselines[{i}] uses the given candidates of dataset "
                    f"{baseline['dataset']!r}, but that dataset sets no 'candidates:' file"
                )
        for name, spec in cfg["training_sets"].items():
            self.check_reference(f"training_sets.{name}.dataset", "datasets", spec["dataset"])
            for held in spec["held_out"]:
                self.check_reference(f"training_sets.{name}.held_out", "datasets", held)
        for name, spec in cfg["miners"].items():
            self.check_reference(f"miners.{name}.retriever", "retrievers", spec["retriever"])
        for name, spec in cfg["teachers"].items():
            self.check_reference(f"teachers.{name}.model", "models", spec["model"])
        for i, build in enumerate(cfg["training_data"]):
            self.check_reference(
                f"training_data[{i}].training_set", "training_sets", build["training_set"]
            )
            for section in ("miners", "teachers", "filters"):
                for name in build.get(section, []):
                    self.check_reference(f"training_data[{i}].{section}", section, name)
            if build.get("filters") and not build.get("teachers"):
                raise ConfigError(
                    f"config: training_data[{i}] lists filters but no teachers: consistency "
                    f"filters work on teacher scores"
                )

    def _check_training_data(self, section: str) -> None:
        """A student's (or decoder arm's) data must be an artifact a training_data entry builds."""
        built = set()
        for build in self._config["training_data"]:
            for miner in build["miners"]:
                for teacher in build.get("teachers", []):
                    built.add((build["training_set"], miner, teacher, None))
                    for filt in build.get("filters", []):
                        built.add((build["training_set"], miner, teacher, filt))
        for name, spec in self._config[section].items():
            data = spec["data"]
            for key in ("training_set", "miner", "teacher", "filter"):
                if data.get(key) is not None:
                    self.check_reference(f"{section}.{name}.data.{key}", f"{key}s", data[key])
            key = (data["training_set"], data["miner"], data["teacher"], data.get("filter"))
            if key not in built:
                raise ConfigError(
                    f"config: {section}.{name}.data asks for "
                    f"{self.training_data_path(section, name)}, which no 'training_data:' "
                    f"entry builds (rules merge_teacher_scores / consistency_filter produce it);"
                    f" add training_set {key[0]!r} with miner {key[1]!r}, teacher {key[2]!r}"
                    + (f" and filter {key[3]!r}" if key[3] else "")
                    + " there"
                )

    # -- decoder arms and decoder studies -------------------------------------------------
    def decoder_spec(self, arm: str) -> dict:
        """The arm's irflow.decoder spec dict (deciding keys; seed defaults to the config's)."""
        entry = deciding(self._config["decoders"][arm], "decoders")
        spec = {k: entry[k] for k in DECODER_SPEC_SECTIONS if k in entry}
        spec["training"] = {"seed": self.seed, **(spec.get("training") or {})}
        return spec

    def parsed_decoder_spec(self, arm: str):
        from irflow.decoder.spec import parse_spec

        spec = self.decoder_spec(arm)
        operational = self.checkpoint_every_steps("decoders", arm)
        spec["training"]["checkpoint_every_steps"] = operational or None
        try:
            return parse_spec(spec, where=f"config: decoders.{arm}")
        except InputError as err:
            raise ConfigError(str(err)) from None

    def _check_decoders(self) -> None:
        for arm, spec in self._config["decoders"].items():
            for section in ("models", "retrievers", "rerankers"):
                if arm in self.names(section):
                    raise ConfigError(
                        f"config: decoders.{arm}: the name is also a {section[:-1]} under "
                        f"'{section}:' (they would share run and embedding paths); rename one"
                    )
            if isinstance(spec["base"], str):
                self.check_reference(f"decoders.{arm}.base", "models", spec["base"])
            self.parsed_decoder_spec(arm)
        self._check_training_data("decoders")

    def decoder_study_rows(self, study: str) -> list[tuple]:
        """(arm, variant name, dataset, run, kind, retriever, depth) of a decoder study, in
        table order: per evaluation, every arm. The variant name is <arm>.<kind>, so the study
        table's variant column is the evaluation kind (irflow.studies.variant_of)."""
        spec = self._config["decoder_studies"][study]
        rows = []
        for evaluation in spec["evaluate"]:
            kind = evaluation["kind"]
            depth = evaluation.get("depth", DECODER_DEFAULT_DEPTH[kind])
            retriever = evaluation.get("retriever")
            for arm in spec["arms"]:
                run = (
                    f"first-stage/{arm}"
                    if kind == "dense"
                    else f"rerank/{retriever}/{arm}{DECODER_RUN_SUFFIX[kind]}"
                )
                rows.append(
                    (arm, f"{arm}.{kind}", evaluation["dataset"], run, kind, retriever, depth)
                )
        return rows

    def _check_decoder_studies(self) -> dict[tuple[str, str], int]:
        """Arms, datasets and retrievers exist; one depth per run file (its path has none)."""
        depths: dict[tuple[str, str], int] = {}
        for study, spec in self._config["decoder_studies"].items():
            if study in self._config["studies"]:
                raise ConfigError(
                    f"config: decoder_studies.{study}: 'studies:' has a study of that name too "
                    f"(both write results/tables/studies/{study}.tsv); rename one"
                )
            for arm in spec["arms"]:
                self.check_reference(f"decoder_studies.{study}.arms", "decoders", arm)
            self._check_baseline("decoder_studies", study, spec)
            for i, evaluation in enumerate(spec["evaluate"]):
                where = f"decoder_studies.{study}.evaluate[{i}]"
                self.check_reference(f"{where}.dataset", "datasets", evaluation["dataset"])
                if "retriever" in evaluation:
                    self.check_reference(
                        f"{where}.retriever", "retrievers", evaluation["retriever"]
                    )
            for _, _, dataset, run, _, _, depth in self.decoder_study_rows(study):
                if depths.setdefault((dataset, run), depth) != depth:
                    raise ConfigError(
                        f"config: decoder_studies.{study} evaluates {run} on {dataset} at "
                        f"depth {depth}, but another evaluation asks for depth "
                        f"{depths[(dataset, run)]} (the run file is the same); use one depth"
                    )
        return depths

    def decoder_depth(self, kind: str, dataset: str, arm: str, retriever: str | None) -> int:
        run = (
            f"first-stage/{arm}"
            if kind == "dense"
            else f"rerank/{retriever}/{arm}{DECODER_RUN_SUFFIX[kind]}"
        )
        return self._decoder_depths.get((dataset, run), DECODER_DEFAULT_DEPTH[kind])

    def _parse_student_training(self) -> None:
        """Every student's training spec is parsed now, so a typo fails the dry run."""
        from irflow.students.spec import StudentTrainingSpec

        for name in self._config["students"]:
            try:
                self._student_specs[name] = StudentTrainingSpec.from_config(
                    self.student_training(name, operational=True)
                )
            except ValueError as err:
                raise ConfigError(f"config: students.{name}.training.{err}") from None

    # -- students, training data, studies -----------------------------------------------------
    def training_data_path(self, section: str, name: str) -> str:
        data = self._config[section][name]["data"]
        base = f"{data['training_set']}/{data['miner']}/{data['teacher']}"
        if data.get("filter"):
            return f"{self.results}/filtered/{base}/{data['filter']}.parquet"
        return f"{self.results}/teacher-scores/{base}.parquet"

    def training_inputs(self, section: str, name: str) -> dict[str, str]:
        """The files a student (section 'students') or a decoder arm ('decoders') trains on:
        its training-data artifact, the training set's queries and its corpus."""
        train = self._config[section][name]["data"]["training_set"]
        dataset = self._config["training_sets"][train]["dataset"]
        return {
            "data": self.training_data_path(section, name),
            "queries": f"{self.results}/training-data/{train}/queries.parquet",
            "corpus": f"{self.results}/data/corpora/{self.corpus_of(dataset)}/corpus.parquet",
        }

    def checkpoint_folder(self, section: str, name: str) -> str:
        """Where a training job keeps resumable checkpoints: outside its declared outputs, so a
        killed job's checkpoints survive (Snakemake deletes a failed job's outputs)."""
        return f"{self.results}/checkpoints/{section}/{name}"

    def student_training(self, name: str, operational: bool = False) -> dict:
        """The student's training dict with its seed; ``operational`` keeps checkpoint keys."""
        spec = self._config["students"][name]
        training = copy.deepcopy(spec["training"])
        training.setdefault("seed", self.seed)
        self._teacher_temperature(spec, training)
        return training if operational else deciding(training, "students.training")

    def _teacher_temperature(self, spec: dict, training: dict) -> None:
        """A kd objective without ``temperature`` gets the default for its teacher's score
        kind (0.05 for a bi-encoder's cosines, 1 for logits), written into ``training``: the
        temperature a student trains at is then in its deciding params."""
        from irflow.students.losses import OBJECTIVES
        from irflow.students.spec import default_kd_temperature

        objective = training.get("objective")
        if not isinstance(objective, dict) or objective.get("temperature") is not None:
            return
        known = OBJECTIVES.get(spec.get("kind"), {}).get(objective.get("name"))
        if known is None or not (known.uses_teacher and "temperature" in known.params):
            return
        teacher = self._config["teachers"].get((spec.get("data") or {}).get("teacher"))
        if teacher is None:
            return  # reported by the reference checks
        from irflow.training_data.artifacts import SCORE_KINDS  # pyarrow: only when needed

        score_kind = SCORE_KINDS.get(teacher["kind"])
        training["objective"] = {**objective, "temperature": default_kd_temperature(score_kind)}

    def student_params(self, name: str) -> dict:
        """Everything that decides a student's weights, and nothing else."""
        spec = self._config["students"][name]
        training = self.student_training(name)
        return {
            "kind": spec["kind"],
            "init": self.model(spec["init"]),
            "data": deciding(spec["data"]),
            "training": training,
            "seed": training["seed"],
        }

    def checkpoint_every_steps(self, section: str, name: str) -> int:
        """The operational checkpoint interval of a student or decoder arm (0: none)."""
        value = (self._config[section][name].get("training") or {}).get("checkpoint_every_steps")
        return int(value or 0)

    def study_run_path(self, section: str, name: str, retriever: str) -> str:
        if section == "rerankers":
            return f"rerank/{retriever}/{name}"
        return f"first-stage/{name}"

    def study_runs(self, study: str) -> list[tuple[str, str, str, str]]:
        """(arm, variant name, dataset, run) rows of a study table (students' or decoder
        study), in table order."""
        return [row[:4] for row in self.study_table_rows(study)]

    def study_table_rows(self, study: str) -> list[tuple[str, str, str, str, int | None]]:
        """(arm, variant name, dataset, run, seed) rows of a study table: ``seed`` is the
        replicate's for an arm trained once per seed, else None."""
        if study in self._config["decoder_studies"]:
            return [(*row[:4], None) for row in self.decoder_study_rows(study)]
        rows = []
        for evaluation in self._config["studies"][study]["evaluate"]:
            for arm, name, section, _, seed in self.study_variants(study):
                run = self.study_run_path(section, name, evaluation["retriever"])
                rows.append((arm, name, evaluation["dataset"], run, seed))
        return rows

    def baseline_runs(self) -> list[tuple[str, str]]:
        """(dataset, run) pairs of every configured baseline; run is the path below the dataset."""
        pairs = []
        for baseline in self._config["baselines"]:
            pairs.append((baseline["dataset"], f"first-stage/{baseline['retriever']}"))
            for reranker in baseline.get("rerankers", []):
                pairs.append((baseline["dataset"], f"rerank/{baseline['retriever']}/{reranker}"))
        return list(dict.fromkeys(pairs))

    # -- reproduction: rerun vs reference, packages ------------------------------------------
    def reference(self) -> dict | None:
        """The ``reference:`` setting as {runs, tolerance, measures, pairs}; None when unset."""
        value = self._config.get("reference")
        if value is None:
            return None
        if isinstance(value, str):
            value = {"runs": value}
        return {
            "runs": value["runs"],
            "tolerance": value.get("tolerance", 0.01),
            "measures": list(value.get("measures") or ["nDCG@10", "RR@10", "AP"]),
            "pairs": [
                (p["dataset"], p["baseline"].strip("/"), p["advanced"].strip("/"))
                for p in value.get("pairs") or []
            ]
            or self.effect_pairs(),
        }

    def effect_pairs(self) -> list[tuple[str, str, str]]:
        """(dataset, baseline run, advanced run): each baseline's first stage and its rerankers,
        and each study's baseline arm and its other arms (same dataset and variant, arms trained
        once; seed replicates are compared run by run, not paired)."""
        pairs = []
        for baseline in self._config["baselines"]:
            first = f"first-stage/{baseline['retriever']}"
            for reranker in baseline.get("rerankers", []):
                run = f"rerank/{baseline['retriever']}/{reranker}"
                pairs.append((baseline["dataset"], first, run))
        for study in self._config["studies"]:
            spec = self._config["studies"][study]
            base = spec.get("baseline") or spec["arms"][0]
            rows = [r for r in self.study_table_rows(study) if r[4] is None]
            variants: dict[tuple[str, str], dict[str, str]] = {}
            for arm, name, dataset, run, _ in rows:
                variants.setdefault((dataset, name[len(arm) :]), {})[arm] = run
            for (dataset, suffix), runs in variants.items():
                if suffix == ".untrained" or base not in runs:
                    continue
                pairs += [(dataset, runs[base], r) for a, r in runs.items() if a != base]
        return list(dict.fromkeys(pairs))

    # -- datasets ---------------------------------------------------------------------------
    def corpus_of(self, dataset: str) -> str:
        return self._config["datasets"][dataset].get("corpus", dataset)

    def corpus_source(self, corpus: str) -> dict:
        """The deciding entry a corpus is read from; datasets sharing a corpus must agree."""
        members = sorted(n for n in self._config["datasets"] if self.corpus_of(n) == corpus)
        if not members:
            raise ConfigError(
                f"config: no dataset has corpus {corpus!r} (known datasets: "
                f"{self._known('datasets')})"
            )
        folders = {self._config["datasets"][m].get("beir_folder") for m in members}
        if len(folders) > 1:
            raise ConfigError(
                f"config: datasets {members} share corpus {corpus!r} but read it from different "
                f"sources ({sorted(map(str, folders))}); give them different 'corpus:' names"
            )
        return {"name": members[0], **deciding(self._config["datasets"][members[0]])}

    def dataset(self, name: str) -> dict:
        return {"name": name, **deciding(self.entry("datasets", name))}

    # -- the resolved plan as data ----------------------------------------------------------
    def describe(self) -> dict:
        """Every component with its kind, deciding settings and the artifacts it produces
        (path -> rule): the "resolved plan" section of the report."""
        r = self.results
        out: dict[str, dict] = {}
        for name, spec in self._config["datasets"].items():
            out[f"datasets.{name}"] = {
                "kind": "dataset",
                "settings": deciding(spec),
                "artifacts": {
                    f"{r}/data/datasets/{name}/queries.parquet": "prepare_topics",
                    f"{r}/data/datasets/{name}/qrels.trec": "prepare_topics",
                    f"{r}/data/corpora/{self.corpus_of(name)}/corpus.parquet": "prepare_corpus",
                },
            }
        for name, spec in self._models.items():
            produced = self._produced.get(name)
            out[f"models.{name}"] = {
                "kind": "produced model" if produced else "model",
                "settings": deciding(spec),
                "artifacts": {produced[0]: produced[1]} if produced else {},
            }
        for section, table in (("retrievers", self._retrievers), ("rerankers", self._rerankers)):
            for name, spec in table.items():
                out[f"{section}.{name}"] = {
                    "kind": spec.get("kind"),
                    "settings": deciding(spec),
                    "origin": self._origin.get((section, name), "configured"),
                    "artifacts": {},
                }
        for name, spec in self._config["training_sets"].items():
            out[f"training_sets.{name}"] = {
                "kind": "training set",
                "settings": deciding(spec),
                "artifacts": {
                    f"{r}/training-data/{name}/queries.parquet": "select_training_queries"
                },
            }
        for section in ("miners", "teachers", "filters"):
            for name, spec in self._config[section].items():
                out[f"{section}.{name}"] = {"kind": section[:-1], "settings": deciding(spec)}
        for name in self._config["students"]:
            out[f"students.{name}"] = {
                "kind": self._config["students"][name]["kind"] + " student",
                "settings": self.student_params(name),
                "artifacts": {
                    f"{r}/students/{name}/model": "train_student",
                    f"{r}/students/{name}/curves.jsonl": "train_student",
                },
            }
        for name, spec in self._config["decoders"].items():
            out[f"decoders.{name}"] = {
                "kind": "decoder arm",
                "settings": deciding(spec, "decoders"),
                "artifacts": {f"{r}/decoders/{name}/model": "train_unified"},
            }
        for section in ("studies", "decoder_studies"):
            for name, spec in self._config[section].items():
                out[f"{section}.{name}"] = {
                    "kind": "study",
                    "settings": deciding(spec),
                    "artifacts": {f"{r}/tables/studies/{name}.tsv": "study_table"},
                }
        return {"results_dir": r, "seed": self.seed, "scale": self.scale, "components": out}


def read_config_files(paths: list[str | os.PathLike], overrides: Mapping | None = None) -> dict:
    """The config as the user wrote it: the YAML files merged in order (later keys win at the
    top level, as Snakemake's --configfile does), then ``overrides`` (--config)."""
    merged: dict = {}
    for path in paths:
        with open(path, encoding="utf-8") as handle:
            merged = _merge(merged, yaml.safe_load(handle) or {})
    return _merge(merged, dict(overrides or {}))


def _merge(base: dict, update: Mapping) -> dict:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(dict(out[key]), value)
        else:
            out[key] = copy.deepcopy(value)
    return out
