# The profile's settings, validated; each run's settings and folder; the grids of runs that
# the tables read; the lists of tables, figures and time records. No rule is defined here.


def validate_profile():
    """Check the merged profile (config/<profile>.yaml, --configfile, --config) against
    schemas/config.schema.yaml: an unknown key (a typo) or a value of the wrong type stops
    the workflow here, with one line naming it, before any job."""
    schema = Path(workflow.basedir) / "schemas" / "config.schema.yaml"
    try:
        validate(config, str(schema), set_default=False)  # no defaults: hashes unchanged
    except WorkflowError as err:
        bad = err.__context__  # the jsonschema error snakemake wraps
        if not isinstance(bad, jsonschema.ValidationError):
            raise
        where = "/".join(map(str, bad.absolute_path)) or "the top level"
        known = sorted((bad.schema.get("properties") or {})) \
            if bad.validator == "additionalProperties" else []
        hint = f"; known keys there: {', '.join(known)}" if known else ""
        raise WorkflowError(
            f"profile '{PROFILE}' (config/{PROFILE}.yaml with any --configfile/--config) "
            f"does not match {schema.relative_to(workflow.basedir)}: at {where}: "
            f"{bad.message}{hint}") from None


validate_profile()

RES = f"results/{PROFILE}"
FIG = f"{RES}/figures"
REFERENCE = f"figures/{PROFILE}"  # the committed results this profile's rebuild is compared with
BENCH = f"{RES}/benchmarks"
ARM = config["arm"]  # the paper's arm: Table 2 and every study
USEEDS = config["unlearning_seeds"]  # per pretrained model (local proc draw, fine-tuning order)

# Keys that only unlearning and fine-tuning read; pretraining and retraining ignore them.
UNLEARN_ONLY = ("unlearning", "finetune_rounds", "finetune_lr", "finetune_lr_candidates",
                "finetune_lr_tolerance")
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


def experiment(setting, dataset, model, q, seed, forget, arm=ARM, useed=0, finetune_lr=None):
    """The result-changing settings of one run (see fedunlearn_lib.ExperimentConfig).

    ``setting`` "small" applies the profile's secondary: scale, "bias" that scale and the
    bias sweep's overrides (Table 1); ``arm`` (one of unlearn.ARMS) and the unlearning seed
    ``useed`` set how channels are chosen and the unlearning's random draws. A
    ``finetune_lr`` (the deciding comparison's sensitivity runs) fixes fine-tuning's rate:
    no rate is chosen among finetune_lr_candidates, which are left out."""
    base = {k: v for k, v in json.loads(json.dumps(config["experiment"])).items()
            if k not in PLACEMENT}
    base = merged(base, per_model(model).get("experiment") or {})
    if setting in ("small", "bias"):
        base = merged(base, config.get("secondary") or {})
    if setting == "bias":
        base = merged(base, {p: config["bias"].get(p) for p in ("federation", "unlearning")})
    if finetune_lr is not None:
        base = {k: v for k, v in base.items()
                if k not in ("finetune_lr_candidates", "finetune_lr_tolerance")}
        base["finetune_lr"] = float(finetune_lr)
    base["federation"].update(q=float(q), seed=int(seed))
    base["unlearning"].update(ratio=config["ratio"][dataset][family(model)], **ARMS[arm],
                              seed=int(useed))
    exp = {**base, "dataset": loader(dataset), "model": model,
           "forget": [int(c) for c in forget.split("-")]}
    # keys sorted: Snakemake compares params by repr, so a profile whose keys come in
    # another order (e.g. a --configfile written by yaml.safe_dump) reruns nothing
    return json.loads(json.dumps(exp, sort_keys=True))


def uses_rate(exp):
    """Whether the run chooses fine-tuning's rate among candidates (rule finetune_rate):
    it has finetune_lr_candidates and no finetune_lr of its own."""
    return bool(exp.get("finetune_lr_candidates")) and exp.get("finetune_lr") is None


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


DECIDE = config["decide"]
SENSITIVITY = DECIDE.get("sensitivity") or {}  # the deciding comparison at a fixed rate


def unlearn_params(wc):
    """The settings of one run: the profile's, or those of a sensitivity run (the same
    with ``decide.sensitivity.lr`` as fine-tuning's rate), whichever the path's hash is."""
    pretrain_params(wc)
    args = (wc.setting, wc.dataset, wc.model, wc.q, wc.seed, wc.forget, wc.arm, wc.useed)
    exp = experiment(*args)
    if SENSITIVITY and wc.uhash != settings_hash(exp):
        fixed = experiment(*args, finetune_lr=SENSITIVITY["lr"])
        if wc.uhash == settings_hash(fixed):
            return fixed
    return checked("unlearning", wc.uhash, exp)


def finetune_rate_params(wc):
    """The settings the rate is chosen with: the forget set's ``none`` arm (no channel
    pruned), unlearning seed 0; every arm and unlearning seed of the forget set uses it.
    Of the unlearning settings only the seed (fine-tuning's draws) is read, so another
    ratio or arm reuses the choice."""
    pretrain_params(wc)
    exp = experiment(wc.setting, wc.dataset, wc.model, wc.q, wc.seed, wc.forget, "none", 0)
    if not uses_rate(exp):
        raise ValueError(f"profile '{PROFILE}' gives these runs a finetune_lr or no "
                         f"finetune_lr_candidates: there is no rate to choose")
    return {**exp, "unlearning": {"seed": 0}}


def papermill(notebook, output, params, threads):
    """Execute notebooks/<notebook>.ipynb into ``output`` with papermill's Python API, from
    the repository root: in the process that runs the job (papermill is imported once per
    run, not per job), each notebook in a kernel of its own."""
    import papermill as pm  # not at parse time: dry runs and submissions stay light

    pm.execute_notebook(f"notebooks/{notebook}.ipynb", output,
                        parameters={**params, "threads": threads}, cwd=".",
                        progress_bar=False)


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


RUN_SETTINGS = {}  # run folder -> its settings, for every run the workflow asks for


def run_dir(dataset, model, forget, q=None, setting="main", seed=None, arm=ARM, useed=0,
            finetune_lr=None):
    """Output folder of one unlearning run (q defaults to the data set's first, seed to the
    profile's first; ``finetune_lr``: a sensitivity run's rate, see experiment())."""
    q = config["q"][dataset][0] if q is None else q
    seed = config["seeds"][0] if seed is None else seed
    exp = experiment(setting, dataset, model, q, seed, forget, arm, useed, finetune_lr)
    run = (f"{pretrain_dir(setting, dataset, model, q, seed)}/forget{forget}/"
           f"{arm}-s{useed}-u{settings_hash(exp)}")
    RUN_SETTINGS[run] = exp
    return run


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
DECIDE_RUNS = [run_dir(D0, DECIDE["model"], DECIDE["forget"], seed=s, arm=a, useed=u)
               for a in DECIDE["arms"] for s in seeds_of(DECIDE["model"])
               for u in useeds_of(DECIDE["model"])]
# ... and its sensitivity to fine-tuning's rate: the same runs at decide.sensitivity.lr for
# its arms (default none and tfidf-highest) and pretraining seeds (default the first), every
# unlearning seed
SENSITIVITY_RUNS = [
    run_dir(D0, DECIDE["model"], DECIDE["forget"], seed=s, arm=a, useed=u,
            finetune_lr=SENSITIVITY["lr"])
    for a in SENSITIVITY.get("arms", ["none", "tfidf-highest"])
    for s in SENSITIVITY.get("seeds", seeds_of(DECIDE["model"])[:1])
    for u in useeds_of(DECIDE["model"])] if SENSITIVITY else []
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
ALL_RUNS = sorted({*(str(Path(m).parent) for m in METRICS), *DECIDE_RUNS, *SENSITIVITY_RUNS,
                   *MIA_RUNS, *KL_RUNS, *BIAS_RUNS, *MULTI_RUNS, ABL_RUN})
STUDY_RULES = ("feature_maps", "mia", "kl_distribution", "bias_fisher", "multiclass",
               "ablations", "robustness", "decide")


def benchmarks_of(run):
    """The time records of the jobs behind one run folder: its pretraining, retraining,
    the choice of its fine-tuning rate (when it chooses one) and its unlearning."""
    rel = Path(run).relative_to(RES).parts
    setting, dataset, model, q, seed, phash, forget, arm_run = rel
    name = NAME.format(setting=setting, dataset=dataset, model=model, q=q[1:], seed=seed[4:],
                       phash=phash[1:])
    job = f"{name}_{forget}"
    rate = [f"{BENCH}/finetune_rate/{job}.tsv"] if uses_rate(RUN_SETTINGS[run]) else []
    return [f"{BENCH}/pretrain/{name}.tsv", f"{BENCH}/retrain/{job}.tsv", *rate,
            f"{BENCH}/unlearn/{job}_{arm_run}.tsv"]


FM_BENCH = "{}/pretrain/{}.tsv".format(
    BENCH, NAME.format(setting=FM_PRE[0], dataset=D0, model=FM["model"], q=FM_PRE[3],
                       seed=FM_PRE[4], phash=Path(pretrain_dir(*FM_PRE)).name[1:]))
BENCHMARKS = sorted({*(b for r in ALL_RUNS for b in benchmarks_of(r)), FM_BENCH,
                     *(f"{BENCH}/{rule}/{rule}.tsv" for rule in STUDY_RULES)})
TABLES = ["table1", "table2", "table3", "table4", "table5", "table_decide",
          "table_decide_paired", "table_decide_sensitivity", "table_ablations",
          "table_ablation_ratio", "table_ablation_apply", "table_ablation_stability",
          "table_idf_readings", "table_robustness"]
REPORT_TABLES = ["table2_runs", "table_training", "table_jobs"]  # the report's own, beside Table 2
FIGURES = ["fig2_feature_maps", "fig2_activations", "fig3_accuracy_curves",
           "fig4_multiclass_curves", "fig5_class_accuracy", "fig_decide", "fig_ablations",
           "fig_robustness"]
