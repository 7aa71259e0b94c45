# Configuration validation, names, resources and input functions shared by every rule family.
import re

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

validate(config, schema="../schemas/config.schema.yaml", set_default=True)

NAME_RE = "[A-Za-z0-9][A-Za-z0-9_.-]*"
RESULTS = config["results_dir"]


def _nothing():
    # A regex that matches no name: a rule family with no configured members never matches.
    return "(?!x)x"


def names_of_kind(section, kind):
    names = [
        n for n, spec in config.get(section, {}).items() if spec.get("kind") == kind
    ]
    return "|".join(sorted(names)) or _nothing()


def _known(section):
    return ", ".join(sorted(config.get(section, {}))) or "(none configured)"


def check_reference(where, section, name):
    if name not in config.get(section, {}):
        raise WorkflowError(
            f"config: {where} refers to {section[:-1]} {name!r}, which is not defined under "
            f"'{section}:' (known: {_known(section)})"
        )


def check_references():
    for name, spec in config["retrievers"].items():
        if spec["kind"] == "dense":
            check_reference(f"retrievers.{name}.model", "models", spec["model"])
    for name, spec in config.get("rerankers", {}).items():
        check_reference(f"rerankers.{name}.model", "models", spec["model"])
    for i, baseline in enumerate(config["baselines"]):
        check_reference(f"baselines[{i}].dataset", "datasets", baseline["dataset"])
        check_reference(
            f"baselines[{i}].retriever", "retrievers", baseline["retriever"]
        )
        for reranker in baseline.get("rerankers", []):
            check_reference(f"baselines[{i}].rerankers", "rerankers", reranker)
        retriever = config["retrievers"][baseline["retriever"]]
        dataset = config["datasets"][baseline["dataset"]]
        if retriever["kind"] == "given" and not (
            dataset.get("candidates") or dataset.get("ir_datasets")
        ):
            raise WorkflowError(
                f"config: baselines[{i}] uses the given candidates of dataset "
                f"{baseline['dataset']!r}, but that dataset sets no 'candidates:' file"
            )

    for name, spec in config["training_sets"].items():
        check_reference(f"training_sets.{name}.dataset", "datasets", spec["dataset"])
        for held in spec["held_out"]:
            check_reference(f"training_sets.{name}.held_out", "datasets", held)
    for name, spec in config["miners"].items():
        check_reference(f"miners.{name}.retriever", "retrievers", spec["retriever"])
    for name, spec in config["teachers"].items():
        check_reference(f"teachers.{name}.model", "models", spec["model"])
    for i, build in enumerate(config["training_data"]):
        check_reference(
            f"training_data[{i}].training_set", "training_sets", build["training_set"]
        )
        for section in ("miners", "teachers", "filters"):
            for name in build.get(section, []):
                check_reference(f"training_data[{i}].{section}", section, name)
        if build.get("filters") and not build.get("teachers"):
            raise WorkflowError(
                f"config: training_data[{i}] lists filters but no teachers: consistency "
                f"filters work on teacher scores"
            )


# ---------------------------------------------------------------------------------------------
# Produced models: GUIDE inits and trained students are models (and rerankers) by name
# ---------------------------------------------------------------------------------------------
# Registering them in config["models"] (and "rerankers") lets every rule that takes a model —
# reranking, dense retrieval, teacher scoring — take a produced one unchanged; model_input()
# then adds the producing rule's output directory as the job's input.
PRODUCED_MODELS = {}


def _register(section, name, entry, origin):
    if name in config.setdefault(section, {}):
        raise WorkflowError(
            f"config: {origin} defines the {section[:-1]} name {name!r}, which is already "
            f"configured under '{section}:'; rename one of them"
        )
    config[section][name] = entry


def _model_settings(name):
    base = config["models"][name]
    return {
        k: base[k] for k in ("max_length", "batch_size", "query_prompt") if k in base
    }


def register_produced_models():
    for name, spec in config["inits"].items():
        check_reference(f"inits.{name}.from", "models", spec["from"])
        entry = {
            "path": f"{RESULTS}/inits/{name}/model",
            **_model_settings(spec["from"]),
        }
        _register("models", name, entry, f"inits.{name}")
        PRODUCED_MODELS[name] = entry["path"]
    # Students may start from other students: register in dependency order.
    pending = dict(config["students"])
    while pending:
        ready = [n for n, s in pending.items() if s["init"] not in pending]
        if not ready:
            raise WorkflowError(
                f"config: students {sorted(pending)} initialise from each other in a cycle"
            )
        for name in ready:
            spec = pending.pop(name)
            check_reference(f"students.{name}.init", "models", spec["init"])
            settings = _model_settings(spec["init"])
            if "max_length" in spec["training"]:
                settings["max_length"] = spec["training"]["max_length"]
            settings["batch_size"] = spec["eval_batch_size"]
            entry = {"path": f"{RESULTS}/students/{name}/model", **settings}
            _register("models", name, entry, f"students.{name}")
            PRODUCED_MODELS[name] = entry["path"]
            if spec["kind"] == "cross-encoder":
                untrained = {**entry, "path": f"{RESULTS}/students/{name}/untrained"}
                _register("models", f"{name}.untrained", untrained, f"students.{name}")
                PRODUCED_MODELS[f"{name}.untrained"] = untrained["path"]


def study_variants(study):
    """(arm, name, section, entry) of every model a study evaluates, in table order.

    Cross-encoder arms rerank each evaluated dataset's candidates (registered as rerankers);
    bi-encoder arms retrieve from the full corpus (registered as dense retrievers), also with
    their embeddings cut to each Matryoshka dim. An untrained variant is the model training
    starts from: for a bi-encoder its init itself (so arms sharing an init share its
    embeddings), for a cross-encoder the init with its freshly initialised (seeded) head.
    """
    spec = config["studies"][study]
    depth = spec["evaluate"][0]["depth"]
    rows = []
    for arm in spec["arms"]:
        check_reference(f"studies.{study}.arms", "students", arm)
        student = config["students"][arm]
        if student["kind"] == "cross-encoder":
            base = {"kind": "cross-encoder", "depth": depth}
            rows.append((arm, arm, "rerankers", {**base, "model": arm}))
            if spec["untrained"]:
                entry = {**base, "model": f"{arm}.untrained"}
                rows.append((arm, f"{arm}.untrained", "rerankers", entry))
        else:
            base = {"kind": "dense", "depth": depth}
            rows.append((arm, arm, "retrievers", {**base, "model": arm}))
            for dim in spec.get("matryoshka_dims", []):
                entry = {**base, "model": arm, "dim": dim}
                rows.append((arm, f"{arm}.dim{dim}", "retrievers", entry))
            if spec["untrained"]:
                entry = {**base, "model": student["init"]}
                rows.append((arm, f"{arm}.untrained", "retrievers", entry))
    return rows


def study_run_path(section, name, retriever):
    if section == "rerankers":
        return f"rerank/{retriever}/{name}"
    return f"first-stage/{name}"


def register_study_models():
    for study, spec in config["studies"].items():
        for i, evaluation in enumerate(spec["evaluate"]):
            where = f"studies.{study}.evaluate[{i}]"
            check_reference(f"{where}.dataset", "datasets", evaluation["dataset"])
            check_reference(f"{where}.retriever", "retrievers", evaluation["retriever"])
        depths = {e["depth"] for e in spec["evaluate"]}
        if len(depths) > 1:
            raise WorkflowError(
                f"config: studies.{study}.evaluate asks for depths {sorted(depths)}; a study "
                f"evaluates every dataset to one depth"
            )
        if "baseline" in spec and spec["baseline"] not in spec["arms"]:
            raise WorkflowError(
                f"config: studies.{study}.baseline {spec['baseline']!r} is not one of its arms "
                f"{spec['arms']}"
            )
        for _, name, section, entry in study_variants(study):
            existing = config[section].get(name)
            if existing is None:
                config[section][name] = entry
            elif existing != entry:
                raise WorkflowError(
                    f"config: studies.{study} evaluates {name!r} as {entry}, but '{section}:' "
                    f"already has {name!r} as {existing} (another study, or configured); "
                    f"give the studies one depth or rename"
                )


def model_input(name):
    """The producing rule's output directory of a produced model; nothing for a configured one."""
    return PRODUCED_MODELS.get(name, [])


def check_student_data(section="students"):
    """A student's (or decoder's: section) training data must be an artifact some training_data
    entry builds."""
    built = set()
    for build in config["training_data"]:
        for miner in build["miners"]:
            for teacher in build.get("teachers", []):
                built.add((build["training_set"], miner, teacher, None))
                for filt in build.get("filters", []):
                    built.add((build["training_set"], miner, teacher, filt))
    for name, spec in config[section].items():
        data = spec["data"]
        for key in ("training_set", "miner", "teacher", "filter"):
            if data.get(key) is not None:
                check_reference(
                    f"{section}.{name}.data.{key}",
                    f"{key}s" if key != "training_set" else "training_sets",
                    data[key],
                )
        key = (data["training_set"], data["miner"], data["teacher"], data.get("filter"))
        if key not in built:
            raise WorkflowError(
                f"config: {section}.{name}.data asks for "
                f"{student_data_path(name, section)}, which no "
                f"'training_data:' entry builds (rules merge_teacher_scores / consistency_filter "
                f"produce it); add training_set {key[0]!r} with miner {key[1]!r}, teacher "
                f"{key[2]!r}" + (f" and filter {key[3]!r}" if key[3] else "") + " there"
            )


def student_data_path(name, section="students"):
    data = config[section][name]["data"]
    base = f"{data['training_set']}/{data['miner']}/{data['teacher']}"
    if data.get("filter"):
        return f"{RESULTS}/filtered/{base}/{data['filter']}.parquet"
    return f"{RESULTS}/teacher-scores/{base}.parquet"


register_produced_models()
register_study_models()
check_student_data()


check_references()


wildcard_constraints:
    train=NAME_RE,
    miner=NAME_RE,
    teacher=NAME_RE,
    filter=NAME_RE,
    dataset=NAME_RE,
    corpus=NAME_RE,
    model=NAME_RE,
    retriever=NAME_RE,
    reranker=NAME_RE,


# ---------------------------------------------------------------------------------------------
# Datasets and corpora
# ---------------------------------------------------------------------------------------------
def corpus_of(dataset):
    return config["datasets"][dataset].get("corpus", dataset)


def corpus_source(corpus):
    """The dataset entry a corpus is read from; datasets sharing a corpus must agree on it."""
    members = sorted(n for n in config["datasets"] if corpus_of(n) == corpus)
    if not members:
        raise WorkflowError(
            f"config: no dataset has corpus {corpus!r} (known datasets: {_known('datasets')})"
        )
    folders = {config["datasets"][m].get("beir_folder") for m in members}
    if len(folders) > 1:
        raise WorkflowError(
            f"config: datasets {members} share corpus {corpus!r} but read it from different "
            f"sources ({sorted(map(str, folders))}); give them different 'corpus:' names"
        )
    return {"name": members[0], **config["datasets"][members[0]]}


def dataset_entry(dataset):
    return {"name": dataset, **config["datasets"][dataset]}


def corpus_parquet(wildcards):
    return f"{RESULTS}/data/corpora/{corpus_of(wildcards.dataset)}/corpus.parquet"


def queries_parquet(wildcards):
    return f"{RESULTS}/data/datasets/{wildcards.dataset}/queries.parquet"


def qrels_file(wildcards):
    return f"{RESULTS}/data/datasets/{wildcards.dataset}/qrels.trec"


def model_entry(name):
    return {"name": name, **config["models"][name]}


# ---------------------------------------------------------------------------------------------
# Resources: per rule from config, memory and runtime growing with the attempt number
# ---------------------------------------------------------------------------------------------
DEFAULT_RESOURCES = {"mem_mb": 2000, "runtime": 30, "cpus": 1, "gpus": 0}


def resource_spec(rule_name):
    spec = dict(DEFAULT_RESOURCES)
    spec.update(config.get("resources", {}).get("default", {}))
    spec.update(config.get("resources", {}).get(rule_name, {}))
    return spec


def threads_for(rule_name):
    return resource_spec(rule_name)["cpus"]


def resources_for(rule_name):
    spec = resource_spec(rule_name)
    resources = {
        "mem_mb": lambda wildcards, attempt: spec["mem_mb"] * attempt,
        "runtime": lambda wildcards, attempt: spec["runtime"] * attempt,
    }
    if spec.get("gpus"):
        resources["gpu"] = spec["gpus"]
    if spec.get("slurm_partition"):
        resources["slurm_partition"] = spec["slurm_partition"]
    if spec.get("slurm_extra"):
        resources["slurm_extra"] = spec["slurm_extra"]
    return resources


def container_image(family):
    """Image URI of a container family (containers/<family>.Dockerfile), used with --sdm apptainer."""
    return config["containers"][family]


def log_path(rule_name, pattern):
    return f"{RESULTS}/logs/{rule_name}/{pattern}.log"


def benchmark_path(rule_name, pattern):
    return f"{RESULTS}/benchmarks/{rule_name}/{pattern}.tsv"


# ---------------------------------------------------------------------------------------------
# Targets
# ---------------------------------------------------------------------------------------------
def baseline_runs():
    """(dataset, run) pairs of every configured baseline; run is the path below the dataset."""
    pairs = []
    for baseline in config["baselines"]:
        first = f"first-stage/{baseline['retriever']}"
        pairs.append((baseline["dataset"], first))
        for reranker in baseline.get("rerankers", []):
            pairs.append(
                (baseline["dataset"], f"rerank/{baseline['retriever']}/{reranker}")
            )
    # Order kept, duplicates dropped: the table lists each run once.
    return list(dict.fromkeys(pairs))


def baseline_metric_files():
    return [f"{RESULTS}/metrics/{d}/{run}/mean.tsv" for d, run in baseline_runs()]


def training_data_stats_files():
    """Stats JSON of every artifact the training_data section asks for, in data-flow order."""
    files = []
    for build in config["training_data"]:
        train = build["training_set"]
        files.append(f"{RESULTS}/training-data/{train}/queries.stats.json")
        for miner in build["miners"]:
            files.append(
                f"{RESULTS}/training-data/{train}/negatives/{miner}.stats.json"
            )
            for teacher in build.get("teachers", []):
                files.append(
                    f"{RESULTS}/teacher-scores/{train}/{miner}/{teacher}.stats.json"
                )
                for filt in build.get("filters", []):
                    files.append(
                        f"{RESULTS}/filtered/{train}/{miner}/{teacher}/{filt}.stats.json"
                    )
    return list(dict.fromkeys(files))


def selection_params(train):
    """Only the training-set keys that decide which queries are selected (rerun trigger)."""
    spec = config["training_sets"][train]
    return {k: spec.get(k) for k in ("dataset", "min_label", "max_queries", "on_leak")}


def training_dataset(wildcards):
    return config["training_sets"][wildcards.train]["dataset"]


def training_corpus(wildcards):
    return f"{RESULTS}/data/corpora/{corpus_of(training_dataset(wildcards))}/corpus.parquet"


def miner_run(wildcards):
    retriever = config["miners"][wildcards.miner]["retriever"]
    return f"{RESULTS}/runs/{training_dataset(wildcards)}/first-stage/{retriever}.trec"


def held_out_queries(wildcards):
    held = config["training_sets"][wildcards.train]["held_out"]
    return {name: f"{RESULTS}/data/datasets/{name}/queries.parquet" for name in held}


def teacher_shards(wildcards):
    shards = config["teachers"][wildcards.teacher]["shards"]
    base = f"{RESULTS}/teacher-scores/{wildcards.train}/{wildcards.miner}/{wildcards.teacher}"
    return [f"{base}/shard-{i}-of-{shards}.parquet" for i in range(shards)]


def baseline_targets():
    return [f"{RESULTS}/tables/baselines.tsv", f"{RESULTS}/tables/baselines.md"]


def training_data_targets():
    if not config["training_data"]:
        return []
    return [f"{RESULTS}/tables/training-data.tsv", f"{RESULTS}/tables/training-data.md"]


def study_targets():
    return [
        f"{RESULTS}/tables/studies/{study}.{ext}"
        for study in config["studies"]
        for ext in ("tsv", "md")
    ]


def all_targets():
    return (
        baseline_targets()
        + training_data_targets()
        + study_targets()
        + decoder_targets()  # rules/decoder_inputs.smk
        + report_targets()  # rules/report.smk
    )


def dense_embeddings(wildcards):
    model = config["retrievers"][wildcards.retriever]["model"]
    return f"{RESULTS}/embeddings/{corpus_of(wildcards.dataset)}/{model}"


# ---------------------------------------------------------------------------------------------
# Students and studies (rules/students.smk)
# ---------------------------------------------------------------------------------------------
def names_of(section):
    return "|".join(re.escape(n) for n in sorted(config[section])) or _nothing()


def student_training_set(wildcards):
    return config["students"][wildcards.student]["data"]["training_set"]


def student_queries(wildcards):
    return f"{RESULTS}/training-data/{student_training_set(wildcards)}/queries.parquet"


def student_corpus(wildcards):
    dataset = config["training_sets"][student_training_set(wildcards)]["dataset"]
    return f"{RESULTS}/data/corpora/{corpus_of(dataset)}/corpus.parquet"


def student_init(wildcards):
    return model_input(config["students"][wildcards.student]["init"])


def student_params(wildcards):
    """Everything that decides a student's weights (and nothing else: a rerun trigger)."""
    spec = config["students"][wildcards.student]
    return {
        "kind": spec["kind"],
        "init": model_entry(spec["init"]),
        "data": spec["data"],
        "training": spec["training"],
        "seed": spec["training"].get("seed", config["seed"]),
    }


def study_runs(study):
    """(arm, variant name, dataset, run) rows of a study table, in table order."""
    rows = []
    for evaluation in config["studies"][study]["evaluate"]:
        for arm, name, section, _ in study_variants(study):
            run = study_run_path(section, name, evaluation["retriever"])
            rows.append((arm, name, evaluation["dataset"], run))
    return rows


def study_metric_files(wildcards):
    return [
        f"{RESULTS}/metrics/{dataset}/{run}/per-query.tsv"
        for _, _, dataset, run in study_runs(wildcards.study)
    ]


# ---------------------------------------------------------------------------------------------
# Source files of local BEIR folders (inputs of rules/data.smk)
# ---------------------------------------------------------------------------------------------
# Declared as inputs so that editing a corpus, queries, qrels or candidates file on disk reruns
# its preparation and everything downstream (Snakemake's mtime and input triggers), and so that
# each preparation's provenance record holds the digests of the files it read. An ir_datasets
# id has no files to declare. The layout is the one irflow.data.DatasetSource.load reads.
import os


def beir_source_files(dataset, parts):
    """{part: path} of the files a dataset's BEIR folder holds for `parts` (corpus, queries,
    qrels, candidates); raised here, while the DAG is built, a missing folder or file names the
    config key to fix instead of surfacing as Snakemake's missing-input error."""
    entry = config["datasets"][dataset]
    folder = entry.get("beir_folder")
    if not folder:
        return {}
    split = entry.get("split", "test")
    if not os.path.isdir(folder):
        raise WorkflowError(
            f"config: datasets.{dataset}.beir_folder: folder {folder} does not exist. Point "
            f"'datasets: {dataset}: beir_folder' in the config at a BEIR-layout folder "
            f"(corpus.jsonl, queries.jsonl, qrels/{split}.tsv), or use 'ir_datasets: <id>' "
            f"instead."
        )
    layout = {
        "corpus": ("corpus.jsonl", "beir_folder"),
        "queries": ("queries.jsonl", "beir_folder"),
        "qrels": (os.path.join("qrels", f"{split}.tsv"), "split"),
        "candidates": (entry.get("candidates"), "candidates"),
    }
    files = {}
    for part in parts:
        name, key = layout[part]
        if name is None:  # no candidates configured: the job itself says so
            continue
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            raise WorkflowError(
                f"config: datasets.{dataset}.{key}: {path} does not exist (the BEIR folder "
                f"{folder} must hold corpus.jsonl, queries.jsonl and qrels/{split}.tsv)"
            )
        files[part] = path
    return files


def corpus_source_files(wildcards):
    return beir_source_files(corpus_source(wildcards.corpus)["name"], ["corpus"])


def topics_source_files(wildcards):
    return beir_source_files(wildcards.dataset, ["queries", "qrels"])


def candidates_source_files(wildcards):
    return beir_source_files(wildcards.dataset, ["candidates"])
