# Rebuilds the paper's tables and figures: snakemake --cores all [--config profile=NAME]
# Profiles live in config/{smoke,quick,paper}.yaml; each rule runs one numbered notebook
# with papermill and keeps the executed copy under results/<profile>/notebooks/.
# Every rule declares threads and resources (gpu, mem_mb, runtime in minutes) from the
# profile's resources:, so it also runs on a cluster, e.g. on Slurm:
#   snakemake --profile profiles/slurm --config profile=paper
#
# Tables and figures go to results/<profile>/figures/; the committed reference results of
# a profile live in figures/<profile>/, and the report compares the two (comparison.md).
# Every job's time is recorded (benchmark:) under results/<profile>/benchmarks/<rule>/ and
# summed in table_jobs (all but the report's own, which writes that table).
#
# Result identity: a run's folder names a short hash of every setting that changes its
# result, so editing a profile rebuilds exactly what depends on the edit and keeps the old
# results beside the new ones:
#   results/<profile>/<setting>/<dataset>/<model>/q<q>/seed<seed>/p<P>/pretrain.pt
#   .../p<P>/forget<f>/retrain.pt  (one retraining per forget set and pretraining seed)
#   .../p<P>/forget<f>/<arm>-s<unlearning seed>-u<U>/metrics.json
# P hashes the settings pretraining reads, U all settings of the run (see experiment());
# the data root, the device and thread counts are not hashed. Settings: "main" (the
# headline: Table 2 and the deciding comparison), "small" (the secondary tables at the
# profile's secondary: scale, when it has one) and "bias" (Table 1's own overrides).
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import yaml

from fedunlearn_lib.unlearn import ARMS

PROFILE = config.get("profile", "quick")


configfile: f"config/{PROFILE}.yaml"


RES = f"results/{PROFILE}"
FIG = f"{RES}/figures"
REFERENCE = f"figures/{PROFILE}"  # the committed results this profile's rebuild is compared with
BENCH = f"{RES}/benchmarks"
ARM = config["arm"]  # the paper's arm: Table 2 and every study
USEEDS = config["unlearning_seeds"]  # per pretrained model (local proc draw, fine-tuning order)

# Keys that only unlearning and fine-tuning read; pretraining and retraining ignore them.
UNLEARN_ONLY = ("unlearning", "finetune_rounds", "finetune_lr")
# Keys that retraining reads (its target and cap) besides pretraining's.
RETRAIN_ONLY = ("retrain_rounds", "target_r_acc", "target_margin", "strict_u")
# Keys that do not change a result (where the data lies, what computes it): left out of
# the settings a rule hashes and takes as params, and added back when the notebook runs.
PLACEMENT = ("data_root", "device", "threads")


def family(model):
    return "vgg" if model.startswith("vgg") else "resnet"


def loader(dataset):
    """The data set name the library's loader gets for one data set of the grid."""
    fmt = config.get("data_format") or dataset
    if fmt == "imagefolder" and len(config["datasets"]) > 1:
        raise ValueError("data_format=imagefolder needs a grid with a single data set")
    return fmt


def forget_sets(dataset):
    """The data set's forget sets of the main grid, as path components (0-9)."""
    return [f.replace(",", "-") for f in config["forget"][dataset]]


def merged(base, over):
    """``base`` with ``over``'s keys; the federation and unlearning sections key by key."""
    out = {**base, **{k: v for k, v in over.items() if k not in ("federation", "unlearning")}}
    for part in ("federation", "unlearning"):
        out[part] = {**base.get(part, {}), **(over.get(part) or {})}
    return out


def per_model(model):
    """The profile's per_model: entry of ``model``: its own seeds and experiment settings."""
    return (config.get("per_model") or {}).get(model) or {}


def seeds_of(model):
    """The pretraining seeds of ``model`` in the main grid."""
    return per_model(model).get("seeds", config["seeds"])


def useeds_of(model):
    """The unlearning seeds of ``model`` in the main grid (per pretrained model)."""
    return per_model(model).get("unlearning_seeds", USEEDS)


def experiment(setting, dataset, model, q, seed, forget, arm=ARM, useed=0):
    """The result-changing settings of one run (see fedunlearn_lib.ExperimentConfig).

    ``setting`` "small" applies the profile's secondary: scale, "bias" that scale and the
    bias sweep's overrides (Table 1); ``arm`` (one of unlearn.ARMS) and the unlearning seed
    ``useed`` set how channels are chosen and the unlearning's random draws."""
    base = {k: v for k, v in json.loads(json.dumps(config["experiment"])).items()
            if k not in PLACEMENT}
    base = merged(base, per_model(model).get("experiment") or {})
    if setting in ("small", "bias"):
        base = merged(base, config.get("secondary") or {})
    if setting == "bias":
        base = merged(base, {p: config["bias"].get(p) for p in ("federation", "unlearning")})
    base["federation"].update(q=float(q), seed=int(seed))
    base["unlearning"].update(ratio=config["ratio"][dataset][family(model)], **ARMS[arm],
                              seed=int(useed))
    exp = {**base, "dataset": loader(dataset), "model": model,
           "forget": [int(c) for c in forget.split("-")]}
    # keys sorted: Snakemake compares params by repr, so a profile whose keys come in
    # another order (e.g. a --configfile written by yaml.safe_dump) reruns nothing
    return json.loads(json.dumps(exp, sort_keys=True))


def pretrain_experiment(setting, dataset, model, q, seed, forget=None):
    """The settings pretraining reads; its U-set (left out of the plateau rule's R-set
    accuracy) is the data set's first forget set of the main grid, for every run. With
    ``forget``: the settings of that forget set's retraining (its target and cap too)."""
    exp = experiment(setting, dataset, model, q, seed, forget or forget_sets(dataset)[0])
    drop = UNLEARN_ONLY + (() if forget else RETRAIN_ONLY)
    return {k: v for k, v in exp.items() if k not in drop}


def placed(exp):
    """``exp`` as a notebook receives it: with the data root and the device."""
    return {**exp, "data_root": config.get("data_root"), "device": config.get("device", "cpu")}


def settings_hash(exp):
    """8 hex digits of the sha256 of ``exp``'s canonical JSON (a path component)."""
    blob = json.dumps(exp, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:8]


def checked(kind, wildcard, exp):
    """``exp`` if the path's hash ``wildcard`` is the one the profile gives; else an error."""
    expected = settings_hash(exp)
    if wildcard != expected:
        raise ValueError(
            f"{kind} hash {wildcard} in the requested path does not match profile "
            f"'{PROFILE}', whose settings hash to {expected}: the path was made with other "
            f"settings; ask for the workflow's own targets (e.g. snakemake --config "
            f"profile={PROFILE})")
    return exp


def pretrain_params(wc):
    exp = pretrain_experiment(wc.setting, wc.dataset, wc.model, wc.q, wc.seed)
    return checked("pretraining", wc.phash, exp)


def retrain_params(wc):
    pretrain_params(wc)
    return pretrain_experiment(wc.setting, wc.dataset, wc.model, wc.q, wc.seed, wc.forget)


def unlearn_params(wc):
    pretrain_params(wc)
    exp = experiment(wc.setting, wc.dataset, wc.model, wc.q, wc.seed, wc.forget, wc.arm,
                     wc.useed)
    return checked("unlearning", wc.uhash, exp)


def papermill(notebook, output, params, threads):
    """Execute notebooks/<notebook>.ipynb into ``output`` with papermill (-y parameters,
    as YAML: papermill reads them as YAML, where JSON's 1e-06 would become a string)."""
    params = {**params, "threads": threads}
    subprocess.run([sys.executable, "-m", "papermill", "--no-progress-bar", "--cwd", ".",
                    "-y", yaml.safe_dump(params), f"notebooks/{notebook}.ipynb", output],
                   check=True)


def resources_of(kind):
    """gpu, mem_mb and runtime (minutes) of one kind of rule: the profile's resources.<kind>
    (kinds: pretrain, unlearn, study, report)."""
    return {k: v for k, v in config["resources"][kind].items() if k != "threads"}


def threads_of(kind):
    return config["resources"][kind]["threads"]


EXP = RES + "/{setting}/{dataset}/{model}/q{q}/seed{seed}"
PRE = EXP + "/p{phash}"
FORGET = PRE + "/forget{forget}"
RUN = FORGET + "/{arm}-s{useed}-u{uhash}"
NB = RES + "/notebooks"
NAME = "{setting}_{dataset}_{model}_q{q}_seed{seed}_p{phash}"  # executed notebooks
JOB = NAME + "_forget{forget}"


wildcard_constraints:
    setting="main|small|bias",
    arm="|".join(ARMS),
    useed="[0-9]+",
    dataset="[^/]+",
    model="[^/]+",
    q="[0-9.]+",
    seed="[0-9]+",
    forget="[0-9]+(-[0-9]+)*",
    phash="[0-9a-f]{8}",
    uhash="[0-9a-f]{8}",


def pretrain_dir(setting, dataset, model, q, seed):
    """Output folder of one pretraining."""
    p = settings_hash(pretrain_experiment(setting, dataset, model, q, seed))
    return f"{RES}/{setting}/{dataset}/{model}/q{q}/seed{seed}/p{p}"


def run_dir(dataset, model, forget, q=None, setting="main", seed=None, arm=ARM, useed=0):
    """Output folder of one unlearning run (q defaults to the data set's first, seed to the
    profile's first)."""
    q = config["q"][dataset][0] if q is None else q
    seed = config["seeds"][0] if seed is None else seed
    u = settings_hash(experiment(setting, dataset, model, q, seed, forget, arm, useed))
    return f"{pretrain_dir(setting, dataset, model, q, seed)}/forget{forget}/{arm}-s{useed}-u{u}"


def metrics_of(runs):
    return [f"{r}/metrics.json" for r in runs]


D0 = config["datasets"][0]  # the data set of Tables 3-5, the ablations and the decision
SMALL = "small" if config.get("secondary") else "main"  # the secondary tables' setting
# Table 2 and Figure 3: every data set x model x q x seed x unlearning seed x forget set
GRID = [(d, m, q, s, u, f) for d in config["datasets"] for m in config["models"]
        for q in config["q"][d] for s in seeds_of(m) for u in useeds_of(m)
        for f in forget_sets(d)]
METRICS = metrics_of(run_dir(d, m, f, q, seed=s, useed=u) for d, m, q, s, u, f in GRID)
# The deciding comparison: every arm x seed x unlearning seed, one model and forget set
DECIDE = config["decide"]
DECIDE_RUNS = [run_dir(D0, DECIDE["model"], DECIDE["forget"], seed=s, arm=a, useed=u)
               for a in DECIDE["arms"] for s in seeds_of(DECIDE["model"])
               for u in useeds_of(DECIDE["model"])]
FM = config["feature_maps"]
FM_PRE = (SMALL, D0, FM["model"], config["q"][D0][0], config["seeds"][0])  # its pretraining
FM_CKPT = pretrain_dir(*FM_PRE) + "/pretrain.pt"
# Table 4 (MIA) and Table 5 (KL): per model, the forget sets attacked and compared
MIA_RUNS = [run_dir(D0, m, f, setting=SMALL) for m, fs in config["mia"].items() for f in fs]
KL_RUNS = [run_dir(D0, m, f, setting=SMALL)
           for m, fs in config.get("kl", config["mia"]).items() for f in fs]
# Table 1: the bias sweep, per data set; setting "bias" when it overrides any settings
BIAS = config["bias"]
BIAS_SETTING = "bias" if BIAS.get("federation") or BIAS.get("unlearning") else SMALL
BIAS_RUNS = [run_dir(d, BIAS["model"], BIAS["forget"][d], q, BIAS_SETTING)
             for d in config["datasets"] for q in BIAS["q"][d]]
# Tables 3 and 6, Figure 4: several classes at once
MULTI_RUNS = [run_dir(D0, m, f, setting=SMALL) for m, fs in config["multiclass"].items()
              for f in fs]
ABL = config["ablations"]
ABL_RUN = run_dir(D0, ABL["model"], ABL["forget"], setting=SMALL)
ALL_RUNS = sorted({*(str(Path(m).parent) for m in METRICS), *DECIDE_RUNS, *MIA_RUNS, *KL_RUNS,
                   *BIAS_RUNS, *MULTI_RUNS, ABL_RUN})
STUDY_RULES = ("feature_maps", "mia", "kl_distribution", "bias_fisher", "multiclass",
               "ablations", "robustness", "decide")


def benchmarks_of(run):
    """The time records of the jobs behind one run folder: its pretraining, retraining and
    unlearning."""
    rel = Path(run).relative_to(RES).parts
    setting, dataset, model, q, seed, phash, forget, arm_run = rel
    name = NAME.format(setting=setting, dataset=dataset, model=model, q=q[1:], seed=seed[4:],
                       phash=phash[1:])
    job = f"{name}_{forget}"
    return [f"{BENCH}/pretrain/{name}.tsv", f"{BENCH}/retrain/{job}.tsv",
            f"{BENCH}/unlearn/{job}_{arm_run}.tsv"]


FM_BENCH = "{}/pretrain/{}.tsv".format(
    BENCH, NAME.format(setting=FM_PRE[0], dataset=D0, model=FM["model"], q=FM_PRE[3],
                       seed=FM_PRE[4], phash=Path(pretrain_dir(*FM_PRE)).name[1:]))
BENCHMARKS = sorted({*(b for r in ALL_RUNS for b in benchmarks_of(r)), FM_BENCH,
                     *(f"{BENCH}/{rule}/{rule}.tsv" for rule in STUDY_RULES)})
TABLES = ["table1", "table2", "table3", "table4", "table5", "table_decide",
          "table_decide_paired", "table_ablations",
          "table_ablation_ratio", "table_ablation_apply", "table_ablation_stability",
          "table_idf_readings", "table_robustness"]
REPORT_TABLES = ["table2_runs", "table_training", "table_jobs"]  # the report's own, beside Table 2
FIGURES = ["fig2_feature_maps", "fig2_activations", "fig3_accuracy_curves",
           "fig4_multiclass_curves", "fig5_class_accuracy", "fig_decide", "fig_ablations",
           "fig_robustness"]


localrules:
    all,


rule all:
    input:
        expand(FIG + "/{name}.{ext}", ext=["png", "pdf"], name=FIGURES),
        expand(FIG + "/{name}.{ext}", ext=["csv", "md"], name=TABLES + REPORT_TABLES),
        expand(FIG + "/fig_training_curves.{ext}", ext=["png", "pdf"]),
        FIG + "/comparison.md",


rule pretrain:
    output:
        ckpt=PRE + "/pretrain.pt",
        notebook=f"{NB}/02_pretrain_{NAME}.ipynb",
    params:
        experiment=pretrain_params,
    threads: threads_of("pretrain")
    resources:
        **resources_of("pretrain"),
    benchmark:
        f"{BENCH}/pretrain/{NAME}.tsv"
    run:
        papermill("02_pretrain", output.notebook,
                  {"experiment": placed(params.experiment), "checkpoint": output.ckpt}, threads)


rule retrain:
    input:
        pretrained=PRE + "/pretrain.pt",  # the target is the raw model's accuracy
    output:
        ckpt=FORGET + "/retrain.pt",
        notebook=f"{NB}/02_retrain_{JOB}.ipynb",
    params:
        experiment=retrain_params,
    threads: threads_of("pretrain")
    resources:
        **resources_of("pretrain"),
    benchmark:
        f"{BENCH}/retrain/{JOB}.tsv"
    run:
        papermill("02_pretrain", output.notebook,
                  {"experiment": placed(params.experiment), "checkpoint": output.ckpt,
                   "phase": "retrain", "pretrained": input.pretrained}, threads)


rule unlearn:
    input:
        pretrained=PRE + "/pretrain.pt",
        retrained=FORGET + "/retrain.pt",
    output:
        metrics=RUN + "/metrics.json",
        notebook=f"{NB}/03_unlearn_{JOB}_{{arm}}-s{{useed}}-u{{uhash}}.ipynb",
    params:
        experiment=unlearn_params,
    threads: threads_of("unlearn")
    resources:
        **resources_of("unlearn"),
    benchmark:
        f"{BENCH}/unlearn/{JOB}_{{arm}}-s{{useed}}-u{{uhash}}.tsv"
    run:
        papermill("03_unlearn", output.notebook,
                  {"experiment": placed(params.experiment), "pretrained": input.pretrained,
                   "retrained": input.retrained,
                   "out_dir": str(Path(output.metrics).parent)}, threads)


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


def study(notebook, runs, tables=(), figures=(), **params):
    """Input/output spec of one study notebook reading finished runs; ``params`` are its
    parameters (one dict: Snakemake compares params by value without their names)."""
    return {"runs": metrics_of(runs),
            "out": expand(FIG + "/{name}.{ext}", ext=["csv", "md"], name=list(tables))
            + expand(FIG + "/{name}.{ext}", ext=["png", "pdf"], name=list(figures)),
            "notebook": f"{NB}/{notebook}.ipynb", "params": dict(sorted(params.items()))}


def run_study(notebook, metrics, output_notebook, threads, params):
    """Execute a study notebook on the run folders of ``metrics`` with ``params``."""
    papermill(notebook, output_notebook,
              {"runs": [str(Path(m).parent) for m in metrics], "figure_dir": FIG, **params},
              threads)


MIA = study("04_mia", MIA_RUNS, ["table4"])
KL = study("05_kl_distribution", KL_RUNS, ["table5"], ["fig5_class_accuracy"])
BIAS_STUDY = study("06_bias_fisher", BIAS_RUNS, ["table1"], **BIAS.get("fisher", {}),
                   fisher_samples=BIAS.get("fisher_samples"),
                   relearn_rounds=config["relearn_rounds"])
MULTI = study("07_multiclass", MULTI_RUNS, ["table3"], ["fig4_multiclass_curves"],
              relearn_rounds=config["relearn_rounds"])
ABLATIONS = study("08_ablations", [ABL_RUN], ["table_ablations", "table_ablation_ratio",
                                             "table_ablation_apply", "table_ablation_stability",
                                             "table_idf_readings"],
                  ["fig_ablations"], relearn_rounds=config["relearn_rounds"],
                  budget=ABL["rounds"], ratios=ABL["ratios"], clients=ABL["clients"],
                  repeats=ABL["repeats"], noniid_q=ABL["noniid_q"])
DECISION = study("11_decide", DECIDE_RUNS, ["table_decide", "table_decide_paired"], ["fig_decide"],
                  relearn_rounds=config["relearn_rounds"])
ROBUSTNESS = study("10_robustness", [ABL_RUN], ["table_robustness"], ["fig_robustness"],
                   **config["robustness"])


rule mia:
    input:
        MIA["runs"],
    output:
        MIA["out"],
        notebook=MIA["notebook"],
    params:
        study=MIA["params"],
    threads: threads_of("study")
    resources:
        **resources_of("study"),
    benchmark:
        f"{BENCH}/mia/mia.tsv"
    run:
        run_study("04_mia", input, output.notebook, threads, params.study)


rule kl_distribution:
    input:
        KL["runs"],
    output:
        KL["out"],
        notebook=KL["notebook"],
    params:
        study=KL["params"],
    threads: threads_of("study")
    resources:
        **resources_of("study"),
    benchmark:
        f"{BENCH}/kl_distribution/kl_distribution.tsv"
    run:
        run_study("05_kl_distribution", input, output.notebook, threads, params.study)


rule bias_fisher:
    input:
        BIAS_STUDY["runs"],
    output:
        BIAS_STUDY["out"],
        notebook=BIAS_STUDY["notebook"],
    params:
        study=BIAS_STUDY["params"],
    threads: threads_of("study")
    resources:
        **resources_of("study"),
    benchmark:
        f"{BENCH}/bias_fisher/bias_fisher.tsv"
    run:
        run_study("06_bias_fisher", input, output.notebook, threads, params.study)


rule multiclass:
    input:
        MULTI["runs"],
    output:
        MULTI["out"],
        notebook=MULTI["notebook"],
    params:
        study=MULTI["params"],
    threads: threads_of("study")
    resources:
        **resources_of("study"),
    benchmark:
        f"{BENCH}/multiclass/multiclass.tsv"
    run:
        run_study("07_multiclass", input, output.notebook, threads, params.study)


rule ablations:
    input:
        ABLATIONS["runs"],
    output:
        ABLATIONS["out"],
        notebook=ABLATIONS["notebook"],
    params:
        study=ABLATIONS["params"],
    threads: threads_of("study")
    resources:
        **resources_of("study"),
    benchmark:
        f"{BENCH}/ablations/ablations.tsv"
    run:
        run_study("08_ablations", input, output.notebook, threads, params.study)


rule robustness:
    input:
        ROBUSTNESS["runs"],
    output:
        ROBUSTNESS["out"],
        notebook=ROBUSTNESS["notebook"],
    params:
        study=ROBUSTNESS["params"],
    threads: threads_of("study")
    resources:
        **resources_of("study"),
    benchmark:
        f"{BENCH}/robustness/robustness.tsv"
    run:
        run_study("10_robustness", input, output.notebook, threads, params.study)


rule decide:
    input:
        DECISION["runs"],
    output:
        DECISION["out"],
        notebook=DECISION["notebook"],
    params:
        study=DECISION["params"],
    threads: threads_of("study")
    resources:
        **resources_of("study"),
    benchmark:
        f"{BENCH}/decide/decide.tsv"
    run:
        run_study("11_decide", input, output.notebook, threads, params.study)
