# Data: normalise each configured dataset (ir_datasets id or BEIR folder) into the workflow's own
# artifacts: a corpus per corpus name, judged queries and qrels per dataset, given candidates.
# A BEIR folder's files are the rules' inputs (rules/common.smk), so editing one reruns them.


rule prepare_corpus:
    input:
        unpack(corpus_source_files),
    output:
        corpus=f"{RESULTS}/data/corpora/{{corpus}}/corpus.parquet",
        manifest=f"{RESULTS}/data/corpora/{{corpus}}/manifest.json",
    log:
        log_path("prepare_corpus", "{corpus}"),
    benchmark:
        benchmark_path("prepare_corpus", "{corpus}")
    container:
        container_image("eval")
    threads: threads_for("prepare_corpus")
    resources:
        **resources_for("prepare_corpus"),
    params:
        source=lambda wildcards: corpus_source(wildcards.corpus),
    script:
        "../workflow_scripts/prepare_corpus.py"


rule prepare_topics:
    input:
        unpack(topics_source_files),
    output:
        queries=f"{RESULTS}/data/datasets/{{dataset}}/queries.parquet",
        qrels=f"{RESULTS}/data/datasets/{{dataset}}/qrels.trec",
        manifest=f"{RESULTS}/data/datasets/{{dataset}}/manifest.json",
    log:
        log_path("prepare_topics", "{dataset}"),
    benchmark:
        benchmark_path("prepare_topics", "{dataset}")
    container:
        container_image("eval")
    threads: threads_for("prepare_topics")
    resources:
        **resources_for("prepare_topics"),
    params:
        source=lambda wildcards: dataset_entry(wildcards.dataset),
    script:
        "../workflow_scripts/prepare_topics.py"


rule given_candidates:
    input:
        unpack(candidates_source_files),
    output:
        run=f"{RESULTS}/runs/{{dataset}}/first-stage/{{retriever}}.trec",
    log:
        log_path("given_candidates", "{dataset}/{retriever}"),
    benchmark:
        benchmark_path("given_candidates", "{dataset}/{retriever}")
    wildcard_constraints:
        retriever=names_of_kind("retrievers", "given"),
    container:
        container_image("eval")
    threads: threads_for("given_candidates")
    resources:
        **resources_for("given_candidates"),
    params:
        source=lambda wildcards: dataset_entry(wildcards.dataset),
        depth=lambda wildcards: settings("retrievers", wildcards.retriever)["depth"],
    script:
        "../workflow_scripts/given_candidates.py"
