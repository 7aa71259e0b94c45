# Reproducibility beyond one mean: this run's run files against a reference set (compare), one
# archive that holds a result (package), and the check of such an archive here (verify).


include: "reproduce_inputs.smk"


rule compare_runs:
    input:
        unpack(compare_inputs),
    output:
        tsv=report(
            f"{RESULTS}/tables/compare.tsv",
            caption="../reports/captions/compare.rst",
            category="Reproduction",
            labels={"table": "rerun vs reference", "format": "TSV"},
        ),
        topics=f"{RESULTS}/tables/compare.per-topic.tsv",
        effects=f"{RESULTS}/tables/compare.effects.tsv",
        markdown=f"{RESULTS}/tables/compare.md",
    log:
        log_path("compare_runs", "compare"),
    benchmark:
        benchmark_path("compare_runs", "compare")
    localrule: True
    container:
        container_image("eval")
    threads: 1
    params:
        pairs=compare_pairs,
        reference=lambda wildcards: reference_folder(),
        measures=lambda wildcards: reference_setting()["measures"],
        effect_pairs=lambda wildcards: reference_setting()["pairs"],
        tolerance=lambda wildcards: reference_setting()["tolerance"],
    script:
        "../workflow_scripts/compare_runs.py"


rule compare:
    input:
        f"{RESULTS}/tables/compare.tsv",
        f"{RESULTS}/tables/compare.md",


rule package_results:
    input:
        unpack(package_inputs),
    output:
        archive=f"{RESULTS}/package/irflow-reproduction.tar.gz",
    log:
        log_path("package_results", "package"),
    benchmark:
        benchmark_path("package_results", "package")
    localrule: True
    container:
        container_image("eval")
    threads: 1
    params:
        results_dir=lambda wildcards, output: results_dir_of(
            output.archive, "package/irflow-reproduction.tar.gz"
        ),
        # As for the report: the job reads the config files itself, so no raw config value
        # reaches Snakemake's metadata; a package's config is the package's own when verifying.
        config_sources=[str(f) for f in workflow.configfiles],
        config_overrides=redacted(dict(workflow.config_settings.config)),
        package=PLAN.get("package"),
        containers=lambda wildcards: PLAN.get("containers"),
    script:
        "../workflow_scripts/package_results.py"


rule package:
    input:
        f"{RESULTS}/package/irflow-reproduction.tar.gz",


rule verify_package:
    input:
        unpack(verify_inputs),
    output:
        tsv=f"{RESULTS}/tables/verification.tsv",
        markdown=f"{RESULTS}/tables/verification.md",
    log:
        log_path("verify_package", "verification"),
    benchmark:
        benchmark_path("verify_package", "verification")
    localrule: True
    container:
        container_image("eval")
    threads: 1
    params:
        results_dir=lambda wildcards, output: results_dir_of(
            output.tsv, "tables/verification.tsv"
        ),
        mode=PLAN.get("verify_from", "rerun"),
        tolerance=PLAN.get("verify_tolerance", 0.01),
        datasets=lambda wildcards: packaged_datasets(),
        measures=PLAN.section("evaluation").get("measures"),
    script:
        "../workflow_scripts/verify_package.py"


rule verify:
    input:
        f"{RESULTS}/tables/verification.tsv",
    log:
        log_path("verify", "verification"),
    localrule: True
    container:
        container_image("eval")
    threads: 1
    script:
        "../workflow_scripts/check_verification.py"
