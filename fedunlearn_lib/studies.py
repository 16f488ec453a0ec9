"""The paper's Tables 1, 3, 4, 5 and our ablations, one function per table, from finished runs.

Every function takes ``Run`` objects (see ``experiment.load_run``) and returns rows for a
``pandas.DataFrame``; expensive steps checkpoint or cache inside the run's folder.
"""
from __future__ import annotations

import copy
import time
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from .classwise import (accuracy_kl, model_logits, per_class_accuracy, prediction_histogram,
                        softmax_kl)
from .data import BatchTransform
from .evidence import BN_IMAGES, bn_recall, information_left, training_images
from .experiment import ExperimentConfig, Run, finetune, run_experiment, speedup
from .federated import Federation, rounds_for
from . import fisher as fl
from .masking import ChannelMask, jaccard
from .mia import ATTACKS, membership_attack
from .procs import aggregate, local_proc
from .pruning import conv_flops, layer_scores, remove_channels, select_channels
from .tfidf import IDF_THRESHOLDS
from .unlearn import (arm_config, arm_of, prune_for_classes, score_participants, server_selection,
                      stream_seed, weight_selection)


def pct(v: float | None) -> float | None:
    """A fraction as a percentage with two decimals (None stays None)."""
    return None if v is None else round(100 * v, 2)


def _round(v: float | None, digits: int = 2) -> float | None:
    return None if v is None else round(v, digits)


def describe(run: Run) -> dict:
    """The columns naming a run in every table."""
    c = run.cfg
    return {"model": c.model, "forget": "+".join(map(str, c.forget)), "q": c.federation.q}


def evidence(run: Run, models: dict[str, nn.Module], max_rounds: int) -> dict[str, dict]:
    """Relearn rounds and probe accuracy for each named model (cached in ``run.path``); the
    relearn target is the raw model's U-set accuracy on the decision split."""
    raw = run.metrics["raw"]
    target = raw["val_u_acc"] if run.data.val_y is not None else raw["u_acc"]
    return {name: information_left(name, m, run.data, run.cfg.federation, run.cfg.forget,
                                   target, max_rounds, run.path / "evidence", run.cfg.device)
            for name, m in models.items()}


def evidence_columns(ev: dict) -> dict:
    """``relearn`` (rounds, or ``>budget``) and ``probe U`` (%) for one model."""
    r = ev["relearn"]
    return {"relearn": r["rounds"] if r["rounds"] is not None else f">{r['budget']}",
            "probe U": pct(ev["probe"])}


def relearn_numbers(ev: dict) -> dict:
    """``relearn`` (rounds; None past the budget) and ``relearn U`` (U-set test accuracy, %,
    after the first relearn round: graded where the rounds only say met or not)."""
    curve = ev["relearn"]["u_curve"]
    return {"relearn": ev["relearn"]["rounds"],
            "relearn U": pct(curve[1]) if len(curve) > 1 else None}


def forgotten_images(run: Run) -> dict[str, torch.Tensor]:
    """The forgotten classes' test and training images of ``run``'s data, by split."""
    data, forget = run.data, run.cfg.forget
    return {split: x[torch.isin(y, torch.tensor(forget, device=y.device))]
            for split, (x, y) in (("test", (data.test_x, data.test_y)),
                                  ("train", (data.train_x, data.train_y)))}


BN_RECALL = ("all classes", "forgotten only")  # the images a BN-recall attack re-estimates on


def bn_recall_u(run: Run, model: nn.Module, mask: ChannelMask | None = None) -> dict:
    """U-set test accuracy (%) of ``model`` after BatchNorm recall, an attack by a client
    that still holds the forgotten classes: running statistics re-estimated (no weight
    change, masked channels kept at zero) on training images of every class at their
    natural share (``BN recall U (all classes)``) and of the forgotten classes alone
    (``BN recall U (forgotten only)``), ``evidence.BN_IMAGES`` images each."""
    cfg, data = run.cfg, run.data
    classes = {"all classes": range(data.num_classes), "forgotten only": cfg.forget}
    transform = BatchTransform(data.mean, data.std, data.test_x.device)
    u_test = forgotten_images(run)["test"]
    u_labels = data.test_y[torch.isin(data.test_y, torch.tensor(cfg.forget,
                                                                device=data.test_y.device))]
    out = {}
    for name in BN_RECALL:
        images = training_images(data, classes[name], BN_IMAGES, seed=cfg.federation.seed)
        recalled = bn_recall(model, images, data, mask, precision=cfg.federation.precision)
        hit = model_logits(recalled, u_test, transform).argmax(1) == u_labels.cpu()
        out[f"BN recall U ({name})"] = pct(hit.float().mean().item())
    return out


def closeness(run: Run, model: nn.Module, mask: ChannelMask | None = None) -> dict:
    """How close ``model`` is to forgetting like retraining, on the forgotten classes:
    U-set test accuracy (%) after the BatchNorm-recall attacks (``bn_recall_u``), the mean per-image KL
    divergence from the retrained model's predictions on the forgotten classes' test and
    training images, and the share of their test images predicted as each class
    (``U test histogram``)."""
    data = run.data
    transform = BatchTransform(data.mean, data.std, data.test_x.device)
    images = forgotten_images(run)
    out = bn_recall_u(run, model, mask)
    for split, x in images.items():
        out[f"KL to retrained U {split}"] = round(softmax_kl(
            model_logits(run.retrained, x, transform), model_logits(model, x, transform)), 4)
    out["U test histogram"] = prediction_histogram(
        model_logits(model, images["test"], transform), data.num_classes)
    return out


def goes_to(histogram: np.ndarray, classes: Sequence[str]) -> str:
    """The most predicted class of a prediction histogram and its share."""
    top = int(np.argmax(histogram))
    return f"{classes[top]} {100 * histogram[top]:.0f}%"


def closeness_columns(run: Run, model: nn.Module, mask: ChannelMask | None = None) -> dict:
    """``closeness`` as table columns: where the forgotten test images go, as text."""
    out = closeness(run, model, mask)
    out["U test goes to"] = goes_to(out.pop("U test histogram"), run.data.classes)
    return out


# ------------------------------------------------------- the deciding comparison
def speed_row(metrics: dict) -> dict:
    """The columns of ``decide_row`` that a run's ``metrics.json`` holds (no model is
    loaded): arm, seeds, fine-tuning's rate, rounds to the target under the strict and the
    paper's rule, the retraining's, and U/R after pruning (as is and with BatchNorm
    re-estimated), in the paper's stop round and after the last round."""
    m, cfg = metrics, ExperimentConfig.from_dict(metrics["config"])
    at_rule = m["finetuned_at_rule"] or {}
    return {"arm": arm_of(cfg.unlearning), "seed": cfg.federation.seed,
            "unlearning seed": cfg.unlearning.seed, "fine-tuning lr": m.get("finetune_lr"),
            "pruned channels": m["channels"]["selected"],
            "rounds strict": m["rounds_finetune_strict"], "rounds paper": m["rounds_finetune"],
            "retrain rounds strict": m["rounds_retrain_strict"],
            "retrain rounds paper": m["rounds_retrain"],
            "speedup strict": m["speedup_strict"], "speedup paper": m["speedup"],
            "pruned U": pct(m["pruned"]["u_acc"]), "pruned R": pct(m["pruned"]["r_acc"]),
            "pruned BN U": pct(m["pruned_bn"]["u_acc"]),
            "pruned BN R": pct(m["pruned_bn"]["r_acc"]),
            "at paper stop U": pct(at_rule.get("u_acc")),
            "at paper stop R": pct(at_rule.get("r_acc")),
            "final U": pct(m["finetuned"]["u_acc"]), "final R": pct(m["finetuned"]["r_acc"])}


def decide_row(run: Run, relearn_rounds: int) -> dict:
    """One run of the deciding comparison: ``speed_row`` (the strict rule, R-set at the
    target and U-set <= strict_u on the decision split, is the speed measure), relearn,
    probe and ``closeness``."""
    ev = evidence(run, {"unlearned": run.unlearned}, relearn_rounds)["unlearned"]
    return {**speed_row(run.metrics), **relearn_numbers(ev), "probe U": pct(ev["probe"]),
            **closeness(run, run.unlearned, run.mask),
            "pruned U test histogram": np.array(run.metrics["pruned_predictions"]["u_test"])}


def retrained_row(run: Run, relearn_rounds: int) -> dict:
    """The retrained model of ``run``'s pretraining seed, in ``decide_row``'s columns."""
    m = run.metrics
    ev = evidence(run, {"retrained": run.retrained}, relearn_rounds)["retrained"]
    return {"arm": "retrained", "seed": run.cfg.federation.seed,
            "rounds strict": m["rounds_retrain_strict"], "rounds paper": m["rounds_retrain"],
            "final U": pct(m["retrained"]["u_acc"]), "final R": pct(m["retrained"]["r_acc"]),
            **relearn_numbers(ev), "probe U": pct(ev["probe"]),
            **bn_recall_u(run, run.retrained)}


def retrained_spread(runs: Sequence[Run]) -> list[dict]:
    """Retraining's own spread: the mean per-image KL divergence between the retrained
    models of every ordered pair of pretraining seeds, on the forgotten classes' test and
    training images (one run per seed; every model's logits are computed once)."""
    if len(runs) < 2:
        return []
    data = runs[0].data
    transform = BatchTransform(data.mean, data.std, data.test_x.device)
    images = forgotten_images(runs[0])
    logits = [{split: model_logits(run.retrained, x, transform) for split, x in images.items()}
              for run in runs]
    return [{"seeds": f"{a.cfg.federation.seed}->{b.cfg.federation.seed}",
             **{f"KL to retrained U {split}": round(softmax_kl(logits[i][split],
                                                               logits[j][split]), 4)
                for split in images}}
            for i, a in enumerate(runs) for j, b in enumerate(runs) if i != j]


# ---------------------------------------------------------------- Table 4: MIA
def mia_rows(run: Run, kinds: Sequence[str] = tuple(ATTACKS), max_samples: int = 2000,
             seed: int = 0) -> list[dict]:
    """Membership-attack success rate on the forgotten classes' training samples for the
    raw, unlearned and retrained model, per attack in ``mia.ATTACKS``."""
    data, forget = run.data, torch.tensor(run.cfg.forget, device=run.data.train_y.device)
    transform = BatchTransform(data.mean, data.std, data.train_x.device)
    g = torch.Generator().manual_seed(seed)

    def split(x: torch.Tensor, y: torch.Tensor, in_u: bool) -> tuple[torch.Tensor, ...]:
        idx = torch.nonzero(torch.isin(y, forget) == in_u).squeeze(1).cpu()
        idx = idx[torch.randperm(len(idx), generator=g)[:max_samples]].sort().values
        return x[idx.to(y.device)], y[idx.to(y.device)]

    sets = {"member": split(data.train_x, data.train_y, False),
            "nonmember": split(data.test_x, data.test_y, False),
            "target": split(data.train_x, data.train_y, True)}
    logits = {name: {k: (model_logits(m, x, transform), y.cpu()) for k, (x, y) in sets.items()}
              for name, m in (("raw", run.raw), ("unlearned", run.unlearned),
                              ("retrained", run.retrained))}
    rows = []
    for kind in kinds:
        res = {name: membership_attack(lg["member"], lg["nonmember"], lg["target"], kind, seed)
               for name, lg in logits.items()}
        rows.append({**describe(run), "attack": kind,
                     **{f"{name} rate": pct(r["rate"]) for name, r in res.items()},
                     "unlearned − retrained": pct(res["unlearned"]["rate"]
                                                   - res["retrained"]["rate"]),
                     "attack acc (raw)": pct(res["raw"]["accuracy"])})
    return rows


# ------------------------------------------------------ Table 5: KL distribution
def kl_row(run: Run) -> tuple[dict, dict[str, np.ndarray]]:
    """Largest class-wise accuracy gap and KL(retrained ‖ unlearned) over the remaining
    classes; also returns the two accuracy vectors for the bar chart."""
    keep = [c for c in range(run.data.num_classes) if c not in run.cfg.forget]
    acc = {name: per_class_accuracy(m, run.data)[keep]
           for name, m in (("unlearned", run.unlearned), ("retrained", run.retrained))}
    diff = np.abs(acc["unlearned"] - acc["retrained"])
    row = {**describe(run), "max class gap": pct(float(diff.max())),
           "worst class": run.data.classes[keep[int(diff.argmax())]],
           "KL(retrained‖unlearned)": round(accuracy_kl(acc["retrained"], acc["unlearned"]), 5)}
    acc["classes"] = np.array([run.data.classes[c] for c in keep])
    return row, acc


# ------------------------------------------------- Table 1: bias sweep and Fisher
def _fisher_dir(method: str, sigma: float, damping: float, max_step: float | None,
                zero_head: bool, max_samples: int | None) -> str:
    """The Fisher fine-tuning folder's name: every setting that changes its start weights."""
    name = f"fisher_{method}_sigma{sigma:g}"
    if method == "eq1":
        name += f"_damping{damping:g}" + ("" if max_step is None else f"_maxstep{max_step:g}")
    return name + ("_zerohead" if zero_head else "") + (
        "" if max_samples is None else f"_samples{max_samples}")


def _finite(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def _trial_text(trials: list[dict]) -> str:
    """``value:val R %`` per value tried, in order (``*`` marks those meeting the rule)."""
    return " ".join(f"{t['value']:g}:{pct(t['val_r_acc'])}{'*' if t['ok'] else ''}"
                    for t in trials)


def fisher_row(run: Run, relearn_rounds: int, max_samples: int | None = None, *,
               method: str = "eq1", sigmas: Sequence[float] | None = None,
               keep_fraction: float | None = None,
               damping: float | Sequence[float] | None = None, max_step: float | None = None,
               zero_head: bool = False, progress: bool = False) -> dict:
    """Our method and the Fisher-forgetting baseline on one run (one bias probability q).

    The baseline (``fisher.fisher_forget``): Δ and the diagonal Fisher F of the raw model on
    one round's worth of participants' retained data (``max_samples`` per client, None =
    all), then ``method`` ("eq1": the paper's Eq. 1, w - (F + damping)^{-1} Δ +
    σ (F + damping)^{-1/4} b, each step element clamped to ±``max_step`` when given;
    "golatkar-var": noise of variance σ² / F, no Newton step), ``zero_head`` clearing the
    forgotten classes' classifier rows, then the same federated fine-tuning as ours.

    Choices on validation data, with bound = ``keep_fraction`` × the raw model's validation
    R-set accuracy: a ``damping`` grid (one number = fixed) by ``fisher.choose_damping``,
    the smallest damping whose Newton step alone keeps validation R >= bound (none: the
    largest; "eq1" only); then σ from ``sigmas`` by ``fisher.choose_sigma``, the largest σ
    whose validation R right after the step is >= bound (none: the smallest; "golatkar-var"
    drops σ = 0); a step leaving non-finite weights or logits never meets the bound.
    Validation data: the run's validation split or, when it has none, half of each class's
    test images (``with_validation(0.5, seed=0)``; column ``σ chosen on``), used for these
    choices only: the row's other accuracies are on the run's test split.
    Defaults: ``fisher.SIGMA_GRID``, ``fisher.KEEP_FRACTION``, ``fisher.DAMPING_GRID``.
    Fine-tuning is cached in ``run.path / _fisher_dir(...)`` (method, chosen σ and damping,
    clamp, head, samples), so no other setting reuses it.
    """
    sigmas = fl.SIGMA_GRID if sigmas is None else tuple(float(s) for s in sigmas)
    if method == "golatkar-var":  # alpha = σ² must be > 0
        sigmas = tuple(s for s in sigmas if s > 0)
    keep_fraction = fl.KEEP_FRACTION if keep_fraction is None else keep_fraction
    dampings = (fl.DAMPING_GRID if damping is None else tuple(float(d) for d in damping)
                if isinstance(damping, (list, tuple)) else (float(damping),))
    cfg, m = run.cfg, run.metrics
    fed = Federation(copy.deepcopy(run.raw), run.data, cfg.federation, forget=cfg.forget,
                     exclude=cfg.forget, device=cfg.device, progress=False)
    delta, fisher = fl.federated_statistics(fed, max_samples=max_samples)

    def step(model: nn.Module, sigma: float, damp: float) -> nn.Module:
        return fl.fisher_forget(model, fisher, cfg.forget, method=method, delta=delta,
                                sigma=sigma, damping=damp, max_step=max_step,
                                zero_head=zero_head, seed=cfg.federation.seed)

    has_val = run.data.val_y is not None
    val_data = run.data if has_val else run.data.with_validation(0.5, seed=0)
    vfed = Federation(copy.deepcopy(run.raw), val_data, cfg.federation, forget=cfg.forget,
                      device=cfg.device, progress=False)
    raw_val = vfed.evaluate(split="val")
    start = copy.deepcopy(run.raw.state_dict())
    val_u: dict[tuple[float, float], float | None] = {}

    finite: list[bool] = []
    vfed.model.register_forward_hook(lambda mod, inp, out: finite.append(
        bool(torch.isfinite(out).all())))

    def val_r_acc(sigma: float, damp: float) -> float | None:
        """Validation R-set accuracy after the step; None (failing the rule) when the
        weights or the logits are not finite (argmax of NaN logits still scores)."""
        vfed.model.load_state_dict(start)
        step(vfed.model, sigma, damp)
        finite.clear()
        res = vfed.evaluate(split="val")
        val_u[sigma, damp] = res["u_acc"]
        return res["r_acc"] if all(finite) and _finite(vfed.model) else None

    damp, damp_trials = dampings[0], []
    if method == "eq1":
        damp, damp_trials = fl.choose_damping(dampings, lambda d: val_r_acc(0.0, d),
                                              raw_val["r_acc"], keep_fraction)
    sigma, trials = fl.choose_sigma(sigmas, lambda s: val_r_acc(s, damp), raw_val["r_acc"],
                                    keep_fraction)
    chosen = next(t for t in trials if t["value"] == sigma)
    step(fed.model, sigma, damp)
    if not _finite(fed.model):
        raise ValueError(f"the Fisher step (damping {damp:g}, σ {sigma:g}) leaves non-finite "
                         "weights; give larger dampings or a max_step")
    stepped = fed.evaluate()
    out = run.path / _fisher_dir(method, sigma, damp, max_step, zero_head, max_samples)
    out.mkdir(exist_ok=True)
    ft, res = finetune(cfg, run.data, fed.model, None, out / "finetune.pt", m["target_r_acc"],
                       progress=progress, desc="fisher fine-tune")
    final = ft.evaluate()
    ev = evidence(run, {"raw": run.raw, "ours": run.unlearned, "fisher": ft.model,
                        "retrained": run.retrained}, relearn_rounds)
    row = {**describe(run), "rounds retrain": m["rounds_retrain"]}
    for name, rounds, acc in (("ours", m["rounds_finetune"], m["finetuned"]),
                              ("Fisher", res.rounds_to_target, final)):
        row.update({f"{name} rounds": rounds, f"{name} U": pct(acc["u_acc"]),
                    f"{name} R": pct(acc["r_acc"]),
                    f"{name} speedup": _round(speedup(m["rounds_retrain"], rounds))})
    row.update({"Fisher method": method + (" + zero head" if zero_head else ""),
                "σ chosen on": "val" if has_val else "half of test (no val split)",
                "raw val R": pct(raw_val["r_acc"]), "keep fraction": keep_fraction,
                "damping grid": " ".join(f"{d:g}" for d in sorted(dampings))
                if method == "eq1" else None,
                "Fisher damping": damp if method == "eq1" else None,
                "damping trials (val R %)": _trial_text(damp_trials) or None,
                "Fisher σ": sigma, "σ trials (val R %)": _trial_text(trials),
                "rule met": chosen["ok"],
                "Fisher val U after step": pct(val_u[sigma, damp]),
                "Fisher val R after step": pct(chosen["val_r_acc"]),
                "Fisher U after step": pct(stepped["u_acc"]),
                "Fisher R after step": pct(stepped["r_acc"])})
    for name, key in (("raw", "raw"), ("ours", "ours"), ("Fisher", "fisher"),
                      ("retrained", "retrained")):
        row.update({f"{name} {k}": v for k, v in evidence_columns(ev[key]).items()})
    return row


# ----------------------------------------------- Tables 3 and 6: several classes
def multiclass_row(run: Run, relearn_rounds: int) -> dict:
    """U/R after the first and the last class is pruned, fine-tuned and retrained."""
    m = run.metrics
    row = describe(run)
    phases = (("after first prune", m["per_class"][0]["after"]),
              ("after last prune", m["per_class"][-1]["after"]),
              ("fine-tuned", m["finetuned"]), ("retrained", m["retrained"]))
    for name, acc in phases:
        row.update({f"{name} U": pct(acc["u_acc"]), f"{name} R": pct(acc["r_acc"])})
    row.update({"rounds fine-tune": m["rounds_finetune"], "rounds retrain": m["rounds_retrain"],
                "speedup": _round(m["speedup"]), "speedup strict": _round(m["speedup_strict"])})
    ev = evidence(run, {"ours": run.unlearned, "retrained": run.retrained}, relearn_rounds)
    for name in ("ours", "retrained"):
        row.update({f"{name} {k}": v for k, v in evidence_columns(ev[name]).items()})
    return row


# ------------------------------------------------------------------ ablations
def ablation_mask(run: Run, selection: str, ratio: float) -> ChannelMask:
    """Channels to prune from the raw model for one arm (one of ``unlearn.ARMS``): TF-IDF
    arms run the unlearning request on a copy, weight arms rank the raw weights."""
    cfg = run.cfg
    ucfg = replace(arm_config(cfg.unlearning, selection), ratio=ratio)
    if ucfg.scores != "tfidf":
        return weight_selection(run.raw, ucfg, stream_seed(cfg.federation.seed, ucfg.seed))
    fed = Federation(copy.deepcopy(run.raw), run.data, cfg.federation, forget=cfg.forget,
                     device=cfg.device, progress=False)
    return prune_for_classes(fed, cfg.forget, ucfg)[0]


def ablation_arm(run: Run, name: str, mask: ChannelMask, rounds: int, stop: bool,
                 progress: bool = False) -> tuple[Federation, dict]:
    """Prune the raw model by ``mask`` and fine-tune: a fixed ``rounds`` budget, or until
    the strict stop rule when ``stop``; checkpointed under ``run.path/ablations/name``."""
    out = run.path / "ablations" / name
    out.mkdir(parents=True, exist_ok=True)
    target = run.metrics["target_r_acc"]
    ft, _ = finetune(run.cfg, run.data, copy.deepcopy(run.raw), mask, out / "finetune.pt",
                     target if stop else None, max_rounds=rounds, progress=progress,
                     desc=f"ablation {name}")
    hist, key = ft.history, ft.decision_key
    paper = rounds_for(hist, target, key)
    strict = rounds_for(hist, target, key, max_u=run.cfg.strict_u)
    m = run.metrics
    return ft, {"pruned channels": len(mask), "pruned U": pct(hist[0]["u_acc"]),
                "pruned R": pct(hist[0]["r_acc"]), "final U": pct(hist[-1]["u_acc"]),
                "final R": pct(hist[-1]["r_acc"]), "rounds to target": paper,
                "rounds strict": strict,
                "speedup": _round(speedup(m["rounds_retrain"], paper)),
                "speedup strict": _round(speedup(m["rounds_retrain_strict"], strict))}


def mask_vs_remove(run: Run, mask: ChannelMask, rounds: int = 2) -> list[dict]:
    """Accuracy, parameters, MACs and seconds per fine-tuning round, masked vs removed."""
    rows = []
    example = torch.zeros(1, 3, 32, 32, device=run.cfg.device)
    for mode in ("mask", "remove"):
        model = mask.apply(copy.deepcopy(run.raw))
        keep = mask
        if mode == "remove":
            model, keep, _ = remove_channels(model, mask, example)
        fed = Federation(model, run.data, run.cfg.federation, forget=run.cfg.forget,
                         exclude=run.cfg.forget, mask=copy.deepcopy(keep),
                         device=run.cfg.device, progress=False)
        acc = fed.evaluate()
        t0 = time.perf_counter()
        for _ in range(rounds):
            fed.run_round()
        rows.append({"apply": mode, "U": pct(acc["u_acc"]), "R": pct(acc["r_acc"]),
                     "params": sum(p.numel() for p in model.parameters()),
                     "MACs": conv_flops(model),
                     "s/round": round((time.perf_counter() - t0) / rounds, 2)})
    return rows


def selection_stability(run: Run, q: float, sizes: Sequence[int], repeats: int,
                        ratio: float) -> list[dict]:
    """Jaccard overlap between the channels selected from ``k`` random clients' uploads and
    from every client's, for the forget classes' first class, with clients split by ``q``."""
    cfg = replace(run.cfg.federation, q=q)
    fed = Federation(copy.deepcopy(run.raw), run.data, cfg, device=run.cfg.device,
                     progress=False)
    target = run.cfg.forget[0]
    uploads = [local_proc(fed.model, c, fed.transform, run.data.num_classes)
               for c in fed.clients]

    def chosen(ups: list) -> ChannelMask | None:
        acts, counts = aggregate(ups)
        if counts[target] == 0:
            return None
        return server_selection(acts, target, replace(run.cfg.unlearning, ratio=ratio))

    full = chosen(uploads)
    rows = []
    rng = np.random.default_rng([cfg.seed, 31])
    for k in sorted({min(k, len(uploads)) for k in sizes}):
        scores = []
        for _ in range(repeats if k < len(uploads) else 1):
            sel = chosen([uploads[i] for i in rng.choice(len(uploads), k, replace=False)])
            scores.append(np.nan if sel is None else jaccard(sel, full))
        s = np.array(scores)
        rows.append({"q": q, "clients": k, "Jaccard mean": round(float(np.nanmean(s)), 3)
                     if (~np.isnan(s)).any() else None,
                     "Jaccard min": round(float(np.nanmin(s)), 3)
                     if (~np.isnan(s)).any() else None,
                     "samples": len(s), "without the class": int(np.isnan(s).sum())})
    return rows


def demo_runs(experiment: dict, variations: Sequence[dict], out: str | Path) -> list[Path]:
    """Run ``experiment`` once per variation (e.g. ``{"forget": [0]}``) under ``out``, sharing
    one pretraining per bias probability and seed, and its retraining per forget set: the
    stand-alone default of the study notebooks."""
    out = Path(out)
    paths = []
    for i, var in enumerate(variations):
        cfg = ExperimentConfig.from_dict({**experiment, **var, **{
            part: {**experiment.get(part, {}), **var.get(part, {})}
            for part in ("federation", "unlearning")}})
        pre = f"q{cfg.federation.q}_seed{cfg.federation.seed}"
        forget = "-".join(map(str, cfg.forget))
        run_experiment(cfg, out / f"run{i}", progress=False, pretrained=out / f"pretrain_{pre}.pt",
                       retrained=out / f"retrain_{pre}_forget{forget}.pt")
        paths.append(out / f"run{i}")
    return paths


def idf_reading_overlap(run: Run, ratio: float, num_clients: int | None = None) -> list[dict]:
    """Per class of the data set, the Jaccard overlap of the channels the two IDF readings
    ("class", Eq. 7 as printed; "channel", the authors' code) select from the raw model,
    on the same participants' uploads (drawn among all clients)."""
    fed = Federation(copy.deepcopy(run.raw), run.data, run.cfg.federation,
                     device=run.cfg.device, progress=False)
    return reading_overlap(fed, range(run.data.num_classes), ratio,
                           num_clients or fed.cfg.clients_per_round, run.cfg.unlearning.scope)


def reading_overlap(fed: Federation, classes: Sequence[int], ratio: float, num_clients: int,
                    scope: str = "global") -> list[dict]:
    """``idf_reading_overlap`` on a federation's current model."""
    chosen = score_participants(fed, classes[0], num_clients, "all")
    acts, _ = aggregate([local_proc(fed.model, fed.clients[c], fed.transform,
                                    fed.data.num_classes) for c in chosen])
    rows = []
    for cls in classes:
        sel = {reading: select_channels(layer_scores(acts, cls, reading), ratio, scope=scope)
               for reading in IDF_THRESHOLDS}
        rows.append({"class": int(cls), "R": ratio, "clients": len(chosen),
                     "selected": len(sel["class"]),
                     "shared": len(sel["class"].pairs() & sel["channel"].pairs()),
                     "Jaccard": round(jaccard(sel["class"], sel["channel"]), 3)})
    return rows
