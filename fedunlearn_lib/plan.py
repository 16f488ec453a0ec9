"""What a workflow profile costs before it runs: jobs and image passes per Snakemake rule.

``python -m fedunlearn_lib plan --configfile config/quick.yaml`` builds the workflow's DAG
for the ``all`` target as a forced dry run would (``snakemake -n --forceall``: a full
rebuild, whatever lies in results/), through Snakemake's own API, reads every job's rule,
wildcards, params and input run folders, and counts each job's image passes with the cost
model below. The jobs come from the Snakefile itself; this module holds no copy of its grid.

The configfile is passed as ``snakemake --configfile FILE --config profile=STEM`` would
pass it: the Snakefile loads ``config/{profile}.yaml`` and snakemake lays the command-line
file (and ``--config`` pairs) over it, so without ``profile=`` a file other than
quick.yaml would be merged into quick.yaml's settings and results/quick. ``profile`` is
the ``--config profile=`` given, else the file's own ``profile:`` key, else its stem.

Cost model (every count is at the caps: each training loop runs its maximum number of
rounds, no stop rule ends it early):

* Unit: an *image pass* is one image through one training step (forward + backward). An
  evaluation or inference forward counts 1/3 (a forward is about a third of a training
  step). Each rule's sum is rounded to the nearest integer; ``total`` is the sum of the rows.
* Data sizes (per class, then summed; no image is loaded except the bundled digits, whose
  loader is called to count its labels: 1,347 training / 450 test images): cifar10 and
  imagefolder (taken to be CIFAR-10) 5,000 training / 1,000 test images per class,
  cifar100 500 / 100, over 10 / 100 classes. ``train_per_class`` / ``test_per_class`` cap
  each class; ``val_fraction`` moves ``int(val_fraction x n)`` of each class's n test
  images into the validation split (``ImageData.with_validation``). N = training images,
  N_R those of the remaining classes (not forgotten), N_U of the forgotten ones; T, V the
  test and validation splits, T_U the forgotten classes' test images; D (the decision
  split) = V when there is one, else T.
* A training run of R rounds on M images: R x (clients_per_round / num_clients) x M x
  local_epochs passes (FedSGD: x 1, one gradient per round), M = N for pretraining and
  relearning, N_R for retraining and fine-tuning. Its evaluation: with a validation split
  (R + 1) x V + 2 x T forwards (every round and round 0 on V, round 0 and the last round on
  T); without, (R + 1) x T. ``scores`` (a model's test and validation accuracy) = T + V.
* pretrain: pretraining at ``rounds``. retrain: retraining at ``retrain_rounds`` (None =
  ``rounds``) on N_R, plus T in the paper's stop round (with a validation split); its
  target is read from the pretraining's history.
* finetune_rate (notebook 12, ``experiment.finetune_rate``; one job per pretraining and
  forget set whose runs choose fine-tuning's rate: ``finetune_lr_candidates`` and no
  ``finetune_lr``): per candidate rate, fine-tuning of the unpruned raw model at
  ``finetune_rounds`` (None = ``rounds``) on N_R with its evaluation; no pruning, and no
  stop round (it runs without a target).
* unlearn (notebook 03, ``run_experiment`` on a finished pretraining and retraining, and
  the chosen rate when there is one; the raw, retrained and fine-tuned scores are read
  from the histories): the unlearning request (per forgotten class: with TF-IDF scores,
  the local procs of ``score_clients`` (None = clients_per_round) participants over
  min(``score_samples``, N / num_clients) images each, then the test split after that
  class's pruning, T); scores after pruning, the pruned model's U-set test predictions
  (T_U), the BatchNorm re-estimation over min(5,000, N_R) retained images (a forward
  each), scores after it; fine-tuning at ``finetune_rounds`` (None = ``rounds``) on N_R
  with its evaluation, plus T in the paper's stop round (with a validation split).
* Study building blocks: *evidence* (``evidence.information_left``) of one model =
  relearning at the study's ``relearn_rounds`` B on N (its evaluation as a training run's,
  plus T once more after round 1 when there is a validation split and B > 1) and the
  probe (min(5,000, N) training + T_U test forwards). *bn_recall_u* = two BatchNorm
  re-estimations (min(5,000, N) and min(5,000, N_U) images) each followed by T.
  *closeness* = bn_recall_u + the retrained and the studied model on T_U + N_U (KL) + the
  studied model on T_U (histogram).
* Study rules, one job each (the notebook's functions in parentheses):

  - feature_maps (01): the class activations over T, plus the 1 + 2 x len(classes)
    images of the figure.
  - mia (04, ``studies.mia_rows``), per run: the raw, unlearned and retrained model on
    min(2,000, N_R) members, min(2,000, T - T_U) non-members and min(2,000, N_U) targets.
  - kl_distribution (05, ``kl_row``), per run: the unlearned and retrained model on T.
  - bias_fisher (06, ``fisher_row``), per run: the Fisher statistics over
    clients_per_round participants' min(``fisher_samples``, N_R / num_clients) retained
    images at 7/3 passes each (a forward for the sampled labels, a per-sample and a batch
    gradient); V' (V, or half of each class's test images without a split) for the raw
    model, every damping of the grid and every sigma; T after the step; fine-tuning at
    its cap; T after it; evidence of 4 models (raw, ours, Fisher, retrained).
  - multiclass (07, ``multiclass_row``), per run: evidence of 2 models.
  - ablations (08), on its run: per arm of ``unlearn.ARMS`` its unlearning request (TF-IDF
    arms; a weight arm ranks the weights without a forward) and ``budget`` rounds of
    fine-tuning; evidence of raw, retrained and every arm; closeness of raw and every arm,
    bn_recall_u of the retrained model; per ``ratios`` entry an unlearning request and
    ``budget`` rounds; mask vs remove: 2 x (T + 2 rounds on N_R); selection stability:
    every client's local proc (N) at two bias probabilities; IDF readings:
    clients_per_round participants' local procs.
  - robustness (10, ``robustness_rows``), on its run: per sample the ``participants``'
    local procs over their images; T per sample x attack x fraction x defence; per attack
    x defence at a ``finetune_at`` fraction ``finetune_rounds`` rounds on N_R (evaluated
    as a training run) and T.
  - decide (11): per run evidence and closeness of the unlearned model; per pretraining
    seed evidence and bn_recall_u of the retrained model and, with several seeds, the
    retrained model on T_U + N_U (retraining's spread). Its sensitivity runs
    (``decide.sensitivity``: unlearn jobs at a fixed fine-tuning rate) are counted as
    unlearn jobs; the notebook reads only their metrics.
  - report (09) and all: none (they read JSON).
* A study's parameters are its notebook's defaults (the parameters cell) with the rule's
  ``params`` laid over them, as papermill runs it.

Approximations (all but the last two make the count an upper bound):

* Clients are taken to hold N / num_clients images each (Fang's split gives every client
  group the same expected share), and local procs drawn among the class's holders
  (``score_from: holders``) are counted at ``score_clients`` participants even when fewer
  clients hold the class; clients and batches skipped for holding one image are counted.
* The Fisher damping search is counted over its whole grid although it stops at the first
  damping that keeps the bound.
* Caches shared across jobs or rules are not deduplicated: a model's evidence that two
  study rules compute on the same run folder (and ``robustness``'s cache of the accuracy
  after each distinct mask) is charged to each as if it ran first.
* A run with a target (retraining, fine-tuning) that meets it in some round without the
  strict U-set bound goes on, and reports that round on T as well: one T per such run,
  not counted (the model evaluates T twice per run: round 0 and the last round).
* Forwards of a single image (the example of ``apply: remove``) and all work that is not
  a network pass (TF-IDF, aggregation, sklearn's attack and probe classifiers) are left
  out.
"""
from __future__ import annotations

import ast
import functools
import inspect
import json
import math
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Sequence

FORWARD = Fraction(1, 3)  # an evaluation / inference forward, in training-step passes
FISHER_PASSES = Fraction(7, 3)  # per Fisher sample: a forward and two gradients
# Per-class image counts of the data sets whose images are not loaded to be counted
# (imagefolder: taken to be CIFAR-10, the layout the quick profile reads).
CLASS_COUNTS = {"cifar10": (10, 5000, 1000), "imagefolder": (10, 5000, 1000),
                "cifar100": (100, 500, 100)}


class PlanError(ValueError):
    """The plan cannot be made (a missing file, a workflow error, an unknown rule)."""


# ------------------------------------------------------------------ data set sizes
@functools.cache
def class_counts(dataset: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Training and test images per class of a data set, before any subset."""
    key = dataset.lower()
    if key == "digits":  # bundled and tiny: count the loader's own labels
        import torch

        from .data import load_dataset

        data = load_dataset("digits")
        k = data.num_classes
        return (tuple(torch.bincount(data.train_y, minlength=k).tolist()),
                tuple(torch.bincount(data.test_y, minlength=k).tolist()))
    if key not in CLASS_COUNTS:
        raise PlanError(f"no image counts for data set {dataset!r}; known: digits, "
                        f"{', '.join(CLASS_COUNTS)}")
    k, train, test = CLASS_COUNTS[key]
    return (train,) * k, (test,) * k


@dataclass(frozen=True)
class Sizes:
    """Image counts of one run's splits (see the module docstring's letters)."""

    train: int  # N
    train_u: int  # N_U: the forgotten classes' training images
    val: int  # V
    test: int  # T
    test_u: int  # T_U

    @property
    def retained(self) -> int:  # N_R
        return self.train - self.train_u

    @property
    def decision(self) -> int:  # D
        return self.val or self.test


def data_sizes(cfg) -> Sizes:
    """The split sizes ``experiment.prepare_data`` gives ``cfg`` (an ExperimentConfig)."""
    train, test = class_counts(cfg.dataset)
    forget = set(cfg.forget)
    cap = lambda n, k: n if k is None else min(n, k)  # noqa: E731
    train = [cap(n, cfg.train_per_class) for n in train]
    test = [cap(n, cfg.test_per_class) for n in test]
    val = [int(cfg.val_fraction * n) for n in test] if cfg.val_fraction else [0] * len(test)
    test = [t - v for t, v in zip(test, val)]
    return Sizes(train=sum(train), train_u=sum(n for c, n in enumerate(train) if c in forget),
                 val=sum(val), test=sum(test),
                 test_u=sum(n for c, n in enumerate(test) if c in forget))


# ---------------------------------------------------------------- building blocks
def training(cfg, rounds: int, images: int | Fraction) -> Fraction:
    """Passes of ``rounds`` federated rounds over ``images`` training images."""
    fed = cfg.federation
    epochs = fed.local_epochs if fed.algorithm == "fedavg" else 1
    return rounds * Fraction(fed.clients_per_round, fed.num_clients) * images * epochs


def evaluation(s: Sizes, rounds: int) -> Fraction:
    """Forwards (in passes) a training run of ``rounds`` rounds spends evaluating."""
    if s.val:
        return FORWARD * ((rounds + 1) * s.val + 2 * s.test)
    return FORWARD * (rounds + 1) * s.test


def scores(s: Sizes) -> Fraction:
    """``Federation.scores``: the test split and, when there is one, the validation split."""
    return FORWARD * (s.test + s.val)


def training_run(cfg, s: Sizes, rounds: int, images: int) -> Fraction:
    return training(cfg, rounds, images) + evaluation(s, rounds)


def client_images(cfg, s: Sizes) -> Fraction:
    """A client's training images, on average."""
    return Fraction(s.train, cfg.federation.num_clients)


def unlearning_request(cfg, s: Sizes) -> Fraction:
    """``unlearn.prune_for_classes``: per forgotten class the local procs (TF-IDF arms)
    and the test split after that class's pruning."""
    u = cfg.unlearning
    per_class = FORWARD * s.test
    if u.scores == "tfidf":
        n = min(u.score_clients or cfg.federation.clients_per_round, cfg.federation.num_clients)
        each = client_images(cfg, s)
        if u.score_samples is not None:
            each = min(each, u.score_samples)
        per_class += FORWARD * n * each
    return len(cfg.forget) * per_class


def finetune_cap(cfg) -> int:
    return cfg.finetune_rounds or cfg.rounds


def evidence(cfg, s: Sizes, budget: int, probe_images: int) -> Fraction:
    """``evidence.information_left`` of one model: relearning for ``budget`` rounds on
    every class, then the probe."""
    relearn = training_run(cfg, s, budget, s.train)
    if s.val and budget > 1:  # round 1 is reported on the test split too
        relearn += FORWARD * s.test
    return relearn + FORWARD * (min(probe_images, s.train) + s.test_u)


def bn_recall_u(s: Sizes, bn_images: int) -> Fraction:
    """``studies.bn_recall_u``: two BatchNorm re-estimations, each then the forgotten
    classes' test images."""
    return FORWARD * (min(bn_images, s.train) + min(bn_images, s.train_u) + 2 * s.test_u)


def closeness(s: Sizes, bn_images: int) -> Fraction:
    """``studies.closeness``: bn_recall_u, KL to the retrained model on the forgotten
    classes' test and training images (two models), the prediction histogram."""
    return bn_recall_u(s, bn_images) + FORWARD * (2 * (s.test_u + s.train_u) + s.test_u)


@functools.cache
def _constants() -> dict[str, Any]:
    """Constants and defaults of the library that set how many images a study reads."""
    from . import fisher, robustness, studies
    from .evidence import BN_IMAGES
    from .probe import probe_accuracy
    from .unlearn import ARMS

    default = lambda fn, name: inspect.signature(fn).parameters[name].default  # noqa: E731
    return {"bn_images": BN_IMAGES, "probe_images": default(probe_accuracy, "max_train"),
            "mia_samples": default(studies.mia_rows, "max_samples"),
            "mask_vs_remove_rounds": default(studies.mask_vs_remove, "rounds"),
            "sigma_grid": fisher.SIGMA_GRID, "damping_grid": fisher.DAMPING_GRID,
            "defences": len(robustness.DEFENCES), "arms": ARMS}


# ------------------------------------------------------------------------- jobs
@dataclass
class PlannedJob:
    """One job of the DAG: its rule, wildcards, params, and the settings of the run folders
    it reads (study rules) with its notebook's effective parameters."""

    rule: str
    wildcards: dict[str, str]
    params: dict[str, Any]
    runs: list[dict] = field(default_factory=list)  # params.experiment of each input run
    notebook: dict[str, Any] = field(default_factory=dict)  # notebook defaults + params


def _config(exp: dict):
    from .experiment import ExperimentConfig

    return ExperimentConfig.from_dict(exp)


def _cost_pretrain(job: PlannedJob) -> Fraction:
    cfg = _config(job.params["experiment"])
    s = data_sizes(cfg)
    return training_run(cfg, s, cfg.rounds, s.train)


def _cost_retrain(job: PlannedJob) -> Fraction:
    cfg = _config(job.params["experiment"])
    s = data_sizes(cfg)  # the target: read from the pretraining's last history entry
    return training_run(cfg, s, cfg.retrain_rounds or cfg.rounds, s.retained) + stop_round(s)


def stop_round(s: Sizes) -> Fraction:
    """The paper's stop round of a run with a target, reported on the test split too."""
    return FORWARD * s.test if s.val else Fraction(0)


def _cost_unlearn(job: PlannedJob) -> Fraction:
    cfg = _config(job.params["experiment"])
    s = data_sizes(cfg)  # raw, target, retrained and final scores: from the histories
    bn = FORWARD * min(_constants()["bn_images"], s.retained)  # experiment.prune's BN recall
    pruning = unlearning_request(cfg, s) + scores(s) + FORWARD * s.test_u + bn + scores(s)
    return pruning + training_run(cfg, s, finetune_cap(cfg), s.retained) + stop_round(s)


def _cost_finetune_rate(job: PlannedJob) -> Fraction:
    exp = dict(job.params["experiment"])
    candidates = set(exp.get("finetune_lr_candidates") or [])
    cfg = _config(exp)
    s = data_sizes(cfg)  # the unpruned raw model, fine-tuned at each rate without a target
    return len(candidates) * training_run(cfg, s, finetune_cap(cfg), s.retained)


def _cost_feature_maps(job: PlannedJob) -> Fraction:
    cfg = _config(job.params["experiment"])
    shown = job.notebook.get("show_classes") or []
    return FORWARD * (data_sizes(cfg).test + 1 + 2 * len(shown))


def _cost_mia(job: PlannedJob) -> Fraction:
    k = _constants()["mia_samples"]
    total = Fraction(0)
    for exp in job.runs:
        s = data_sizes(_config(exp))
        total += 3 * FORWARD * (min(k, s.retained) + min(k, s.test - s.test_u)
                                + min(k, s.train_u))
    return total


def _cost_kl_distribution(job: PlannedJob) -> Fraction:
    return sum((2 * FORWARD * data_sizes(_config(exp)).test for exp in job.runs), Fraction(0))


def _grid(value, default: Sequence[float]) -> list[float]:
    if value is None:
        return list(default)
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _cost_bias_fisher(job: PlannedJob) -> Fraction:
    nb, c = job.notebook, _constants()
    sigmas = _grid(nb.get("sigmas"), c["sigma_grid"])
    method = nb.get("method", "eq1")
    if method == "golatkar-var":
        sigmas = [v for v in sigmas if v > 0]
    dampings = _grid(nb.get("damping"), c["damping_grid"]) if method == "eq1" else []
    total = Fraction(0)
    for exp in job.runs:
        cfg = _config(exp)
        s = data_sizes(cfg)
        per_client = Fraction(s.retained, cfg.federation.num_clients)
        if nb.get("fisher_samples") is not None:
            per_client = min(per_client, nb["fisher_samples"])
        fisher = FISHER_PASSES * cfg.federation.clients_per_round * per_client
        val = s.val or sum(int(0.5 * n) for n in _test_per_class(cfg))
        choices = FORWARD * val * (1 + len(dampings) + len(sigmas))
        total += (fisher + choices + FORWARD * s.test
                  + training_run(cfg, s, finetune_cap(cfg), s.retained) + FORWARD * s.test
                  + 4 * evidence(cfg, s, nb["relearn_rounds"], c["probe_images"]))
    return total


def _test_per_class(cfg) -> list[int]:
    """Each class's test images before the validation split (for Fisher's half split)."""
    _, test = class_counts(cfg.dataset)
    return [n if cfg.test_per_class is None else min(n, cfg.test_per_class) for n in test]


def _cost_multiclass(job: PlannedJob) -> Fraction:
    c = _constants()
    return sum((2 * evidence(cfg, data_sizes(cfg), job.notebook["relearn_rounds"],
                             c["probe_images"]) for cfg in map(_config, job.runs)), Fraction(0))


def _cost_ablations(job: PlannedJob) -> Fraction:
    from dataclasses import replace

    nb, c = job.notebook, _constants()
    cfg = _config(job.runs[0])
    s = data_sizes(cfg)

    def request(arm: str) -> Fraction:
        """studies.ablation_mask: a TF-IDF arm runs the unlearning request on a copy of the
        raw model; a weight arm only ranks its weights (no forward)."""
        arm_cfg = replace(cfg, unlearning=replace(cfg.unlearning, **c["arms"][arm]))
        if arm_cfg.unlearning.scores != "tfidf":
            return Fraction(0)
        return unlearning_request(arm_cfg, s)

    tuned = training_run(cfg, s, nb["budget"], s.retained)  # studies.ablation_arm
    arms = sum((request(a) + tuned for a in c["arms"]), Fraction(0))
    ev = (2 + len(c["arms"])) * evidence(cfg, s, nb["relearn_rounds"], c["probe_images"])
    close = (1 + len(c["arms"])) * closeness(s, c["bn_images"]) + bn_recall_u(s, c["bn_images"])
    ratios = len(nb["ratios"]) * (request("tfidf-highest") + tuned)
    apply = 2 * (FORWARD * s.test + training(cfg, c["mask_vs_remove_rounds"], s.retained))
    stability = 2 * FORWARD * s.train  # every client's local proc, at two q
    readings = FORWARD * cfg.federation.clients_per_round * client_images(cfg, s)
    return arms + ev + close + ratios + apply + stability + readings


def _cost_robustness(job: PlannedJob) -> Fraction:
    nb, c = job.notebook, _constants()
    cfg = _config(job.runs[0])
    s = data_sizes(cfg)
    k = nb.get("participants") or cfg.federation.clients_per_round
    samples, attacks, fractions = nb["samples"], len(nb["attacks"]), nb["fractions"]
    honest = samples * FORWARD * k * client_images(cfg, s)
    cells = samples * attacks * len(fractions) * c["defences"] * FORWARD * s.test
    tuned = sum(1 for f in fractions if f in nb["finetune_at"]) * attacks * c["defences"] * (
        training_run(cfg, s, nb["finetune_rounds"], s.retained) + FORWARD * s.test)
    return honest + cells + tuned


def _cost_decide(job: PlannedJob) -> Fraction:
    nb, c = job.notebook, _constants()
    total, seeds = Fraction(0), {}
    for exp in job.runs:
        cfg = _config(exp)
        s = data_sizes(cfg)
        total += evidence(cfg, s, nb["relearn_rounds"], c["probe_images"]) + closeness(
            s, c["bn_images"])
        seeds[cfg.federation.seed] = (cfg, s)
    for cfg, s in seeds.values():
        total += evidence(cfg, s, nb["relearn_rounds"], c["probe_images"]) + bn_recall_u(
            s, c["bn_images"])
        if len(seeds) > 1:
            total += FORWARD * (s.test_u + s.train_u)
    return total


def _no_cost(job: PlannedJob) -> Fraction:
    return Fraction(0)


# rule -> (notebook whose parameters cell it runs, or None; cost of one job)
RULES: dict[str, tuple[str | None, Callable[[PlannedJob], Fraction]]] = {
    "pretrain": (None, _cost_pretrain),
    "retrain": (None, _cost_retrain),
    "finetune_rate": (None, _cost_finetune_rate),
    "unlearn": (None, _cost_unlearn),
    "feature_maps": ("01_feature_maps", _cost_feature_maps),
    "mia": ("04_mia", _cost_mia),
    "kl_distribution": ("05_kl_distribution", _cost_kl_distribution),
    "bias_fisher": ("06_bias_fisher", _cost_bias_fisher),
    "multiclass": ("07_multiclass", _cost_multiclass),
    "ablations": ("08_ablations", _cost_ablations),
    "robustness": ("10_robustness", _cost_robustness),
    "decide": ("11_decide", _cost_decide),
    "report": (None, _no_cost),
    "all": (None, _no_cost),
}


def notebook_defaults(path: Path) -> dict[str, Any]:
    """The literal values assigned in a notebook's ``parameters`` cell."""
    nb = json.loads(path.read_text())
    cell = next((c for c in nb["cells"] if c["cell_type"] == "code"
                 and "parameters" in c.get("metadata", {}).get("tags", [])), None)
    if cell is None:
        raise PlanError(f"{path} has no cell tagged 'parameters'")
    out = {}
    for node in ast.parse("".join(cell["source"])).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 \
                and isinstance(node.targets[0], ast.Name):
            try:
                out[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                pass
    return out


# -------------------------------------------------------------- the workflow's DAG
def profile_of(configfile: Path, config: dict) -> str:
    """The profile snakemake should be given with ``configfile`` (module docstring)."""
    if "profile" in config:
        return str(config["profile"])
    import yaml

    own = yaml.safe_load(configfile.read_text()) or {}
    return str(own.get("profile") or configfile.stem) if isinstance(own, dict) \
        else configfile.stem


def workflow_jobs(configfile: str | Path, config: dict | None = None,
                  snakefile: str | Path = "Snakefile") -> list[PlannedJob]:
    """Every job of a full rebuild of the workflow's ``all`` target for ``configfile``
    (``snakemake -n --forceall --configfile FILE --config profile=... [config]``), through
    the Snakemake API."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.enums import Quietness
    from snakemake.settings.types import (ConfigSettings, DAGSettings, OutputSettings,
                                          ResourceSettings)

    configfile, snakefile = Path(configfile).absolute(), Path(snakefile).absolute()
    for what, path in (("config file", configfile), ("Snakefile", snakefile)):
        if not path.is_file():
            raise PlanError(f"{what} {path} not found")
    config = dict(config or {})
    config["profile"] = profile_of(configfile, config)
    try:
        with SnakemakeApi(OutputSettings(quiet={Quietness.ALL})) as api:
            wf_api = api.workflow(resource_settings=ResourceSettings(cores=1),
                                  config_settings=ConfigSettings(config=config,
                                                                 configfiles=[configfile]),
                                  snakefile=snakefile, workdir=snakefile.parent)
            wf_api.dag(DAGSettings(forceall=True))  # the settings the workflow reads
            # What DAGApi.printdag / `snakemake -n` do before listing the jobs (the public
            # API prints the DAG but does not return its jobs): no lock, as a dry run.
            workflow = wf_api._workflow
            workflow._prepare_dag(forceall=True, ignore_incomplete=True, lock_warn_only=True,
                                  nolock=True)
            workflow._build_dag()
            jobs = list(workflow.dag.needrun_jobs(exclude_finished=False))
            return _planned(jobs, snakefile.parent)
    except PlanError:
        raise
    except KeyError as err:  # the Snakefile reads config[...] the profile lacks
        raise PlanError(f"the workflow could not be planned for {configfile}: the Snakefile "
                        f"reads config key {err} (KeyError), which it does not set") from err
    except Exception as err:  # snakemake's own (WorkflowError, ...)
        raise PlanError(f"the workflow could not be planned for {configfile}: "
                        f"{type(err).__name__}: {err}") from err


def _planned(jobs, root: Path) -> list[PlannedJob]:
    runs = {}  # metrics.json path -> the settings of the unlearning run that writes it
    for job in jobs:
        if job.rule.name == "unlearn":
            runs[str(job.output.metrics)] = job.params.experiment
    out = []
    for job in jobs:
        name = job.rule.name
        if name not in RULES:
            raise PlanError(f"rule {name!r} has no cost model in fedunlearn_lib.plan.RULES")
        params = dict(job.params.items())
        planned = PlannedJob(name, dict(job.wildcards.items()), params)
        notebook = RULES[name][0]
        if notebook is not None:
            planned.notebook = {**notebook_defaults(root / "notebooks" / f"{notebook}.ipynb"),
                                **params.get("study", {}), **params.get("figure", {})}
            # a study's runs: its input "runs" (the decide rule's sensitivity runs, which it
            # reads the metrics of only, are left out), else all its inputs
            inputs = job.input.runs if "runs" in job.input.keys() else job.input
            planned.runs = [runs[f] for f in map(str, inputs) if f in runs]
            if name != "feature_maps" and not planned.runs:
                raise PlanError(f"rule {name}: no input run folder found among its inputs")
        out.append(planned)
    return out


# ---------------------------------------------------------------------- the plan
@dataclass
class Row:
    rule: str
    jobs: int
    passes: int


def job_cost(job: PlannedJob) -> Fraction:
    return RULES[job.rule][1](job)


def _nearest(x: Fraction) -> int:
    return math.floor(x + Fraction(1, 2))


def plan_rows(jobs: Sequence[PlannedJob]) -> list[Row]:
    """One row per rule (most passes first; ties by name)."""
    cost: dict[str, Fraction] = {}
    count: dict[str, int] = {}
    for job in jobs:
        cost[job.rule] = cost.get(job.rule, Fraction(0)) + job_cost(job)
        count[job.rule] = count.get(job.rule, 0) + 1
    rows = [Row(rule, count[rule], _nearest(cost[rule])) for rule in cost]
    return sorted(rows, key=lambda r: (-r.passes, r.rule))


def plan(configfile: str | Path, config: dict | None = None,
         snakefile: str | Path = "Snakefile") -> list[Row]:
    return plan_rows(workflow_jobs(configfile, config, snakefile))


def format_plan(rows: Sequence[Row], title: str | None = None) -> str:
    """An aligned table (rule, jobs, image passes, share), then ``total: N image passes``
    (N with comma thousands separators) as the last line."""
    total = sum(r.passes for r in rows)
    table = [("rule", "jobs", "image passes", "share")]
    table += [(r.rule, f"{r.jobs:,}", f"{r.passes:,}",
               f"{100 * r.passes / total:.1f}%" if total else "-") for r in rows]
    table.append(("all rules", f"{sum(r.jobs for r in rows):,}", f"{total:,}",
                  "100.0%" if total else "-"))
    widths = [max(len(line[i]) for line in table) for i in range(4)]
    lines = [] if title is None else [title]
    for i, line in enumerate(table):
        if i == len(table) - 1:
            lines.append("  ".join("-" * w for w in widths))
        lines.append("  ".join(cell.ljust(w) if j == 0 else cell.rjust(w)
                               for j, (cell, w) in enumerate(zip(line, widths))))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append(f"total: {total:,} image passes")
    return "\n".join(lines)
