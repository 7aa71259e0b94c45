# Configuration validation, names, resources and input functions shared by every rule family.
import os
import re

from snakemake.exceptions import WorkflowError

from irflow.plan import ConfigError, Plan, deciding


def planned_config(config):
    """The config the plan is built from. With --config package=<archive> it is the package's
    own (verify recomputes what the package was made from), plus the verification keys; the
    jobs read it the same way (irflow.job).
    """
    from irflow.io import InputError
    from irflow.package import effective_config

    try:
        return effective_config(config)
    except InputError as err:
        raise WorkflowError(str(err)) from None


# The validated config becomes a read-only plan (irflow.plan): every rule asks it, nothing
# writes `config`. Schema defaults are filled in the plan's copy, errors name the key.
try:
    PLAN = Plan.from_config(
        planned_config(config),
        os.path.join(workflow.basedir, "schemas", "config.schema.yaml"),
        os.getcwd(),
    )
except ConfigError as err:
    raise WorkflowError(str(err)) from None

NAME_RE = "[A-Za-z0-9][A-Za-z0-9_.-]*"
RESULTS = PLAN.results

# A hub model without a pinned commit loads whatever its branch points at on the day: said at
# every plan (dry runs included), so no run is unknowingly unpinned.
UNPINNED = PLAN.unpinned_models()
if UNPINNED:
    from snakemake.logging import logger

    logger.warning(
        f"WARNING: {len(UNPINNED)} hub models are unpinned (revision not a commit; set "
        "'models: <name>: revision:' to the hub's 40-hex sha before a run whose numbers "
        "count): "
        + ", ".join(f"{n} ({h} @ {r or 'default branch'})" for n, h, r in UNPINNED)
    )


def _nothing():
    # A regex that matches no name: a rule family with no configured members never matches.
    return "(?!x)x"


def settings(section, name):
    """The deciding settings of one named entry (what rule params may carry)."""
    return deciding(PLAN.entry(section, name), section)


def names_of_kind(section, kind):
    return "|".join(re.escape(n) for n in PLAN.names(section, kind)) or _nothing()


def check_reference(where, section, name):
    try:
        PLAN.check_reference(where, section, name)
    except ConfigError as err:
        raise WorkflowError(str(err)) from None


def redacted(value):
    from irflow.provenance import redact

    return redact(value)


def model_input(name):
    """The files a job loading model `name` reads: a produced model's folder, a configured
    folder's files (editing one reruns the job), nothing for a hub id."""
    return PLAN.model_files(name)


def student_data_path(name, section="students"):
    return PLAN.training_data_path(section, name)


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
    return PLAN.corpus_of(dataset)


def corpus_source(corpus):
    """The deciding dataset entry a corpus is read from (datasets sharing a corpus agree)."""
    try:
        return PLAN.corpus_source(corpus)
    except ConfigError as err:
        raise WorkflowError(str(err)) from None


def dataset_entry(dataset):
    return PLAN.dataset(dataset)


def corpus_parquet(wildcards):
    return f"{RESULTS}/data/corpora/{corpus_of(wildcards.dataset)}/corpus.parquet"


def queries_parquet(wildcards):
    return f"{RESULTS}/data/datasets/{wildcards.dataset}/queries.parquet"


def qrels_file(wildcards):
    return f"{RESULTS}/data/datasets/{wildcards.dataset}/qrels.trec"


def model_entry(name):
    return PLAN.model(name)


# ---------------------------------------------------------------------------------------------
# Resources: per rule from config, memory and runtime growing with the attempt number
# ---------------------------------------------------------------------------------------------
DEFAULT_RESOURCES = {"mem_mb": 2000, "runtime": 30, "cpus": 1, "gpus": 0}


def resource_spec(rule_name):
    spec = dict(DEFAULT_RESOURCES)
    resources = PLAN.get("resources", {})
    spec.update(resources.get("default", {}))
    spec.update(resources.get(rule_name, {}))
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
    return PLAN.get("containers")[family]


def log_path(rule_name, pattern):
    return f"{RESULTS}/logs/{rule_name}/{pattern}.log"


def benchmark_path(rule_name, pattern):
    return f"{RESULTS}/benchmarks/{rule_name}/{pattern}.tsv"


# ---------------------------------------------------------------------------------------------
# Targets
# ---------------------------------------------------------------------------------------------
def baseline_runs():
    """(dataset, run) pairs of every configured baseline; run is the path below the dataset."""
    return PLAN.baseline_runs()


def baseline_metric_files():
    return [f"{RESULTS}/metrics/{d}/{run}/mean.tsv" for d, run in baseline_runs()]


def training_data_stats_files():
    """Stats JSON of every artifact the training_data section asks for, in data-flow order."""
    files = []
    for build in PLAN.get("training_data"):
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
    entry = settings("training_sets", train)
    return {k: entry.get(k) for k in ("dataset", "min_label", "max_queries", "on_leak")}


def training_dataset(wildcards):
    return settings("training_sets", wildcards.train)["dataset"]


def training_corpus(wildcards):
    return f"{RESULTS}/data/corpora/{corpus_of(training_dataset(wildcards))}/corpus.parquet"


def miner_run(wildcards):
    """The first-stage run a miner mines from: BM25 and dense retrievers retrieve for the
    selected training queries only (rules mining_*_retrieve), given candidates are the
    dataset's own run."""
    retriever = settings("miners", wildcards.miner)["retriever"]
    if PLAN.entry("retrievers", retriever)["kind"] in ("bm25", "dense"):
        return f"{RESULTS}/training-data/{wildcards.train}/runs/{retriever}.trec"
    return f"{RESULTS}/runs/{training_dataset(wildcards)}/first-stage/{retriever}.trec"


def mining_index(wildcards):
    """The BM25 index of a training set's corpus (rule mining_bm25_retrieve)."""
    corpus = corpus_of(training_dataset(wildcards))
    return f"{RESULTS}/indexes/{corpus}/{wildcards.retriever}"


def mining_embeddings(wildcards):
    """The corpus embeddings a dense miner searches (rule mining_dense_retrieve)."""
    model = settings("retrievers", wildcards.retriever)["model"]
    return f"{RESULTS}/embeddings/{corpus_of(training_dataset(wildcards))}/{model}"


def mining_shard_runs(wildcards, shards):
    """The query-shard runs of a training set's BM25 miner run, in shard order."""
    folder = f"{RESULTS}/training-data/{wildcards.train}/run-shards"
    return [
        f"{folder}/{wildcards.retriever}/shard-{i}-of-{shards}.trec"
        for i in range(shards)
    ]


def held_out_queries(wildcards):
    held = settings("training_sets", wildcards.train)["held_out"]
    return {name: f"{RESULTS}/data/datasets/{name}/queries.parquet" for name in held}


def teacher_shards(wildcards):
    shards = settings("teachers", wildcards.teacher)["shards"]
    base = f"{RESULTS}/teacher-scores/{wildcards.train}/{wildcards.miner}/{wildcards.teacher}"
    return [f"{base}/shard-{i}-of-{shards}.parquet" for i in range(shards)]


def baseline_targets():
    return [f"{RESULTS}/tables/baselines.tsv", f"{RESULTS}/tables/baselines.md"]


def training_data_targets():
    if not PLAN.get("training_data"):
        return []
    return [f"{RESULTS}/tables/training-data.tsv", f"{RESULTS}/tables/training-data.md"]


def study_targets():
    return [
        f"{RESULTS}/tables/studies/{study}.{ext}"
        for study in PLAN.names("studies")
        for ext in ("tsv", "md", "tex")
    ]


def all_targets():
    return (
        baseline_targets()
        + training_data_targets()
        + study_targets()
        + decoder_targets()  # rules/decoder_inputs.smk
        + report_targets()  # rules/report.smk
    )


def bm25_shard_runs(wildcards, shards):
    """The query-shard run files rule merge_runs concatenates, in shard order."""
    folder = (
        f"{RESULTS}/run-shards/{wildcards.dataset}/first-stage/{wildcards.retriever}"
    )
    return [f"{folder}/shard-{i}-of-{shards}.trec" for i in range(shards)]


def dense_embeddings(wildcards):
    model = settings("retrievers", wildcards.retriever)["model"]
    return f"{RESULTS}/embeddings/{corpus_of(wildcards.dataset)}/{model}"


# ---------------------------------------------------------------------------------------------
# Students and studies (rules/students.smk)
# ---------------------------------------------------------------------------------------------
def names_of(section):
    return "|".join(re.escape(n) for n in PLAN.names(section)) or _nothing()


def training_inputs(section):
    """Input function: the training data, queries and corpus of a student or decoder arm."""

    def inputs(wildcards):
        name = wildcards.student if section == "students" else wildcards.arm
        return PLAN.training_inputs(section, name)

    return inputs


def checkpoint_folder(section):
    def folder(wildcards):
        name = wildcards.student if section == "students" else wildcards.arm
        return PLAN.checkpoint_folder(section, name)

    return folder


def student_init(wildcards):
    return model_input(settings("students", wildcards.student)["init"])


def student_params(wildcards):
    """Everything that decides a student's weights (and nothing else: a rerun trigger)."""
    return PLAN.student_params(wildcards.student)


def study_runs(study):
    """(arm, variant name, dataset, run) rows of a study table, in table order."""
    return PLAN.study_runs(study)


def any_study_runs(study):
    """(arm, variant name, dataset, run) rows of a students' or a decoder study's table."""
    return PLAN.study_runs(study)


def all_study_specs():
    """{study: spec} of the students' studies and the decoder studies (names are distinct)."""
    return {
        **{s: settings("studies", s) for s in PLAN.names("studies")},
        **{s: settings("decoder_studies", s) for s in PLAN.names("decoder_studies")},
    }


# ---------------------------------------------------------------------------------------------
# Source files of local BEIR folders (inputs of rules/data.smk)
# ---------------------------------------------------------------------------------------------
# Declared as inputs so that editing a corpus, queries, qrels or candidates file on disk reruns
# its preparation and everything downstream (Snakemake's mtime and input triggers), and so that
# each preparation's provenance record holds the digests of the files it read. An ir_datasets
# id has no files to declare. The layout is the one irflow.data.DatasetSource.load reads.
def beir_source_files(dataset, parts):
    """{part: path} of the files a dataset's BEIR folder holds for `parts` (corpus, queries,
    qrels, candidates); raised here, while the DAG is built, a missing folder or file names the
    config key to fix instead of surfacing as Snakemake's missing-input error."""
    entry = settings("datasets", dataset)
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
