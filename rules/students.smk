# Students: GUIDE initialisations, trained rerankers/embedders, and the study tables.
# Evaluation runs reuse the rerank and first-stage rules: every student is registered as a model,
# and a study's arms as rerankers (cross-encoders) or dense retrievers (bi-encoders); see
# rules/common.smk, register_produced_models / register_study_models.


rule init_student:
    input:
        parent=lambda wildcards: model_input(settings("inits", wildcards.init)["from"]),
    output:
        model=directory(f"{RESULTS}/inits/{{init}}/model"),
        stats=f"{RESULTS}/inits/{{init}}/init.stats.json",
    log:
        log_path("init_student", "{init}"),
    benchmark:
        benchmark_path("init_student", "{init}")
    wildcard_constraints:
        init=names_of("inits"),
    container:
        container_image("torch")
    threads: threads_for("init_student")
    resources:
        **resources_for("init_student"),
    params:
        parent=lambda wildcards: model_entry(settings("inits", wildcards.init)["from"]),
        strategy=lambda wildcards: settings("inits", wildcards.init)["strategy"],
        num_layers=lambda wildcards: settings("inits", wildcards.init).get("num_layers"),
        layers=lambda wildcards: settings("inits", wildcards.init).get("layers"),
        hidden_size=lambda wildcards: settings("inits", wildcards.init).get(
            "hidden_size"
        ),
        intermediate_size=lambda wildcards: settings("inits", wildcards.init).get(
            "intermediate_size"
        ),
        num_attention_heads=lambda wildcards: settings("inits", wildcards.init).get(
            "num_attention_heads"
        ),
    script:
        "../workflow_scripts/init_student.py"


rule train_student:
    input:
        unpack(training_inputs("students")),
        init=student_init,
    output:
        model=directory(f"{RESULTS}/students/{{student}}/model"),
        curves=f"{RESULTS}/students/{{student}}/curves.jsonl",
        stats=f"{RESULTS}/students/{{student}}/train.stats.json",
    log:
        log_path("train_student", "{student}"),
    benchmark:
        benchmark_path("train_student", "{student}")
    wildcard_constraints:
        student=names_of("students"),
    container:
        container_image("torch")
    threads: threads_for("train_student")
    resources:
        **resources_for("train_student"),
        # Where checkpoints fall does not change the weights: a resource, not a param, so
        # editing it reruns nothing.
        checkpoint_every_steps=lambda wildcards: PLAN.checkpoint_every_steps(
            "students", wildcards.student
        ),
    params:
        student=student_params,
        checkpoints=checkpoint_folder("students"),
    script:
        "../workflow_scripts/train_student.py"


rule untrained_student:
    input:
        init=student_init,
    output:
        model=directory(f"{RESULTS}/students/{{student}}/untrained"),
    log:
        log_path("untrained_student", "{student}"),
    benchmark:
        benchmark_path("untrained_student", "{student}")
    wildcard_constraints:
        student=names_of("students"),
    container:
        container_image("torch")
    threads: threads_for("untrained_student")
    resources:
        **resources_for("untrained_student"),
    params:
        # Only what decides the starting weights: changing an objective or optimizer setting
        # does not rebuild the untrained baseline.
        kind=lambda wildcards: settings("students", wildcards.student)["kind"],
        init=lambda wildcards: model_entry(
            settings("students", wildcards.student)["init"]
        ),
        seed=lambda wildcards: student_params(wildcards)["seed"],
        max_length=lambda wildcards: settings("students", wildcards.student)[
            "training"
        ].get("max_length"),
    script:
        "../workflow_scripts/untrained_student.py"
