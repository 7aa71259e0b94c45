# Reranking: rescore a first-stage run's top candidates with a model.


rule rerank_bi_encoder:
    input:
        run=f"{RESULTS}/runs/{{dataset}}/first-stage/{{retriever}}.trec",
        corpus=corpus_parquet,
        queries=queries_parquet,
        model=lambda wildcards: model_input(
            settings("rerankers", wildcards.reranker)["model"]
        ),
    output:
        run=f"{RESULTS}/runs/{{dataset}}/rerank/{{retriever}}/{{reranker}}.trec",
    log:
        log_path("rerank_bi_encoder", "{dataset}/{retriever}/{reranker}"),
    benchmark:
        benchmark_path("rerank_bi_encoder", "{dataset}/{retriever}/{reranker}")
    wildcard_constraints:
        reranker=names_of_kind("rerankers", "bi-encoder"),
    container:
        container_image("torch")
    threads: threads_for("rerank_bi_encoder")
    resources:
        **resources_for("rerank_bi_encoder"),
    params:
        model=lambda wildcards: model_entry(
            settings("rerankers", wildcards.reranker)["model"]
        ),
        depth=lambda wildcards: settings("rerankers", wildcards.reranker)["depth"],
        dim=lambda wildcards: settings("rerankers", wildcards.reranker).get("dim"),
    script:
        "../workflow_scripts/rerank_bi_encoder.py"


rule rerank_cross_encoder:
    input:
        run=f"{RESULTS}/runs/{{dataset}}/first-stage/{{retriever}}.trec",
        corpus=corpus_parquet,
        queries=queries_parquet,
        model=lambda wildcards: model_input(
            settings("rerankers", wildcards.reranker)["model"]
        ),
    output:
        run=f"{RESULTS}/runs/{{dataset}}/rerank/{{retriever}}/{{reranker}}.trec",
    log:
        log_path("rerank_cross_encoder", "{dataset}/{retriever}/{reranker}"),
    benchmark:
        benchmark_path("rerank_cross_encoder", "{dataset}/{retriever}/{reranker}")
    wildcard_constraints:
        reranker=names_of_kind("rerankers", "cross-encoder"),
    container:
        container_image("torch")
    threads: threads_for("rerank_cross_encoder")
    resources:
        **resources_for("rerank_cross_encoder"),
    params:
        model=lambda wildcards: model_entry(
            settings("rerankers", wildcards.reranker)["model"]
        ),
        depth=lambda wildcards: settings("rerankers", wildcards.reranker)["depth"],
    script:
        "../workflow_scripts/rerank_cross_encoder.py"
