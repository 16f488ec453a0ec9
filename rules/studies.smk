# The study notebooks: Figure 2 (feature maps, on a pretrained model) and the seven that
# read finished runs (Tables 1, 3-5, the ablations, robustness, the deciding comparison),
# which share one rule pattern and are written once, in the loop below.


rule feature_maps:
    input:
        checkpoint=FM_CKPT,
    output:
        expand(FIG + "/{name}.{ext}", ext=["png", "pdf"],
               name=["fig2_feature_maps", "fig2_activations"]),
        notebook=f"{NB}/01_feature_maps.ipynb",
    params:
        experiment=pretrain_experiment(*FM_PRE),
        figure={"target": FM["target"], "show_classes": FM["classes"]},
    threads: threads_of("study")
    resources:
        **resources_of("study"),
    benchmark:
        f"{BENCH}/feature_maps/feature_maps.tsv"
    run:
        papermill("01_feature_maps", output.notebook,
                  {"experiment": placed(params.experiment), "checkpoint": input.checkpoint,
                   **params.figure, "figure_dir": FIG}, threads)


def study(notebook, runs, tables=(), figures=(), extra=None, **params):
    """Input/output spec of one study notebook reading finished runs; ``params`` are its
    parameters (one dict: Snakemake compares params by value without their names);
    ``extra``: more run folders it reads, notebook parameter -> folders."""
    return {"notebook": notebook, "runs": metrics_of(runs),
            "extra": {k: metrics_of(v) for k, v in (extra or {}).items()},
            "out": expand(FIG + "/{name}.{ext}", ext=["csv", "md"], name=list(tables))
            + expand(FIG + "/{name}.{ext}", ext=["png", "pdf"], name=list(figures)),
            "executed": f"{NB}/{notebook}.ipynb", "params": dict(sorted(params.items()))}


# rule name -> its notebook, the runs it reads, what it writes and its parameters
STUDIES = {
    "mia": study("04_mia", MIA_RUNS, ["table4"]),
    "kl_distribution": study("05_kl_distribution", KL_RUNS, ["table5"],
                             ["fig5_class_accuracy"]),
    "bias_fisher": study("06_bias_fisher", BIAS_RUNS, ["table1"], **BIAS.get("fisher", {}),
                         fisher_samples=BIAS.get("fisher_samples"),
                         relearn_rounds=config["relearn_rounds"]),
    "multiclass": study("07_multiclass", MULTI_RUNS, ["table3"], ["fig4_multiclass_curves"],
                        relearn_rounds=config["relearn_rounds"]),
    "ablations": study("08_ablations", [ABL_RUN],
                       ["table_ablations", "table_ablation_ratio", "table_ablation_apply",
                        "table_ablation_stability", "table_idf_readings"],
                       ["fig_ablations"], relearn_rounds=config["relearn_rounds"],
                       budget=ABL["rounds"], ratios=ABL["ratios"], clients=ABL["clients"],
                       repeats=ABL["repeats"], noniid_q=ABL["noniid_q"]),
    "robustness": study("10_robustness", [ABL_RUN], ["table_robustness"], ["fig_robustness"],
                        **config["robustness"]),
    # sensitivity_runs: the same comparison at decide.sensitivity.lr (empty without one)
    "decide": study("11_decide", DECIDE_RUNS,
                    ["table_decide", "table_decide_paired", "table_decide_sensitivity"],
                    ["fig_decide"], extra={"sensitivity_runs": SENSITIVITY_RUNS},
                    relearn_rounds=config["relearn_rounds"]),
}
assert set(STUDIES) | {"feature_maps"} == set(STUDY_RULES)


def run_study(spec, input, output_notebook, threads, params):
    """Execute a study notebook on its runs' folders (and its extra folders) with
    ``params``."""
    def folders(metrics):  # a named input of one file may come as a string, none as ""
        metrics = [metrics] if isinstance(metrics, str) and metrics else metrics or []
        return [str(Path(m).parent) for m in metrics]

    papermill(spec["notebook"], output_notebook,
              {"runs": folders(input.runs), "figure_dir": FIG,
               **{k: folders(input.get(k)) for k in spec["extra"]}, **params},
              threads)


for name, spec in STUDIES.items():

    rule:
        name:
            name
        input:
            runs=spec["runs"],
            **spec["extra"],
        output:
            spec["out"],
            notebook=spec["executed"],
        params:
            study=spec["params"],
        threads: threads_of("study")
        resources:
            **resources_of("study"),
        benchmark:
            f"{BENCH}/{name}/{name}.tsv"
        run:
            run_study(STUDIES[rule], input, output.notebook, threads, params.study)
