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

from irflow.decoder.spec import TASKS

PACKAGED_GGUF = {"smollm2"}  # irflow.decoder.base.smollm2_gguf_path()


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
    return PLAN.decoder_spec(arm)


def parsed_decoder_spec(arm):
    return PLAN.parsed_decoder_spec(arm)


gguf_sources()


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
    return PLAN.folder_files(base["path"]) if base.get("path") else []


def gguf_file_input(wildcards):
    """A GGUF file given by path is an input (editing it reruns the conversion); the packaged
    file is found by the job itself (irflow.decoder.base.smollm2_gguf_path)."""
    source = gguf_sources()[wildcards.gguf]
    return [] if source in PACKAGED_GGUF else source


def decoder_model(wildcards):
    return f"{RESULTS}/decoders/{wildcards.arm}/model"


def decoder_inputs_of(wildcards):
    """Inputs of every evaluation job: the trained adapters and the base model folder."""
    return {"model": decoder_model(wildcards), "base": decoder_base_input(wildcards)}


def decoder_depth(kind):
    def depth(wildcards):
        retriever = getattr(wildcards, "retriever", None)
        return PLAN.decoder_depth(kind, wildcards.dataset, wildcards.arm, retriever)

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
    return PLAN.study_runs(study)


def decoder_targets():
    """What `all` builds for the decoders (rules/common.smk, all_targets): every decoder
    study's table and the heatmaps of its joint arms."""
    tables = [
        f"{RESULTS}/tables/studies/{study}.{ext}"
        for study in PLAN.section("decoder_studies")
        for ext in ("tsv", "md", "tex")
    ]
    plots = [p for files in decoder_report_plots().values() for p in files.values()]
    return tables + plots
