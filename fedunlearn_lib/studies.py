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

from .classwise import accuracy_kl, per_class_accuracy
from .data import BatchTransform
from .evidence import information_left
from .experiment import ExperimentConfig, Run, finetune, run_experiment, speedup
from .federated import Federation, rounds_for
from .fisher import federated_fisher, fisher_forget
from .masking import ChannelMask
from .mia import FEATURES, membership_attack, model_logits
from .procs import aggregate, local_proc
from .pruning import (conv_flops, l1_scores, layer_scores, random_scores, remove_channels,
                      select_channels)
from .unlearn import prune_for_classes


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
    """Relearn rounds and probe accuracy for each named model (cached in ``run.path``)."""
    target = run.metrics["raw"]["u_acc"]
    return {name: information_left(name, m, run.data, run.cfg.federation, run.cfg.forget,
                                   target, max_rounds, run.path / "evidence", run.cfg.device)
            for name, m in models.items()}


def evidence_columns(ev: dict) -> dict:
    """``relearn`` (rounds, or ``>budget``) and ``probe U`` (%) for one model."""
    r = ev["relearn"]
    return {"relearn": r["rounds"] if r["rounds"] is not None else f">{r['budget']}",
            "probe U": pct(ev["probe"])}


# ---------------------------------------------------------------- Table 4: MIA
def mia_rows(run: Run, kinds: Sequence[str] = FEATURES, max_samples: int = 2000,
             seed: int = 0) -> list[dict]:
    """Membership-attack success rate on the forgotten classes' training samples for the
    raw, unlearned and retrained model, per attack feature."""
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
def fisher_row(run: Run, alpha: float, relearn_rounds: int, max_samples: int | None = None,
               progress: bool = False) -> dict:
    """Our method and the Fisher-forgetting baseline on one run (one bias probability q)."""
    cfg, m = run.cfg, run.metrics
    out = run.path / f"fisher_alpha{alpha:g}"
    out.mkdir(exist_ok=True)
    model = copy.deepcopy(run.raw)
    fed = Federation(model, run.data, cfg.federation, forget=cfg.forget, exclude=cfg.forget,
                     device=cfg.device, progress=False)
    fisher_forget(model, federated_fisher(fed, max_samples=max_samples), cfg.forget, alpha,
                  seed=cfg.federation.seed)
    noised = fed.evaluate()
    ft, res = finetune(cfg, run.data, model, None, out / "finetune.pt", m["target_r_acc"],
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
    row.update({"Fisher U after noise": pct(noised["u_acc"]),
                "Fisher R after noise": pct(noised["r_acc"])})
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
SELECTIONS = ("none", "random", "l1", "tfidf-lowest", "tfidf-highest")


def ablation_mask(run: Run, selection: str, ratio: float) -> ChannelMask:
    """Channels to prune from the raw model for one ablation arm."""
    cfg = run.cfg
    if selection == "none":
        return ChannelMask()
    if selection in ("random", "l1"):
        scores = (random_scores(run.raw, cfg.federation.seed) if selection == "random"
                  else l1_scores(run.raw))
        return select_channels(scores, ratio, direction="highest" if selection == "random"
                               else "lowest", scope=cfg.unlearning.scope)
    if selection not in ("tfidf-lowest", "tfidf-highest"):
        raise ValueError(f"unknown selection {selection!r}; choose one of "
                         f"{', '.join(SELECTIONS)}")
    fed = Federation(copy.deepcopy(run.raw), run.data, cfg.federation, forget=cfg.forget,
                     device=cfg.device, progress=False)
    ucfg = replace(cfg.unlearning, ratio=ratio, direction=selection.split("-")[1])
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
    hist = ft.history
    paper = rounds_for(hist, target)
    strict = rounds_for(hist, target, max_u=run.cfg.strict_u)
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

    def chosen(ups: list) -> set[tuple[str, int]] | None:
        acts, counts = aggregate(ups)
        if counts[target] == 0:
            return None
        sel = select_channels(layer_scores(acts, target), ratio,
                              direction=run.cfg.unlearning.direction,
                              scope=run.cfg.unlearning.scope)
        return {(n, j) for n, idx in sel.channels.items() for j in idx}

    full = chosen(uploads)
    rows = []
    rng = np.random.default_rng([cfg.seed, 31])
    for k in sorted({min(k, len(uploads)) for k in sizes}):
        scores = []
        for _ in range(repeats if k < len(uploads) else 1):
            sel = chosen([uploads[i] for i in rng.choice(len(uploads), k, replace=False)])
            scores.append(np.nan if sel is None else len(sel & full) / len(sel | full))
        s = np.array(scores)
        rows.append({"q": q, "clients": k, "Jaccard mean": round(float(np.nanmean(s)), 3)
                     if (~np.isnan(s)).any() else None,
                     "Jaccard min": round(float(np.nanmin(s)), 3)
                     if (~np.isnan(s)).any() else None,
                     "samples": len(s), "without the class": int(np.isnan(s).sum())})
    return rows


def demo_runs(experiment: dict, variations: Sequence[dict], out: str | Path) -> list[Path]:
    """Run ``experiment`` once per variation (e.g. ``{"forget": [0]}``) under ``out``, sharing
    one pretraining per bias probability: the stand-alone default of the study notebooks."""
    out = Path(out)
    paths = []
    for i, var in enumerate(variations):
        fed = {**experiment.get("federation", {}), **var.get("federation", {})}
        cfg = ExperimentConfig.from_dict({**experiment, **var, "federation": fed})
        pre = out / f"pretrain_q{cfg.federation.q}.pt"
        run_experiment(cfg, out / f"run{i}", progress=False, pretrained=pre)
        paths.append(out / f"run{i}")
    return paths
