# Rebuilds the paper's tables and figures: snakemake --cores all [--config profile=NAME]
# Profiles live in config/{smoke,quick,paper}.yaml; each rule runs one numbered notebook
# with papermill and keeps the executed copy under results/<profile>/notebooks/.
import json
import subprocess
import sys
from pathlib import Path

import yaml

PROFILE = config.get("profile", "quick")


configfile: f"config/{PROFILE}.yaml"


RES = f"results/{PROFILE}"
FIG = f"figures/{PROFILE}"


def family(model):
    return "vgg" if model.startswith("vgg") else "resnet"


def data_spec(dataset):
    """(data set name for the loader, data root) for one data set of the grid."""
    fmt = config.get("data_format") or dataset
    if fmt == "imagefolder" and len(config["datasets"]) > 1:
        raise ValueError("data_format=imagefolder needs a grid with a single data set")
    return fmt, config.get("data_root")


def experiment(setting, dataset, model, q, seed, forget="9"):
    """The experiment dict one notebook receives (see fedunlearn_lib.ExperimentConfig).

    ``setting`` "bias" applies the bias sweep's federation overrides (Table 1)."""
    fmt, root = data_spec(dataset)
    base = json.loads(json.dumps(config["experiment"]))
    if setting == "bias":
        base["federation"].update(config["bias"].get("federation") or {})
    base["federation"].update(q=float(q), seed=int(seed))
    base["unlearning"]["ratio"] = config["ratio"][dataset][family(model)]
    return {**base, "dataset": fmt, "data_root": root, "model": model,
            "forget": [int(c) for c in forget.split("-")],
            "device": config.get("device", "cpu")}


def papermill(notebook, output, params, threads):
    """Execute notebooks/<notebook>.ipynb into ``output`` with papermill (-y parameters,
    as YAML: papermill reads them as YAML, where JSON's 1e-06 would become a string)."""
    params = {**params, "threads": threads}
    subprocess.run([sys.executable, "-m", "papermill", "--no-progress-bar", "--cwd", ".",
                    "-y", yaml.safe_dump(params), f"notebooks/{notebook}.ipynb", output],
                   check=True)


EXP = RES + "/{setting}/{dataset}/{model}/q{q}/seed{seed}"


wildcard_constraints:
    setting="main|bias",
    dataset="[^/]+",
    model="[^/]+",


def run_dir(dataset, model, forget, q=None, setting="main"):
    """Output folder of one unlearning run (first seed; q defaults to the grid's first)."""
    q = config["q"][0] if q is None else q
    return f"{RES}/{setting}/{dataset}/{model}/q{q}/seed{config['seeds'][0]}/forget{forget}"


GRID = [(d, m, q, s, f.replace(",", "-")) for d in config["datasets"] for m in config["models"]
        for q in config["q"] for s in config["seeds"] for f in config["forget"][d]]
METRICS = [f"{RES}/main/{d}/{m}/q{q}/seed{s}/forget{f}/metrics.json" for d, m, q, s, f in GRID]
FM = config["feature_maps"]
FM_CKPT = (f"{RES}/main/{config['datasets'][0]}/{FM['model']}/q{config['q'][0]}/"
           f"seed{config['seeds'][0]}/pretrain.pt")
D0 = config["datasets"][0]  # the data set of Tables 3-5 and the ablations (CIFAR-10)
# Tables 4 and 5: per model, the forget sets attacked and compared
MIA_RUNS = [run_dir(D0, m, f) for m, fs in config["mia"].items() for f in fs]
# Table 1: the bias sweep, per data set; its own federation settings when overridden
BIAS = config["bias"]
BIAS_SETTING = "bias" if BIAS.get("federation") else "main"
BIAS_RUNS = [run_dir(d, BIAS["model"], BIAS["forget"][d], q, BIAS_SETTING)
             for d in config["datasets"] for q in BIAS["q"][d]]
# Tables 3 and 6, Figure 4: several classes at once
MULTI_RUNS = [run_dir(D0, m, f) for m, fs in config["multiclass"].items() for f in fs]
ABL = config["ablations"]
ABL_RUN = run_dir(D0, ABL["model"], ABL["forget"])
TABLES = ["table1", "table2", "table3", "table4", "table5", "table_ablations",
          "table_ablation_ratio", "table_ablation_apply", "table_ablation_stability"]
FIGURES = ["fig2_feature_maps", "fig2_activations", "fig3_accuracy_curves",
           "fig4_multiclass_curves", "fig5_class_accuracy", "fig_ablations"]


def metrics_of(runs):
    return [f"{r}/metrics.json" for r in runs]


rule all:
    input:
        expand(FIG + "/{name}.{ext}", ext=["png", "pdf"], name=FIGURES),
        expand(FIG + "/{name}.{ext}", ext=["csv", "md"], name=TABLES),


rule pretrain:
    output:
        ckpt=EXP + "/pretrain.pt",
        notebook=RES + "/notebooks/02_pretrain_{setting}_{dataset}_{model}_q{q}_seed{seed}.ipynb",
    threads: config["threads"]
    run:
        papermill("02_pretrain", output.notebook,
                  {"experiment": experiment(wildcards.setting, wildcards.dataset,
                                            wildcards.model, wildcards.q, wildcards.seed),
                   "out_dir": str(Path(output.ckpt).parent)}, threads)


rule unlearn:
    input:
        pretrained=EXP + "/pretrain.pt",
    output:
        metrics=EXP + "/forget{forget}/metrics.json",
        notebook=RES
        + "/notebooks/03_unlearn_{setting}_{dataset}_{model}_q{q}_seed{seed}_forget{forget}.ipynb",
    threads: config["threads"]
    run:
        papermill("03_unlearn", output.notebook,
                  {"experiment": experiment(wildcards.setting, wildcards.dataset,
                                            wildcards.model, wildcards.q, wildcards.seed,
                                            wildcards.forget),
                   "pretrained": input.pretrained,
                   "out_dir": str(Path(output.metrics).parent)}, threads)


rule feature_maps:
    input:
        checkpoint=FM_CKPT,
    output:
        expand(FIG + "/{name}.{ext}", ext=["png", "pdf"],
               name=["fig2_feature_maps", "fig2_activations"]),
        notebook=RES + "/notebooks/01_feature_maps.ipynb",
    threads: config["threads"]
    run:
        exp = experiment("main", config["datasets"][0], FM["model"], config["q"][0], config["seeds"][0],
                         str(FM["target"]))
        papermill("01_feature_maps", output.notebook,
                  {"experiment": exp, "checkpoint": input.checkpoint, "target": FM["target"],
                   "show_classes": FM["classes"], "figure_dir": FIG}, threads)


rule report:
    input:
        METRICS,
    output:
        expand(FIG + "/fig3_accuracy_curves.{ext}", ext=["png", "pdf"]),
        expand(FIG + "/table2.{ext}", ext=["csv", "md"]),
        notebook=RES + "/notebooks/09_report.ipynb",
    threads: 1
    run:
        papermill("09_report", output.notebook,
                  {"metrics_files": list(input), "figure_dir": FIG}, threads)


def study(notebook, runs, tables=(), figures=()):
    """Input/output spec of one study notebook reading finished runs."""
    return {"runs": metrics_of(runs),
            "out": expand(FIG + "/{name}.{ext}", ext=["csv", "md"], name=list(tables))
            + expand(FIG + "/{name}.{ext}", ext=["png", "pdf"], name=list(figures)),
            "notebook": f"{RES}/notebooks/{notebook}.ipynb"}


def run_study(notebook, metrics, output_notebook, threads, **params):
    papermill(notebook, output_notebook,
              {"runs": [str(Path(m).parent) for m in metrics], "figure_dir": FIG, **params},
              threads)


MIA = study("04_mia", MIA_RUNS, ["table4"])
KL = study("05_kl_distribution", MIA_RUNS, ["table5"], ["fig5_class_accuracy"])
BIAS_STUDY = study("06_bias_fisher", BIAS_RUNS, ["table1"])
MULTI = study("07_multiclass", MULTI_RUNS, ["table3"], ["fig4_multiclass_curves"])
ABLATIONS = study("08_ablations", [ABL_RUN], ["table_ablations", "table_ablation_ratio",
                                             "table_ablation_apply",
                                             "table_ablation_stability"], ["fig_ablations"])


rule mia:
    input:
        MIA["runs"],
    output:
        MIA["out"],
        notebook=MIA["notebook"],
    threads: config["threads"]
    run:
        run_study("04_mia", input, output.notebook, threads)


rule kl_distribution:
    input:
        KL["runs"],
    output:
        KL["out"],
        notebook=KL["notebook"],
    threads: config["threads"]
    run:
        run_study("05_kl_distribution", input, output.notebook, threads)


rule bias_fisher:
    input:
        BIAS_STUDY["runs"],
    output:
        BIAS_STUDY["out"],
        notebook=BIAS_STUDY["notebook"],
    threads: config["threads"]
    run:
        run_study("06_bias_fisher", input, output.notebook, threads,
                  alpha=float(BIAS["alpha"]), relearn_rounds=config["relearn_rounds"],
                  fisher_samples=BIAS.get("fisher_samples"))


rule multiclass:
    input:
        MULTI["runs"],
    output:
        MULTI["out"],
        notebook=MULTI["notebook"],
    threads: config["threads"]
    run:
        run_study("07_multiclass", input, output.notebook, threads,
                  relearn_rounds=config["relearn_rounds"])


rule ablations:
    input:
        ABLATIONS["runs"],
    output:
        ABLATIONS["out"],
        notebook=ABLATIONS["notebook"],
    threads: config["threads"]
    run:
        run_study("08_ablations", input, output.notebook, threads,
                  relearn_rounds=config["relearn_rounds"], budget=ABL["rounds"],
                  ratios=ABL["ratios"], clients=ABL["clients"], repeats=ABL["repeats"],
                  noniid_q=ABL["noniid_q"])
