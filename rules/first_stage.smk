# First stage: BM25 over a full corpus (bm25s), exact dense retrieval with a bi-encoder.
# Given candidates (the dataset's own run) come from rules/data.smk.


rule bm25_index:
    input:
        corpus=f"{RESULTS}/data/corpora/{{corpus}}/corpus.parquet",
    output:
        index=directory(f"{RESULTS}/indexes/{{corpus}}/{{retriever}}"),
    log:
        log_path("bm25_index", "{corpus}/{retriever}"),
    benchmark:
        benchmark_path("bm25_index", "{corpus}/{retriever}")
    wildcard_constraints:
        retriever=names_of_kind("retrievers", "bm25"),
    container:
        container_image("eval")
    threads: threads_for("bm25_index")
    resources:
        **resources_for("bm25_index"),
    params:
        bm25=lambda wildcards: settings("retrievers", wildcards.retriever),
    script:
        "../workflow_scripts/bm25_index.py"


# Query sets are retrieved in one job, or with resources.bm25_retrieve.query_shards: N in N
# jobs over contiguous blocks of the sorted queries, merged in order: the run file is
# byte-identical either way, so the shard count is an execution setting, not a rerun trigger.
BM25_QUERY_SHARDS = resource_spec("bm25_retrieve").get("query_shards", 1)


if BM25_QUERY_SHARDS == 1:

    rule bm25_retrieve:
        input:
            index=lambda wildcards: f"{RESULTS}/indexes/{corpus_of(wildcards.dataset)}/{wildcards.retriever}",
            queries=queries_parquet,
        output:
            run=f"{RESULTS}/runs/{{dataset}}/first-stage/{{retriever}}.trec",
        log:
            log_path("bm25_retrieve", "{dataset}/{retriever}"),
        benchmark:
            benchmark_path("bm25_retrieve", "{dataset}/{retriever}")
        wildcard_constraints:
            retriever=names_of_kind("retrievers", "bm25"),
        container:
            container_image("eval")
        threads: threads_for("bm25_retrieve")
        resources:
            **resources_for("bm25_retrieve"),
        params:
            depth=lambda wildcards: settings("retrievers", wildcards.retriever)["depth"],
        script:
            "../workflow_scripts/bm25_retrieve.py"

else:

    rule bm25_retrieve_shard:
        input:
            index=lambda wildcards: f"{RESULTS}/indexes/{corpus_of(wildcards.dataset)}/{wildcards.retriever}",
            queries=queries_parquet,
        output:
            run=f"{RESULTS}/run-shards/{{dataset}}/first-stage/{{retriever}}/shard-{{shard}}-of-{{shards}}.trec",
        log:
            log_path(
                "bm25_retrieve_shard",
                "{dataset}/{retriever}/shard-{shard}-of-{shards}",
            ),
        benchmark:
            benchmark_path(
                "bm25_retrieve_shard",
                "{dataset}/{retriever}/shard-{shard}-of-{shards}",
            )
        wildcard_constraints:
            retriever=names_of_kind("retrievers", "bm25"),
            shard="[0-9]+",
            shards="[0-9]+",
        container:
            container_image("eval")
        threads: threads_for("bm25_retrieve")
        resources:
            **resources_for("bm25_retrieve"),
        params:
            depth=lambda wildcards: settings("retrievers", wildcards.retriever)["depth"],
        script:
            "../workflow_scripts/bm25_retrieve_shard.py"

    rule merge_runs:
        input:
            shards=lambda wildcards: bm25_shard_runs(wildcards, BM25_QUERY_SHARDS),
        output:
            run=f"{RESULTS}/runs/{{dataset}}/first-stage/{{retriever}}.trec",
        log:
            log_path("merge_runs", "{dataset}/{retriever}"),
        benchmark:
            benchmark_path("merge_runs", "{dataset}/{retriever}")
        wildcard_constraints:
            retriever=names_of_kind("retrievers", "bm25"),
        localrule: True
        container:
            container_image("eval")
        threads: 1
        script:
            "../workflow_scripts/merge_runs.py"


rule encode_corpus:
    input:
        corpus=f"{RESULTS}/data/corpora/{{corpus}}/corpus.parquet",
        model=lambda wildcards: model_input(wildcards.model),
    output:
        embeddings=directory(f"{RESULTS}/embeddings/{{corpus}}/{{model}}"),
    log:
        log_path("encode_corpus", "{corpus}/{model}"),
    benchmark:
        benchmark_path("encode_corpus", "{corpus}/{model}")
    container:
        container_image("torch")
    threads: threads_for("encode_corpus")
    resources:
        **resources_for("encode_corpus"),
    params:
        model=lambda wildcards: model_entry(wildcards.model),
    script:
        "../workflow_scripts/encode_corpus.py"


rule dense_retrieve:
    input:
        embeddings=lambda wildcards: dense_embeddings(wildcards),
        queries=queries_parquet,
        model=lambda wildcards: model_input(
            settings("retrievers", wildcards.retriever)["model"]
        ),
    output:
        run=f"{RESULTS}/runs/{{dataset}}/first-stage/{{retriever}}.trec",
    log:
        log_path("dense_retrieve", "{dataset}/{retriever}"),
    benchmark:
        benchmark_path("dense_retrieve", "{dataset}/{retriever}")
    wildcard_constraints:
        retriever=names_of_kind("retrievers", "dense"),
    container:
        container_image("torch")
    threads: threads_for("dense_retrieve")
    resources:
        **resources_for("dense_retrieve"),
    params:
        model=lambda wildcards: model_entry(
            settings("retrievers", wildcards.retriever)["model"]
        ),
        depth=lambda wildcards: settings("retrievers", wildcards.retriever)["depth"],
        dim=lambda wildcards: settings("retrievers", wildcards.retriever).get("dim"),
    script:
        "../workflow_scripts/dense_retrieve.py"
