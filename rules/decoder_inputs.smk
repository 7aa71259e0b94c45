# Configuration checks, names and input functions of rules/decoder.smk (the unified decoder:
# one decoder LM that embeds and reranks). Kept apart from the rules: Snakemake's linter wants
# rules and functions in separate files.
#
# Paths, in data-flow order (see the README's artifact table):
#   results/models/<gguf base>/                                   convert_gguf
#   results/decoders/<arm>/{model/,diagnostics/,train.stats.json}  train_unified
#   results/decoders/<arm>/plots/{grad_cosine,expert_usage}.svg   decoder_diagnostics
#   results/embeddings/<corpus>/<arm>/                            decoder_encode_corpus
#   results/runs/<dataset>/first-stage/<arm>.trec                 decoder_dense_retrieve
#   results/runs/<dataset>/rerank/<retriever>/<arm>.cosine.trec   decoder_cosine_rerank
#   results/runs/<dataset>/rerank/<retriever>/<arm>.yesno.trec    decoder_rerank
#   results/tables/studies/<decoder study>.{tsv,md,per-query.tsv} study_table
# Arm names therefore must not be model, retriever or reranker names (checked below).
import os

from irflow.decoder.spec import TASKS, parse_spec
from irflow.io import InputError

SPEC_SECTIONS = ("adapter", "embedding", "reranking", "training")
PACKAGED_GGUF = {"smollm2"}  # irflow.decoder.base.smollm2_gguf_path()
DECODER_DEFAULT_DEPTH = {"dense": 1000, "cosine": 100, "yesno": 100}
DECODER_RUN_SUFFIX = {"cosine": ".cosine", "yesno": ".yesno"}


def gguf_name(source):
    """The folder name under results/models of a converted GGUF file."""
    if source in PACKAGED_GGUF:
        return source
    stem = os.path.basename(source)
    stem = stem[: -len(".gguf")] if stem.endswith(".gguf") else stem
    return re.sub("[^A-Za-z0-9_.-]", "-", stem).lstrip("._-") or "gguf"


def gguf_sources():
    """{converted name: GGUF source} over every decoder whose base is a GGUF file."""
    sources = {}
    for arm, spec in PLAN.section("decoders").items():
        base = spec["base"]
        if isinstance(base, dict) and "gguf" in base:
            name = gguf_name(base["gguf"])
            if sources.get(name, base["gguf"]) != base["gguf"]:
                raise WorkflowError(
                    f"config: decoders.{arm}.base: GGUF files {sources[name]!r} and "
                    f"{base['gguf']!r} would both convert into {RESULTS}/models/{name}; rename "
                    f"one of the files"
                )
            sources[name] = base["gguf"]
    return sources


def decoder_spec(arm):
    """The arm's irflow.decoder spec dict (the four sections; seed defaults to config seed)."""
    entry = settings("decoders", arm)
    spec = {k: entry[k] for k in SPEC_SECTIONS if k in entry}
    training = dict(spec.get("training") or {})
    training.setdefault("seed", PLAN.seed)
    spec["training"] = training
    return spec


def parsed_decoder_spec(arm):
    try:
        return parse_spec(decoder_spec(arm), where=f"config: decoders.{arm}")
    except InputError as err:
        raise WorkflowError(str(err)) from None


def check_decoders():
    gguf_sources()
    for arm, spec in PLAN.section("decoders").items():
        for section in ("models", "retrievers", "rerankers"):
            if arm in PLAN.names(section):
                raise WorkflowError(
                    f"config: decoders.{arm}: the name is also a {section[:-1]} under "
                    f"'{section}:' (they would share run and embedding paths); rename one"
                )
        if isinstance(spec["base"], str):
            check_reference(f"decoders.{arm}.base", "models", spec["base"])
        parsed_decoder_spec(arm)
    try:
        PLAN.check_decoder_training_data()  # the data must be built
    except ConfigError as err:
        raise WorkflowError(str(err)) from None


def decoder_runs_of(study):
    """(arm, variant name, dataset, run, kind, retriever, depth) of a decoder study, in table
    order: per evaluation, every arm. The variant name is <arm>.<kind>, so the study table's
    variant column is the evaluation kind (irflow.studies.variant_of)."""
    spec = settings("decoder_studies", study)
    rows = []
    for evaluation in spec["evaluate"]:
        kind = evaluation["kind"]
        depth = evaluation.get("depth", DECODER_DEFAULT_DEPTH[kind])
        retriever = evaluation.get("retriever")
        for arm in spec["arms"]:
            if kind == "dense":
                run = f"first-stage/{arm}"
            else:
                run = f"rerank/{retriever}/{arm}{DECODER_RUN_SUFFIX[kind]}"
            rows.append(
                (
                    arm,
                    f"{arm}.{kind}",
                    evaluation["dataset"],
                    run,
                    kind,
                    retriever,
                    depth,
                )
            )
    return rows


def check_decoder_studies():
    """Arms, datasets and retrievers exist; one depth per run file (its path has no depth)."""
    depths = {}
    for study, spec in PLAN.section("decoder_studies").items():
        if study in PLAN.section("studies"):
            raise WorkflowError(
                f"config: decoder_studies.{study}: 'studies:' has a study of that name too "
                f"(both write results/tables/studies/{study}.tsv); rename one"
            )
        for arm in spec["arms"]:
            check_reference(f"decoder_studies.{study}.arms", "decoders", arm)
        if "baseline" in spec and spec["baseline"] not in spec["arms"]:
            raise WorkflowError(
                f"config: decoder_studies.{study}.baseline {spec['baseline']!r} is not one of "
                f"its arms {spec['arms']}"
            )
        for i, evaluation in enumerate(spec["evaluate"]):
            where = f"decoder_studies.{study}.evaluate[{i}]"
            check_reference(f"{where}.dataset", "datasets", evaluation["dataset"])
            if "retriever" in evaluation:
                check_reference(
                    f"{where}.retriever", "retrievers", evaluation["retriever"]
                )
        for arm, _, dataset, run, kind, _, depth in decoder_runs_of(study):
            if depths.setdefault((dataset, run), depth) != depth:
                raise WorkflowError(
                    f"config: decoder_studies.{study} evaluates {run} on {dataset} at depth "
                    f"{depth}, but another evaluation asks for depth {depths[(dataset, run)]} "
                    f"(the run file is the same); use one depth"
                )
    return depths


check_decoders()
DECODER_DEPTHS = check_decoder_studies()


# ---------------------------------------------------------------------------------------------
# Input functions and params
# ---------------------------------------------------------------------------------------------
def decoder_base_entry(arm):
    """The base model as a ModelRef config entry ({name, hf_id | path, ...}): a configured
    model, an inline hub id or folder, or the converted GGUF folder."""
    base = settings("decoders", arm)["base"]
    if isinstance(base, str):
        return model_entry(base)
    if "gguf" in base:
        name = gguf_name(base["gguf"])
        return {"name": name, "path": f"{RESULTS}/models/{name}"}
    return {"name": f"{arm}.base", **base}


def decoder_base_input(wildcards):
    """The job input that produces the base model folder, if a rule produces it."""
    base = settings("decoders", wildcards.arm)["base"]
    if isinstance(base, str):
        return model_input(base)
    if "gguf" in base:
        return f"{RESULTS}/models/{gguf_name(base['gguf'])}"
    return []


def gguf_file_input(wildcards):
    """A GGUF file given by path is an input (editing it reruns the conversion); the packaged
    file is found by the job itself (irflow.decoder.base.smollm2_gguf_path)."""
    source = gguf_sources()[wildcards.gguf]
    return [] if source in PACKAGED_GGUF else source


def decoder_training_set(wildcards):
    return settings("decoders", wildcards.arm)["data"]["training_set"]


def decoder_data(wildcards):
    return student_data_path(wildcards.arm, "decoders")


def decoder_queries(wildcards):
    return f"{RESULTS}/training-data/{decoder_training_set(wildcards)}/queries.parquet"


def decoder_training_corpus(wildcards):
    dataset = settings("training_sets", decoder_training_set(wildcards))["dataset"]
    return f"{RESULTS}/data/corpora/{corpus_of(dataset)}/corpus.parquet"


def decoder_model(wildcards):
    return f"{RESULTS}/decoders/{wildcards.arm}/model"


def decoder_inputs_of(wildcards):
    """Inputs of every evaluation job: the trained adapters and the base model folder."""
    return {"model": decoder_model(wildcards), "base": decoder_base_input(wildcards)}


def decoder_depth(kind):
    def depth(wildcards):
        if kind == "dense":
            run = f"first-stage/{wildcards.arm}"
        else:
            run = f"rerank/{wildcards.retriever}/{wildcards.arm}{DECODER_RUN_SUFFIX[kind]}"
        return DECODER_DEPTHS.get((wildcards.dataset, run), DECODER_DEFAULT_DEPTH[kind])

    return depth


def decoder_embeddings(wildcards):
    return f"{RESULTS}/embeddings/{corpus_of(wildcards.dataset)}/{wildcards.arm}"


def decoder_plot_files(arm):
    """The heatmaps worth showing: gradient cosines when a stage trains both tasks, expert
    usage with MoE-LoRA (rule decoder_diagnostics draws both, a placeholder panel otherwise).
    """
    spec = parsed_decoder_spec(arm)
    plots = []
    if any(len(stage.tasks) == len(TASKS) for stage in spec.training.stages):
        plots.append("grad_cosine")
    if spec.adapter.kind == "moe-lora":
        plots.append("expert_usage")
    return {plot: f"{RESULTS}/decoders/{arm}/plots/{plot}.svg" for plot in plots}


def decoder_report_plots():
    """{arm: {plot: svg}} of every decoder study's arms that have a heatmap (the report's)."""
    arms = [
        a for spec in PLAN.section("decoder_studies").values() for a in spec["arms"]
    ]
    plots = {arm: decoder_plot_files(arm) for arm in dict.fromkeys(arms)}
    return {arm: files for arm, files in plots.items() if files}


def decoder_study_runs(study):
    """(arm, variant name, dataset, run) rows of a decoder study table (irflow.studies)."""
    return [row[:4] for row in decoder_runs_of(study)]


def decoder_targets():
    """What `all` builds for the decoders (rules/common.smk, all_targets): every decoder
    study's table and the heatmaps of its joint arms."""
    tables = [
        f"{RESULTS}/tables/studies/{study}.{ext}"
        for study in PLAN.section("decoder_studies")
        for ext in ("tsv", "md")
    ]
    plots = [p for files in decoder_report_plots().values() for p in files.values()]
    return tables + plots
