"""Tables and figures of the paper from ``metrics.json`` files."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import numpy as np  # noqa: E402
import seaborn as sns  # noqa: E402

from .io import atomic_write  # noqa: E402

# metrics.json's accuracies and their names in Table 2: after pruning as is and with the
# BatchNorm statistics re-estimated on retained-class images; fine-tuned in the paper's
# stop round and after the last round run
PHASES = {"raw": "raw", "pruned": "pruned", "pruned_bn": "pruned BN re-est.",
          "finetuned_at_rule": "at paper stop", "finetuned": "final", "retrained": "retrained"}


def curve_key(history: list[dict], split: str = "r") -> str:
    """The history key of every round's ``split`` ("u" or "r") accuracy: validation when
    the run holds a validation split out (its rounds are evaluated on it), else test."""
    return f"val_{split}_acc" if "val_r_acc" in history[0] else f"{split}_acc"


def load_metrics(paths: Iterable[str | os.PathLike]) -> list[dict]:
    """Read metrics files, adding the file's path under ``"path"``."""
    runs = []
    for p in sorted(map(str, paths)):
        with open(p) as fh:
            runs.append({**json.load(fh), "path": p})
    return runs


def _label(run: dict) -> dict:
    c = run["config"]
    dataset = c["dataset"]
    if dataset == "imagefolder" and c.get("data_root"):  # name it after its folder
        dataset = Path(c["data_root"]).name
    return {"dataset": dataset, "model": c["model"],
            "forget": ",".join(map(str, c["forget"])), "q": c["federation"]["q"],
            "seed": c["federation"]["seed"],
            "unlearning seed": c["unlearning"].get("seed", 0),
            "direction": c["unlearning"]["direction"]}


def mean_sd(values: Iterable[float | None], digits: int = 2) -> str | None:
    """"mean ± sd" of the values present (sample sd); the mean alone for one value."""
    v = np.array([x for x in values if x is not None and not pd.isna(x)], dtype=float)
    if len(v) == 0:
        return None
    if len(v) == 1:
        return f"{v[0]:.{digits}f}"
    return f"{v.mean():.{digits}f} ± {v.std(ddof=1):.{digits}f}"


def summarize(df: pd.DataFrame, by: Sequence[str], columns: Sequence[str],
              digits: Mapping[str, int] | None = None) -> pd.DataFrame:
    """One row per group of ``by``: "mean ± sd" of each of ``columns`` (to ``digits[c]``
    decimals, else 2) over the values present, and ``n`` (runs)."""
    digits = digits or {}
    rows = []
    for key, part in df.groupby(list(by), sort=False):
        key = key if isinstance(key, tuple) else (key,)
        rows.append({**dict(zip(by, key)), "n": len(part),
                     **{c: mean_sd(pd.to_numeric(part[c], errors="coerce"), digits.get(c, 2))
                        for c in columns}})
    return pd.DataFrame(rows)


# Table 2's columns that depend on the pretraining seed only (one pretraining, one
# retraining per seed): summarized over seeds, not over unlearning seeds
PER_SEED = ("raw U", "raw R", "retrained U", "retrained R", "rounds retrain")
KEYS = ["dataset", "model", "forget", "q"]
RATIOS = ("speedup", "speedup strict", "recipe ratio")  # per run; Table 2 takes ratios of means


def table2(runs: list[dict]) -> pd.DataFrame:
    """The paper's Table 2 over seeds: per data set, model, forget set and q, mean ± sd of
    ``table2_runs``' numbers over runs (n), those of the pretrained and retrained models
    over pretraining seeds (seeds), the speedups as ratios of mean rounds (runs that met
    both targets; a run met at round 0 counts 0 rounds) and how many runs never reached
    the target."""
    df = table2_runs(runs)
    numbers = [c for c in df.columns if c not in (*KEYS, "seed", "unlearning seed",
                                                  "direction", "U by fine-tuning round",
                                                  *RATIOS)]
    table = summarize(df, KEYS, [c for c in numbers if c not in PER_SEED])
    seeds = summarize(df.drop_duplicates([*KEYS, "seed"]), KEYS, list(PER_SEED))
    table.insert(len(KEYS) + 1, "seeds", seeds["n"].to_numpy())
    for col in PER_SEED:
        table[col] = seeds[col].to_numpy()
    groups = [part for _, part in df.groupby(KEYS, sort=False)]
    for name, ours, theirs in (("speedup", "rounds fine-tune", "rounds retrain"),
                               ("speedup strict", "rounds fine-tune strict",
                                "rounds retrain strict"),
                               ("recipe ratio", "rounds fine-tune strict", "recipe rounds")):
        table[f"{name} (ratio of means)"] = [ratio_of_means(p[theirs], p[ours]) for p in groups]
    table["no target (paper / strict)"] = [
        f"{p['rounds fine-tune'].isna().sum()} / {p['rounds fine-tune strict'].isna().sum()}"
        for p in groups]
    return table[[*KEYS, "n", "seeds", *numbers, *(f"{r} (ratio of means)" for r in RATIOS),
                  "no target (paper / strict)"]]


def ratio_of_means(numerator: pd.Series, denominator: pd.Series) -> float | None:
    """mean(numerator) / mean(denominator) over the rows where both are present (inf when
    the denominator's mean is 0; None when no row has both)."""
    both = pd.concat([pd.to_numeric(numerator), pd.to_numeric(denominator)], axis=1).dropna()
    if both.empty:
        return None
    den = both.iloc[:, 1].mean()
    return float("inf") if den == 0 else round(both.iloc[:, 0].mean() / den, 2)


def table2_runs(runs: list[dict]) -> pd.DataFrame:
    """The paper's Table 2, one row per run: U-/R-set test accuracy (%) raw, after pruning
    (as is, and with BatchNorm re-estimated), fine-tuned in the paper's stop round and
    after the last round, retrained; rounds to the target and speedup under the paper's
    and the strict stop rule (0 rounds: met before fine-tuning), retraining's cap; U-set %
    at every fine-tuning round on the decision split."""
    rows = []
    for run in runs:
        row = _label(run)
        for phase, name in PHASES.items():
            for split in ("u", "r"):
                v = (run.get(phase) or {}).get(f"{split}_acc")
                row[f"{name} {split.upper()}"] = None if v is None else round(100 * v, 2)
        row["rounds fine-tune"] = run["rounds_finetune"]
        row["rounds fine-tune strict"] = run["rounds_finetune_strict"]
        row["rounds retrain"] = run["rounds_retrain"]
        row["rounds retrain strict"] = run["rounds_retrain_strict"]
        row["retrain cap"] = run["rounds_retrain_cap"]
        row["recipe rounds"] = run["config"]["rounds"]
        for name, key in zip(RATIOS, ("speedup", "speedup_strict", "recipe_ratio")):
            row[name] = None if run[key] is None else round(run[key], 2)
        hist = run["history"]["finetune"]
        row["U by fine-tuning round"] = " ".join(f"{100 * h[curve_key(hist, 'u')]:.0f}"
                                                 for h in hist)
        rows.append(row)
    return pd.DataFrame(rows)


def accuracy_curves(runs: list[dict]) -> plt.Figure:
    """The paper's Figure 3: R-set accuracy per round (on the decision split, as every round
    is evaluated), fine-tuning vs retraining; with several seeds the mean and a band of
    one sd."""
    frames, retrained = [], set()
    for run in runs:
        lab = _label(run)
        panel = f"{lab['dataset']} / {lab['model']} / forget {lab['forget']}"
        for phase, name in (("finetune", "fine-tuning (ours)"), ("retrain", "retraining")):
            if phase == "retrain":  # one retraining per seed, shared by unlearning seeds
                if (panel, lab["seed"]) in retrained:
                    continue
                retrained.add((panel, lab["seed"]))
            hist = run["history"][phase]
            for h in hist:
                frames.append({"panel": panel, "round": h["round"], "curve": name,
                               "R-set accuracy (%)": 100 * h[curve_key(hist)]})
    df = pd.DataFrame(frames)
    sns.set_theme(style="whitegrid", context="paper", font_scale=1.3)
    panels = sorted(df["panel"].unique())
    g = sns.relplot(data=df, x="round", y="R-set accuracy (%)", hue="curve", col="panel",
                    col_order=panels, col_wrap=min(3, len(panels)), kind="line", marker="o",
                    errorbar="sd",
                    height=3.2, aspect=1.25, facet_kws={"sharex": False})
    g.set_titles("{col_name}")
    g.set_axis_labels("federated round", "R-set accuracy (%)")
    return g.figure


def training_runs(runs: list[dict]) -> list[dict]:
    """Every distinct pretraining and retraining behind ``runs`` (one per checkpoint; the
    unlearning runs that share one name it once): its labels, phase, validation and test
    R-set accuracy per round and wall seconds per round."""
    out, seen = [], set()
    for run in runs:
        c, lab = run["config"], _label(run)
        for phase in ("pretrain", "retrain"):
            key = run.get(f"{phase}ed_checkpoint") or (run["path"], phase)
            if key in seen or not run["history"].get(phase):
                continue
            seen.add(key)
            hist = run["history"][phase]
            rounds = max(h["round"] for h in hist) or 1
            per_round = run.get("seconds", {}).get(phase, float("nan")) / rounds
            data = "all" if c.get("train_per_class") is None else f"{c['train_per_class']}/class"
            out.append({**{k: lab[k] for k in ("dataset", "model", "q", "seed")},
                        "forget": "–" if phase == "pretrain" else lab["forget"],
                        "phase": phase, "train images": data, "history": hist,
                        "seconds per round": per_round,
                        "target round": run.get("rounds_retrain") if phase == "retrain" else None,
                        "cap": run.get("rounds_retrain_cap") if phase == "retrain" else None})
    return out


def training_table(runs: list[dict], targets: Mapping[str, float] | None = None) -> pd.DataFrame:
    """One row per pretraining and retraining behind ``runs``: rounds, final R-set accuracy
    (%) on validation and test data and, where ``targets`` names the model, the target (%)
    and how far the final test accuracy lies below it (a negative gap: above); for a
    retraining also the round it reached the unlearning target in, its cap, and whether
    that came before 80% of the cap (a cap that does not bind)."""
    targets = targets or {}
    rows = []
    for t in training_runs(runs):
        last = t["history"][-1]
        val = last.get("val_r_acc")
        row = {k: t[k] for k in ("dataset", "model", "q", "seed", "forget", "phase",
                                 "train images")}
        row.update({"rounds": last["round"], "R val": None if val is None else round(100 * val, 2),
                    "R test": round(100 * last["r_acc"], 2)})
        target = targets.get(t["model"])
        row["target"] = target
        row["gap"] = None if target is None else round(target - row["R test"], 2)
        reached, cap = t["target round"], t["cap"]
        row.update({"target round": reached, "cap": cap,
                    "before 80% of cap": None if cap is None else
                    reached is not None and reached < 0.8 * cap})
        rows.append(row)
    return pd.DataFrame(rows)


def training_curves(runs: list[dict], targets: Mapping[str, float] | None = None) -> plt.Figure:
    """R-set accuracy against the training's wall-clock minutes (validation data where the
    run holds it out, else test data), one panel per model, one line per pretraining and
    retraining, a dashed line at the model's target: what more compute would buy."""
    targets = targets or {}
    frames = []
    for t in training_runs(runs):
        key = "val_r_acc" if t["history"][-1].get("val_r_acc") is not None else "r_acc"
        for h in t["history"]:
            frames.append({"model": t["model"], "minutes": h["round"] * t["seconds per round"] / 60,
                           "R-set accuracy (%)": 100 * h[key], "run": id(t),
                           "training": f"{t['phase']}, {t['train images']} images"})
    df = pd.DataFrame(frames)
    sns.set_theme(style="whitegrid", context="paper", font_scale=1.2)
    models = sorted(df["model"].unique())
    g = sns.relplot(data=df, x="minutes", y="R-set accuracy (%)", hue="training", units="run",
                    estimator=None, col="model", col_order=models, kind="line", marker="o",
                    height=3.2, aspect=1.3, facet_kws={"sharex": False})
    for model, ax in g.axes_dict.items():
        if model in targets:
            ax.axhline(targets[model], color="gray", ls="--")
    g.set_titles("{col_name}")
    g.set_axis_labels("training time on this machine (minutes)", "R-set accuracy (%)")
    return g.figure


def save_figure(fig: plt.Figure, stem: str | os.PathLike) -> list[Path]:
    """Save ``fig`` as ``stem.png`` and ``stem.pdf`` (atomically)."""
    out = []
    for ext in ("png", "pdf"):
        out.append(atomic_write(Path(f"{stem}.{ext}"),
                           lambda tmp, ext=ext: fig.savefig(tmp, format=ext, dpi=200,
                                                            bbox_inches="tight")))
    return out


def write_table(df: pd.DataFrame, stem: str | os.PathLike) -> list[Path]:
    """Write ``df`` as ``stem.csv`` and ``stem.md`` (atomically; "–" marks missing values)."""
    csv = atomic_write(Path(f"{stem}.csv"), lambda tmp: df.to_csv(tmp, index=False))
    shown = df.astype(object).where(df.notna(), None)  # missing values print as "–"
    md = atomic_write(Path(f"{stem}.md"), lambda tmp: Path(tmp).write_text(
        shown.to_markdown(index=False, missingval="–") + "\n"))
    return [csv, md]


def class_accuracy_figure(panels: list[tuple[str, dict]]) -> plt.Figure:
    """Figure for Table 5: class-wise test accuracy of the unlearned and retrained models over
    the remaining classes, one panel per (title, ``studies.kl_row`` accuracies)."""
    frames = []
    for title, acc in panels:
        for name in ("unlearned", "retrained"):
            frames.append(pd.DataFrame({"panel": title, "class": acc["classes"], "model": name,
                                        "accuracy (%)": 100 * acc[name]}))
    df = pd.concat(frames, ignore_index=True)
    sns.set_theme(style="whitegrid", context="paper", font_scale=1.2)
    g = sns.catplot(data=df, x="class", y="accuracy (%)", hue="model", col="panel",
                    col_wrap=min(2, len(panels)), kind="bar", height=3.0, aspect=1.6,
                    sharex=False)
    g.set_titles("{col_name}")
    g.set_xticklabels(rotation=45)
    return g.figure


def ablation_figure(histories: dict[str, list[dict]], target: float,
                    stability: pd.DataFrame) -> plt.Figure:
    """U- and R-set accuracy per fine-tuning round for each ablation arm, and the Jaccard
    overlap of the selected channels against the number of scoring clients."""
    sns.set_theme(style="whitegrid", context="paper", font_scale=1.2)
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
    for name, hist in histories.items():
        rounds = [h["round"] for h in hist]
        for ax, split in zip(axes[:2], ("u", "r")):
            ax.plot(rounds, [100 * h[curve_key(hist, split)] for h in hist], marker="o",
                    label=name)
    axes[1].axhline(100 * target, color="gray", ls="--", label="target")
    for ax, title in zip(axes[:2], ("U-set accuracy (forgotten)", "R-set accuracy (remaining)")):
        ax.set(xlabel="fine-tuning round", ylabel="accuracy (%)", title=title)
    axes[1].legend(fontsize=8)
    for q, part in stability.groupby("q"):
        axes[2].plot(part["clients"], part["Jaccard mean"], marker="o", label=f"q = {q}")
    axes[2].set(xscale="log", xlabel="clients running local proc",
                ylabel="Jaccard vs all clients", title="stability of the selected channels",
                ylim=(0, 1.05))
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    return fig


def robustness_figure(summary: pd.DataFrame) -> plt.Figure:
    """Per attack, the Jaccard overlap with the honest selection and the U-set accuracy
    after pruning against the poisoned fraction, one line per defence."""
    sns.set_theme(style="whitegrid", context="paper", font_scale=1.1)
    attacks = list(dict.fromkeys(summary["attack"]))
    fig, axes = plt.subplots(2, len(attacks), figsize=(4.5 * len(attacks), 6.5), squeeze=False)
    for col, attack in enumerate(attacks):
        part = summary[summary["attack"] == attack]
        for defence, rows in part.groupby("defence", sort=False):
            axes[0, col].plot(100 * rows["f"], rows["Jaccard mean"], marker="o", label=defence)
            axes[1, col].plot(100 * rows["f"], rows["pruned U"], marker="o", label=defence)
        axes[0, col].set(title=attack, ylabel="Jaccard vs honest", ylim=(0, 1.05))
        axes[1, col].set(xlabel="poisoned participants (%)", ylabel="U-set acc. after pruning (%)",
                         ylim=(-2, 102))
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def decide_figure(runs: pd.DataFrame, retrain: pd.DataFrame, target: float,
                  split: str = "validation") -> plt.Figure:
    """The deciding comparison: U- and R-set accuracy on ``split`` per fine-tuning round for
    each arm (mean, band of one sd over runs; round 0 is right after pruning), retraining's
    R over the same rounds and the target, all on that split."""
    retrain = retrain[retrain["round"] <= runs["round"].max()]
    sns.set_theme(style="whitegrid", context="paper", font_scale=1.2)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, key, title in ((axes[0], "U", "U-set accuracy (forgotten)"),
                           (axes[1], "R", "R-set accuracy (remaining)")):
        sns.lineplot(data=runs, x="round", y=key, hue="arm", errorbar="sd", marker="o", ax=ax)
        ax.set(xlabel="fine-tuning round", ylabel=f"{split} accuracy (%)", title=title)
    sns.lineplot(data=retrain, x="round", y="R", errorbar="sd", color="black", ls=":",
                 label="retraining", ax=axes[1])
    axes[1].axhline(100 * target, color="gray", ls="--", label="target (mean)")
    axes[0].get_legend().remove()
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    return fig


def jobs_table(benchmark_files: Iterable[str | os.PathLike]) -> pd.DataFrame:
    """Every job's wall-clock seconds from Snakemake's ``benchmark:`` records
    (``<rule>/<job>.tsv``), with the total (and hours) in the last row."""
    rows = []
    for path in sorted(map(Path, benchmark_files)):
        rec = pd.read_csv(path, sep="\t")
        rows.append({"job": path.stem, "rule": path.parent.name,
                     "seconds": round(float(rec["s"].iloc[-1]), 1)})
    df = pd.DataFrame(rows, columns=["job", "rule", "seconds"])
    total = pd.DataFrame([{"job": "total", "rule": f"{len(df)} jobs",
                           "seconds": round(float(df["seconds"].sum()), 1)}])
    df = pd.concat([df, total], ignore_index=True)
    df["hours"] = (df["seconds"] / 3600).round(3)
    return df
