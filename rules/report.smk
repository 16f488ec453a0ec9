# The report: Table 2 and Figure 3 over seeds, the training curves, the job times
# (table_jobs) and the comparison with the committed reference (figures/<profile>/).


rule report:
    input:
        metrics=METRICS,
        studies=[f for f in expand(FIG + "/{name}.{ext}", ext=["csv", "md"], name=TABLES)
                 + expand(FIG + "/{name}.{ext}", ext=["png", "pdf"], name=FIGURES)
                 if not Path(f).name.startswith(("table2.", "fig3_"))],
        benchmarks=BENCHMARKS,
    output:
        expand(FIG + "/{name}.{ext}", ext=["png", "pdf"],
               name=["fig3_accuracy_curves", "fig_training_curves"]),
        expand(FIG + "/{name}.{ext}", ext=["csv", "md"], name=["table2", *REPORT_TABLES]),
        FIG + "/comparison.md",
        notebook=f"{NB}/09_report.ipynb",
    params:
        reference=REFERENCE,
        tolerance=config["compare_tolerance"],
        raw_targets=config.get("raw_targets", {}),
    threads: threads_of("report")
    resources:
        **resources_of("report"),
    benchmark:
        f"{BENCH}/report/report.tsv"  # its own time is not in table_jobs
    run:
        papermill("09_report", output.notebook,
                  {"metrics_files": list(input.metrics), "figure_dir": FIG,
                   "benchmark_files": list(input.benchmarks), "reference_dir": params.reference,
                   "tolerance": params.tolerance, "raw_targets": params.raw_targets}, threads)
