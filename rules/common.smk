# Configuration validation, names, resources and input functions shared by every rule family.
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


def all_targets():
    targets = [f"{RESULTS}/tables/baselines.tsv", f"{RESULTS}/tables/baselines.md"]
    if config["training_data"]:
        targets += [
            f"{RESULTS}/tables/training-data.tsv",
            f"{RESULTS}/tables/training-data.md",
        ]
    return targets + report_targets()  # rules/report.smk


def dense_embeddings(wildcards):
    model = config["retrievers"][wildcards.retriever]["model"]
    return f"{RESULTS}/embeddings/{corpus_of(wildcards.dataset)}/{model}"
