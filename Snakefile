# irflow: train and evaluate neural rerankers and embedders, every number reproducible.
# This file only sets configuration, the report and the rule families; see rules/.
from snakemake.utils import min_version

min_version("9.0")


# A config given with --configfile replaces the demo config instead of merging into it.
if not workflow.overwrite_configfiles:

    configfile: "config.yaml"


report: "reports/workflow.rst"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/first_stage.smk"
include: "rules/rerank.smk"
include: "rules/training_data.smk"
include: "rules/students.smk"
include: "rules/decoder.smk"
include: "rules/evaluate.smk"
include: "rules/report.smk"
include: "rules/reproduce.smk"


rule all:
    default_target: True
    input:
        all_targets(),


# Named stages: `snakemake baselines`, `snakemake training_data`, `snakemake studies`.
rule baselines:
    input:
        baseline_targets(),


rule training_data:
    input:
        training_data_targets(),


rule studies:
    input:
        study_targets(),
