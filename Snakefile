# Rebuilds the paper's tables and figures: snakemake --cores all [--config profile=NAME]
# Profiles live in config/{smoke,quick,paper}.yaml; each rule runs one numbered notebook
# with papermill and keeps the executed copy under results/<profile>/notebooks/.
import json
import subprocess
import sys
from pathlib import Path

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


def experiment(dataset, model, q, seed, forget="9"):
    """The experiment dict one notebook receives (see fedunlearn_lib.ExperimentConfig)."""
    fmt, root = data_spec(dataset)
    base = json.loads(json.dumps(config["experiment"]))
    base["federation"].update(q=float(q), seed=int(seed))
    base["unlearning"]["ratio"] = config["ratio"][dataset][family(model)]
    return {**base, "dataset": fmt, "data_root": root, "model": model,
            "forget": [int(c) for c in forget.split("-")],
            "device": config.get("device", "cpu")}


def papermill(notebook, output, params, threads):
    """Execute notebooks/<notebook>.ipynb into ``output`` with papermill (-y parameters)."""
    params = {**params, "threads": threads}
    subprocess.run([sys.executable, "-m", "papermill", "--no-progress-bar", "--cwd", ".",
                    "-y", json.dumps(params), f"notebooks/{notebook}.ipynb", output],
                   check=True)


EXP = RES + "/{dataset}/{model}/q{q}/seed{seed}"
GRID = [(d, m, q, s, f.replace(",", "-")) for d in config["datasets"] for m in config["models"]
        for q in config["q"] for s in config["seeds"] for f in config["forget"][d]]
METRICS = [f"{RES}/{d}/{m}/q{q}/seed{s}/forget{f}/metrics.json" for d, m, q, s, f in GRID]
FM = config["feature_maps"]
FM_CKPT = (f"{RES}/{config['datasets'][0]}/{FM['model']}/q{config['q'][0]}/"
           f"seed{config['seeds'][0]}/pretrain.pt")


rule all:
    input:
        expand(FIG + "/{name}.{ext}", ext=["png", "pdf"],
               name=["fig2_feature_maps", "fig2_activations", "fig3_accuracy_curves"]),
        expand(FIG + "/table2.{ext}", ext=["csv", "md"]),


rule pretrain:
    output:
        ckpt=EXP + "/pretrain.pt",
        notebook=RES + "/notebooks/02_pretrain_{dataset}_{model}_q{q}_seed{seed}.ipynb",
    threads: config["threads"]
    run:
        papermill("02_pretrain", output.notebook,
                  {"experiment": experiment(wildcards.dataset, wildcards.model, wildcards.q,
                                            wildcards.seed),
                   "out_dir": str(Path(output.ckpt).parent)}, threads)


rule unlearn:
    input:
        pretrained=EXP + "/pretrain.pt",
    output:
        metrics=EXP + "/forget{forget}/metrics.json",
        notebook=RES + "/notebooks/03_unlearn_{dataset}_{model}_q{q}_seed{seed}_forget{forget}.ipynb",
    threads: config["threads"]
    run:
        papermill("03_unlearn", output.notebook,
                  {"experiment": experiment(wildcards.dataset, wildcards.model, wildcards.q,
                                            wildcards.seed, wildcards.forget),
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
        exp = experiment(config["datasets"][0], FM["model"], config["q"][0], config["seeds"][0],
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
