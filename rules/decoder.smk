# Unified decoder: one decoder LM with adapters that both embeds and reranks.
# A base model (converted from GGUF once, or a hub id / folder) -> staged training of each arm
# on a training-data artifact -> the arm as a dense retriever, a cosine reranker and a yes/no
# reranker -> metric tables (rule evaluate_run) -> decoder study tables. Paths and the checks
# on the configuration: rules/decoder_inputs.smk.


include: "decoder_inputs.smk"


# Decoder arms have their own corpus embeddings (another encoder); arm names are never model
# names (checked), so this only settles which rule builds results/embeddings/<corpus>/<arm>.
ruleorder: decoder_encode_corpus > encode_corpus


rule convert_gguf:
    input:
        gguf=gguf_file_input,
    output:
        model=directory(f"{RESULTS}/models/{{gguf}}"),
    log:
        log_path("convert_gguf", "{gguf}"),
    benchmark:
        benchmark_path("convert_gguf", "{gguf}")
    wildcard_constraints:
        gguf="|".join(re.escape(n) for n in sorted(gguf_sources())) or _nothing(),
    container:
        container_image("torch")
    threads: threads_for("convert_gguf")
    resources:
        **resources_for("convert_gguf"),
    params:
        source=lambda wildcards: gguf_sources()[wildcards.gguf],
    script:
        "../workflow_scripts/convert_gguf.py"


rule train_unified:
    input:
        unpack(training_inputs("decoders")),
        base=decoder_base_input,
    output:
        model=directory(f"{RESULTS}/decoders/{{arm}}/model"),
        diagnostics=directory(f"{RESULTS}/decoders/{{arm}}/diagnostics"),
        stats=f"{RESULTS}/decoders/{{arm}}/train.stats.json",
    log:
        log_path("train_unified", "{arm}"),
    benchmark:
        benchmark_path("train_unified", "{arm}")
    wildcard_constraints:
        arm=names_of("decoders"),
    container:
        container_image("torch")
    threads: threads_for("train_unified")
    resources:
        **resources_for("train_unified"),
        # Where checkpoints fall does not change the weights: a resource, not a param.
        checkpoint_every_steps=lambda wildcards: PLAN.checkpoint_every_steps(
            "decoders", wildcards.arm
        ),
    params:
        # Everything that decides the weights (a rerun trigger), and nothing else.
        spec=lambda wildcards: decoder_spec(wildcards.arm),
        base=lambda wildcards: decoder_base_entry(wildcards.arm),
        data=lambda wildcards: settings("decoders", wildcards.arm)["data"],
        checkpoints=checkpoint_folder("decoders"),
    script:
        "../workflow_scripts/train_unified.py"


rule decoder_diagnostics:
    input:
        diagnostics=f"{RESULTS}/decoders/{{arm}}/diagnostics",
    output:
        grad_cosine=f"{RESULTS}/decoders/{{arm}}/plots/grad_cosine.svg",
        expert_usage=f"{RESULTS}/decoders/{{arm}}/plots/expert_usage.svg",
    log:
        log_path("decoder_diagnostics", "{arm}"),
    benchmark:
        benchmark_path("decoder_diagnostics", "{arm}")
    wildcard_constraints:
        arm=names_of("decoders"),
    container:
        container_image("torch")
    threads: threads_for("decoder_diagnostics")
    resources:
        **resources_for("decoder_diagnostics"),
    script:
        "../workflow_scripts/decoder_diagnostics.py"


rule decoder_encode_corpus:
    input:
        unpack(decoder_inputs_of),
        corpus=f"{RESULTS}/data/corpora/{{corpus}}/corpus.parquet",
    output:
        embeddings=directory(f"{RESULTS}/embeddings/{{corpus}}/{{arm}}"),
    log:
        log_path("decoder_encode_corpus", "{corpus}/{arm}"),
    benchmark:
        benchmark_path("decoder_encode_corpus", "{corpus}/{arm}")
    wildcard_constraints:
        arm=names_of("decoders"),
    container:
        container_image("torch")
    threads: threads_for("decoder_encode_corpus")
    resources:
        **resources_for("decoder_encode_corpus"),
    params:
        base=lambda wildcards: decoder_base_entry(wildcards.arm),
        inference=lambda wildcards: settings("decoders", wildcards.arm)["inference"],
    script:
        "../workflow_scripts/decoder_encode_corpus.py"


rule decoder_dense_retrieve:
    input:
        unpack(decoder_inputs_of),
        embeddings=decoder_embeddings,
        queries=queries_parquet,
    output:
        run=f"{RESULTS}/runs/{{dataset}}/first-stage/{{arm}}.trec",
    log:
        log_path("decoder_dense_retrieve", "{dataset}/{arm}"),
    benchmark:
        benchmark_path("decoder_dense_retrieve", "{dataset}/{arm}")
    wildcard_constraints:
        arm=names_of("decoders"),
    container:
        container_image("torch")
    threads: threads_for("decoder_dense_retrieve")
    resources:
        **resources_for("decoder_dense_retrieve"),
    params:
        base=lambda wildcards: decoder_base_entry(wildcards.arm),
        inference=lambda wildcards: settings("decoders", wildcards.arm)["inference"],
        depth=decoder_depth("dense"),
    script:
        "../workflow_scripts/decoder_dense_retrieve.py"


rule decoder_cosine_rerank:
    input:
        unpack(decoder_inputs_of),
        run=f"{RESULTS}/runs/{{dataset}}/first-stage/{{retriever}}.trec",
        corpus=corpus_parquet,
        queries=queries_parquet,
    output:
        run=f"{RESULTS}/runs/{{dataset}}/rerank/{{retriever}}/{{arm}}.cosine.trec",
    log:
        log_path("decoder_cosine_rerank", "{dataset}/{retriever}/{arm}"),
    benchmark:
        benchmark_path("decoder_cosine_rerank", "{dataset}/{retriever}/{arm}")
    wildcard_constraints:
        arm=names_of("decoders"),
    container:
        container_image("torch")
    threads: threads_for("decoder_cosine_rerank")
    resources:
        **resources_for("decoder_cosine_rerank"),
    params:
        base=lambda wildcards: decoder_base_entry(wildcards.arm),
        inference=lambda wildcards: settings("decoders", wildcards.arm)["inference"],
        depth=decoder_depth("cosine"),
    script:
        "../workflow_scripts/decoder_cosine_rerank.py"


rule decoder_rerank:
    input:
        unpack(decoder_inputs_of),
        run=f"{RESULTS}/runs/{{dataset}}/first-stage/{{retriever}}.trec",
        corpus=corpus_parquet,
        queries=queries_parquet,
    output:
        run=f"{RESULTS}/runs/{{dataset}}/rerank/{{retriever}}/{{arm}}.yesno.trec",
    log:
        log_path("decoder_rerank", "{dataset}/{retriever}/{arm}"),
    benchmark:
        benchmark_path("decoder_rerank", "{dataset}/{retriever}/{arm}")
    wildcard_constraints:
        arm=names_of("decoders"),
    container:
        container_image("torch")
    threads: threads_for("decoder_rerank")
    resources:
        **resources_for("decoder_rerank"),
    params:
        base=lambda wildcards: decoder_base_entry(wildcards.arm),
        inference=lambda wildcards: settings("decoders", wildcards.arm)["inference"],
        depth=decoder_depth("yesno"),
    script:
        "../workflow_scripts/decoder_rerank.py"


rule decoders:
    input:
        decoder_targets(),
