"""Paired comparisons of unlearning arms, with the pretraining seed as the independent unit.

Every arm unlearns the same pretrained models (one per pretraining seed, ``seed``) with the
same random draws (one stream per ``unlearning seed``), so two arms are compared by their
differences on each (seed, unlearning seed) pair. The unlearning seeds of one pretrained
model are not independent of each other; only the pretraining seeds are, so differences
are averaged per pretraining seed first and the intervals are taken over those means."""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

PAIR = ["seed", "unlearning seed"]
FEW_SEEDS = "cannot be separated (fewer than 2 pretraining seeds)"


def _arm_values(per_run: pd.DataFrame, column: str, arm: str) -> pd.Series:
    """``column`` of ``arm``'s runs as numbers (None -> NaN), indexed by (seed, unlearning
    seed); a pair run twice is an error (the table mixes settings)."""
    runs = per_run[per_run["arm"] == arm]
    if runs.empty:
        raise ValueError(f"no runs of arm {arm!r}; arms: {sorted(per_run['arm'].unique())}")
    twice = runs.duplicated(PAIR)
    if twice.any():
        pairs = runs.loc[twice, PAIR].drop_duplicates().to_records(index=False).tolist()
        raise ValueError(f"arm {arm!r} has more than one run of (seed, unlearning seed) "
                         f"{pairs}: compare one setting at a time")
    return pd.to_numeric(runs.set_index(PAIR)[column])


def paired_differences(per_run: pd.DataFrame, column: str, arm: str,
                       baseline: str) -> tuple[pd.DataFrame, int]:
    """``arm`` minus ``baseline`` in ``column`` per (seed, unlearning seed), and how many
    pairs were dropped.

    Returns a frame with columns seed, unlearning seed, difference (sorted by seed, then
    unlearning seed) for the pairs that both arms ran with a value in ``column``, and the
    number of (seed, unlearning seed) pairs of either arm left out: run by one arm only, or
    missing the value (NaN/None: a run that never met a target) in either."""
    missing = [c for c in ("arm", *PAIR, column) if c not in per_run.columns]
    if missing:
        raise ValueError(f"no such column {', '.join(map(repr, missing))} in the per-run "
                         f"table; columns: {list(per_run.columns)}")
    ours, theirs = _arm_values(per_run, column, arm), _arm_values(per_run, column, baseline)
    difference = (ours - theirs).dropna()  # aligned on (seed, unlearning seed); unpaired -> NaN
    n_dropped = len(ours.index.union(theirs.index)) - len(difference)
    diffs = difference.rename("difference").sort_index().reset_index()
    return diffs, n_dropped


def seed_means(diffs: pd.DataFrame) -> pd.Series:
    """The mean difference per pretraining seed (index: seed), over its unlearning seeds."""
    return diffs.groupby("seed")["difference"].mean().rename("seed mean")


@dataclass(frozen=True)
class PairedInterval:
    """One arm against a baseline in one measure: counts, the mean of the per-seed mean
    differences, its t and cluster-bootstrap intervals (NaN with fewer than 2 seeds) and
    the verdict."""
    arm: str
    baseline: str
    column: str
    n_pairs: int
    n_seeds: int
    n_missing: int
    mean: float
    t_low: float
    t_high: float
    boot_low: float
    boot_high: float
    level: float
    verdict: str


def paired_interval(per_run: pd.DataFrame, column: str, arm: str, baseline: str,
                    level: float = 0.95, n_boot: int = 10000, seed: int = 0) -> PairedInterval:
    """``arm`` minus ``baseline`` in ``column``, over the pretraining seeds.

    The mean is that of the per-seed mean differences (``seed_means``). The t-interval is
    mean ± t_{(1+level)/2, n_seeds-1} * sd / sqrt(n_seeds) over those means; the bootstrap
    interval is the percentile interval of the mean over ``n_boot`` resamples of the
    pretraining seeds with replacement (a cluster bootstrap: a seed's unlearning seeds
    travel together), drawn by ``numpy.random.default_rng(seed)``. Both are NaN with fewer
    than 2 seeds.

    The verdict is "differ" only when the t-interval excludes 0, else "cannot be
    separated". It does not use the bootstrap interval: with 3 seeds there are only 10
    distinct resamples, and the bootstrap interval excludes 0 whenever all three seed means
    share a sign, which happens with chance 1 in 4 when the arms do not differ (each mean
    positive or negative with chance 1/2: 2 * (1/2)^3); it is reported beside the t one."""
    diffs, n_missing = paired_differences(per_run, column, arm, baseline)
    means = seed_means(diffs).to_numpy()
    n = len(means)
    mean = float(means.mean()) if n else math.nan
    if n < 2:
        return PairedInterval(arm, baseline, column, len(diffs), n, n_missing, mean,
                              math.nan, math.nan, math.nan, math.nan, level, FEW_SEEDS)
    half = stats.t.ppf((1 + level) / 2, n - 1) * means.std(ddof=1) / math.sqrt(n)
    t_low, t_high = mean - half, mean + half
    resamples = means[np.random.default_rng(seed).integers(0, n, size=(n_boot, n))]
    boot_low, boot_high = np.quantile(resamples.mean(axis=1), [(1 - level) / 2,
                                                               (1 + level) / 2])
    verdict = "differ" if t_low > 0 or t_high < 0 else "cannot be separated"
    return PairedInterval(arm, baseline, column, len(diffs), n, n_missing, mean,
                          float(t_low), float(t_high), float(boot_low), float(boot_high),
                          level, verdict)


def _interval_text(low: float, high: float) -> str:
    """``[lo, hi]`` to 2 decimals, "–" when undefined."""
    return "–" if math.isnan(low) else f"[{low:.2f}, {high:.2f}]"


def paired_table(per_run: pd.DataFrame, columns: Sequence[str], arms: Sequence[str],
                 baseline: str, level: float = 0.95, n_boot: int = 10000,
                 seed: int = 0) -> pd.DataFrame:
    """One row per (arm, measure) for each arm in ``arms`` other than ``baseline``:
    ``paired_interval`` against ``baseline`` as text ready for a Markdown/CSV table (numbers
    to 2 decimals, intervals as "[lo, hi]", "–" when undefined; "missing" counts the pairs
    dropped)."""
    ci = f"{level:.0%} CI"
    rows = []
    for arm in arms:
        if arm == baseline:
            continue
        for column in columns:
            r = paired_interval(per_run, column, arm, baseline, level, n_boot, seed)
            rows.append({"arm": arm, "vs": baseline, "measure": column, "pairs": r.n_pairs,
                         "seeds": r.n_seeds, "missing": r.n_missing,
                         "mean diff": round(r.mean, 2),
                         f"{ci} (t)": _interval_text(r.t_low, r.t_high),
                         f"{ci} (bootstrap)": _interval_text(r.boot_low, r.boot_high),
                         "verdict": r.verdict})
    return pd.DataFrame(rows)


def sensitivity_table(chosen: pd.DataFrame, other: pd.DataFrame, columns: Sequence[str],
                      arm: str = "tfidf-highest", baseline: str = "none") -> pd.DataFrame:
    """Does the comparison of ``arm`` with ``baseline`` depend on fine-tuning's rate? One row
    per measure: the mean paired difference (``arm`` minus ``baseline`` per seed and
    unlearning seed) at the chosen rate (runs of ``chosen`` with the seeds that ``other``
    ran) and at the other rate (``other``), and whether the two point the same way. The
    rates come from the frames' "fine-tuning lr" column. With one pretraining seed there is
    no interval: the differences are given pair by pair."""
    seeds = set(other["seed"])
    chosen = chosen[chosen["seed"].isin(seeds) & chosen["arm"].isin((arm, baseline))]
    rows = []
    for column in columns:
        at = {}
        for name, frame in (("chosen", chosen), ("other", other)):
            diffs, _ = paired_differences(frame, column, arm, baseline)
            rates = sorted(set(frame["fine-tuning lr"]))
            at[name] = (", ".join(map(str, rates)), diffs["difference"])
        signs = {float(np.sign(d.mean())) if len(d) else math.nan for _, d in at.values()}
        rows.append({"measure": column, "arm": arm, "vs": baseline,
                     **{f"{k} {name}": v for name, (rate, d) in at.items() for k, v in (
                         ("lr", rate), ("pairs", len(d)),
                         ("mean diff", round(d.mean(), 2) if len(d) else None),
                         ("diffs", ", ".join(f"{x:.2f}" for x in d)))},
                     "same direction": None if any(map(math.isnan, signs))
                     else len(signs) == 1})
    return pd.DataFrame(rows)
