# Training data: training queries (leakage-checked), mined hard negatives, sharded teacher
# scores, consistency-filtered sets. Every student of every study reads these, so a student
# change never re-mines or rescores.


rule select_training_queries:
    input:
        queries=lambda wildcards: f"{RESULTS}/data/datasets/{training_dataset(wildcards)}/queries.parquet",
        qrels=lambda wildcards: f"{RESULTS}/data/datasets/{training_dataset(wildcards)}/qrels.trec",
        held_out=lambda wildcards: list(held_out_queries(wildcards).values()),
    output:
        queries=f"{RESULTS}/training-data/{{train}}/queries.parquet",
        qrels=f"{RESULTS}/training-data/{{train}}/qrels.trec",
        stats=f"{RESULTS}/training-data/{{train}}/queries.stats.json",
    log:
        log_path("select_training_queries", "{train}"),
    benchmark:
        benchmark_path("select_training_queries", "{train}")
    container:
        container_image("eval")
    threads: threads_for("select_training_queries")
    resources:
        **resources_for("select_training_queries"),
    params:
        training_set=lambda wildcards: selection_params(wildcards.train),
        held_out=held_out_queries,
        seed=PLAN.seed,
    script:
        "../workflow_scripts/select_training_queries.py"


# The miner's first stage: the retriever's top-k for the *selected* training queries only (a
# subsample of MS MARCO's 502,939 judged queries is retrieved for, not the whole set). Same
# scripts, resources and query shards (resources.bm25_retrieve.query_shards) as the datasets'
# first-stage rules; the run file is the same whatever the shard count.
if BM25_QUERY_SHARDS == 1:

    rule mining_bm25_retrieve:
        input:
            index=mining_index,
            queries=f"{RESULTS}/training-data/{{train}}/queries.parquet",
        output:
            run=f"{RESULTS}/training-data/{{train}}/runs/{{retriever}}.trec",
        log:
            log_path("mining_bm25_retrieve", "{train}/{retriever}"),
        benchmark:
            benchmark_path("mining_bm25_retrieve", "{train}/{retriever}")
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

    rule mining_bm25_retrieve_shard:
        input:
            index=mining_index,
            queries=f"{RESULTS}/training-data/{{train}}/queries.parquet",
        output:
            run=f"{RESULTS}/training-data/{{train}}/run-shards/{{retriever}}/shard-{{shard}}-of-{{shards}}.trec",
        log:
            log_path(
                "mining_bm25_retrieve_shard",
                "{train}/{retriever}/shard-{shard}-of-{shards}",
            ),
        benchmark:
            benchmark_path(
                "mining_bm25_retrieve_shard",
                "{train}/{retriever}/shard-{shard}-of-{shards}",
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

    rule mining_merge_runs:
        input:
            shards=lambda wildcards: mining_shard_runs(wildcards, BM25_QUERY_SHARDS),
        output:
            run=f"{RESULTS}/training-data/{{train}}/runs/{{retriever}}.trec",
        log:
            log_path("mining_merge_runs", "{train}/{retriever}"),
        benchmark:
            benchmark_path("mining_merge_runs", "{train}/{retriever}")
        wildcard_constraints:
            retriever=names_of_kind("retrievers", "bm25"),
        localrule: True
        container:
            container_image("eval")
        threads: 1
        script:
            "../workflow_scripts/merge_runs.py"


rule mining_dense_retrieve:
    input:
        embeddings=mining_embeddings,
        queries=f"{RESULTS}/training-data/{{train}}/queries.parquet",
        model=lambda wildcards: model_input(
            settings("retrievers", wildcards.retriever)["model"]
        ),
    output:
        run=f"{RESULTS}/training-data/{{train}}/runs/{{retriever}}.trec",
    log:
        log_path("mining_dense_retrieve", "{train}/{retriever}"),
    benchmark:
        benchmark_path("mining_dense_retrieve", "{train}/{retriever}")
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


rule mine_negatives:
    input:
        queries=f"{RESULTS}/training-data/{{train}}/queries.parquet",
        qrels=f"{RESULTS}/training-data/{{train}}/qrels.trec",
        run=miner_run,
        corpus=training_corpus,
    output:
        negatives=f"{RESULTS}/training-data/{{train}}/negatives/{{miner}}.parquet",
        stats=f"{RESULTS}/training-data/{{train}}/negatives/{{miner}}.stats.json",
    log:
        log_path("mine_negatives", "{train}/{miner}"),
    benchmark:
        benchmark_path("mine_negatives", "{train}/{miner}")
    container:
        container_image("eval")
    threads: threads_for("mine_negatives")
    resources:
        **resources_for("mine_negatives"),
    params:
        miner=lambda wildcards: settings("miners", wildcards.miner),
        training_set=lambda wildcards: settings("training_sets", wildcards.train),
        seed=PLAN.seed,
    script:
        "../workflow_scripts/mine_negatives.py"


rule score_teacher_shard:
    input:
        negatives=f"{RESULTS}/training-data/{{train}}/negatives/{{miner}}.parquet",
        queries=f"{RESULTS}/training-data/{{train}}/queries.parquet",
        corpus=training_corpus,
        model=lambda wildcards: model_input(
            settings("teachers", wildcards.teacher)["model"]
        ),
    output:
        shard=f"{RESULTS}/teacher-scores/{{train}}/{{miner}}/{{teacher}}/shard-{{shard}}-of-{{shards}}.parquet",
    log:
        log_path(
            "score_teacher_shard",
            "{train}/{miner}/{teacher}/shard-{shard}-of-{shards}",
        ),
    benchmark:
        benchmark_path(
            "score_teacher_shard",
            "{train}/{miner}/{teacher}/shard-{shard}-of-{shards}",
        )
    wildcard_constraints:
        shard="[0-9]+",
        shards="[0-9]+",
    container:
        container_image("torch")
    threads: threads_for("score_teacher_shard")
    resources:
        **resources_for("score_teacher_shard"),
    params:
        teacher=lambda wildcards: settings("teachers", wildcards.teacher),
        model=lambda wildcards: model_entry(
            settings("teachers", wildcards.teacher)["model"]
        ),
    script:
        "../workflow_scripts/score_teacher_shard.py"


rule merge_teacher_scores:
    input:
        teacher_shards,
    output:
        scores=f"{RESULTS}/teacher-scores/{{train}}/{{miner}}/{{teacher}}.parquet",
        stats=f"{RESULTS}/teacher-scores/{{train}}/{{miner}}/{{teacher}}.stats.json",
    log:
        log_path("merge_teacher_scores", "{train}/{miner}/{teacher}"),
    benchmark:
        benchmark_path("merge_teacher_scores", "{train}/{miner}/{teacher}")
    container:
        container_image("eval")
    threads: threads_for("merge_teacher_scores")
    resources:
        **resources_for("merge_teacher_scores"),
    script:
        "../workflow_scripts/merge_teacher_scores.py"


rule consistency_filter:
    input:
        scores=f"{RESULTS}/teacher-scores/{{train}}/{{miner}}/{{teacher}}.parquet",
    output:
        filtered=f"{RESULTS}/filtered/{{train}}/{{miner}}/{{teacher}}/{{filter}}.parquet",
        stats=f"{RESULTS}/filtered/{{train}}/{{miner}}/{{teacher}}/{{filter}}.stats.json",
    log:
        log_path("consistency_filter", "{train}/{miner}/{teacher}/{filter}"),
    benchmark:
        benchmark_path("consistency_filter", "{train}/{miner}/{teacher}/{filter}")
    container:
        container_image("eval")
    threads: threads_for("consistency_filter")
    resources:
        **resources_for("consistency_filter"),
    params:
        filter=lambda wildcards: settings("filters", wildcards.filter),
    script:
        "../workflow_scripts/consistency_filter.py"


rule training_data_table:
    input:
        training_data_stats_files(),
    output:
        tsv=report(
            f"{RESULTS}/tables/training-data.tsv",
            caption="../reports/captions/training_data.rst",
            category="Training data",
            labels={"table": "training data", "format": "TSV"},
        ),
        markdown=f"{RESULTS}/tables/training-data.md",
    log:
        log_path("training_data_table", "training-data"),
    benchmark:
        benchmark_path("training_data_table", "training-data")
    localrule: True
    container:
        container_image("eval")
    threads: threads_for("training_data_table")
    resources:
        **resources_for("training_data_table"),
    params:
        results_dir=lambda wildcards, output: results_dir_of(
            output.tsv, "tables/training-data.tsv"
        ),
    script:
        "../workflow_scripts/training_data_table.py"
