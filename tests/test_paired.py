"""Paired comparisons of arms over pretraining seeds, on hand-made per-run tables."""
import math

import numpy as np
import pandas as pd
import pytest

from fedunlearn_lib.paired import (FEW_SEEDS, paired_differences, paired_interval,
                                   paired_table, seed_means)

T_975_2 = 4.302652729749  # t_{0.975, 2}, the 97.5% quantile of Student's t with 2 df


def runs(differences: dict[tuple[int, int], float | None], arm: str = "l1") -> pd.DataFrame:
    """Baseline "none" and ``arm`` runs per (seed, unlearning seed); the baseline's value is
    10 * seed + unlearning seed, ``arm``'s that plus the given difference (None: the arm's
    run has no value). A "random" arm, 100 above the baseline, must never enter."""
    rows = []
    for (s, u), d in differences.items():
        base = 10.0 * s + u
        rows.append({"arm": "none", "seed": s, "unlearning seed": u, "rounds strict": base})
        rows.append({"arm": arm, "seed": s, "unlearning seed": u,
                     "rounds strict": None if d is None else base + d})
        rows.append({"arm": "random", "seed": s, "unlearning seed": u,
                     "rounds strict": base + 100})
    return pd.DataFrame(rows)


# 3 seeds x 2 unlearning seeds: seed 0: 1, 3 (mean 2); seed 1: 2, 4 (mean 3); seed 2: 3, 5
# (mean 4)
SEPARATED = {(0, 0): 1, (0, 1): 3, (1, 0): 2, (1, 1): 4, (2, 0): 3, (2, 1): 5}
# seed means -1 (= (-2 + 0) / 2), 1 (= (0 + 2) / 2), 3 (= (2 + 4) / 2)
MIXED = {(0, 0): -2, (0, 1): 0, (1, 0): 0, (1, 1): 2, (2, 0): 2, (2, 1): 4}


def test_paired_differences_are_arm_minus_baseline_per_pair():
    diffs, dropped = paired_differences(runs(SEPARATED), "rounds strict", "l1", "none")
    assert list(diffs.columns) == ["seed", "unlearning seed", "difference"]
    assert list(zip(diffs["seed"], diffs["unlearning seed"])) == list(SEPARATED)
    assert diffs["difference"].tolist() == [1, 3, 2, 4, 3, 5]
    assert dropped == 0
    # the other way round, the differences change sign
    back, _ = paired_differences(runs(SEPARATED), "rounds strict", "none", "l1")
    assert back["difference"].tolist() == [-1, -3, -2, -4, -3, -5]


def test_seed_means_average_unlearning_seeds_within_a_pretraining_seed():
    diffs, _ = paired_differences(runs(SEPARATED), "rounds strict", "l1", "none")
    means = seed_means(diffs)
    # (1 + 3) / 2 = 2, (2 + 4) / 2 = 3, (3 + 5) / 2 = 4
    assert means.to_dict() == {0: 2.0, 1: 3.0, 2: 4.0}


def test_interval_excluding_zero_differs():
    r = paired_interval(runs(SEPARATED), "rounds strict", "l1", "none")
    assert (r.arm, r.baseline, r.column) == ("l1", "none", "rounds strict")
    assert (r.n_pairs, r.n_seeds, r.n_missing) == (6, 3, 0)
    # mean of the seed means (2, 3, 4) = 3; sd = sqrt(((-1)^2 + 0^2 + 1^2) / 2) = 1
    # half width = 4.302653 * 1 / sqrt(3) = 2.484138: [0.515862, 5.484138], excludes 0
    assert r.mean == pytest.approx(3.0)
    half = T_975_2 * 1 / math.sqrt(3)
    assert r.t_low == pytest.approx(3 - half) and r.t_low == pytest.approx(0.515862, abs=1e-6)
    assert r.t_high == pytest.approx(3 + half) and r.t_high == pytest.approx(5.484138, abs=1e-6)
    assert r.verdict == "differ"
    # the bootstrap resamples the seed means 2, 3, 4: its interval lies within [2, 4]
    assert 2 <= r.boot_low <= r.boot_high <= 4


def test_interval_including_zero_cannot_be_separated():
    r = paired_interval(runs(MIXED), "rounds strict", "l1", "none")
    # seed means -1, 1, 3: mean 1; sd = sqrt((2^2 + 0^2 + 2^2) / 2) = 2
    # half width = 4.302653 * 2 / sqrt(3) = 4.968275: [-3.968275, 5.968275], includes 0
    half = T_975_2 * 2 / math.sqrt(3)
    assert r.mean == pytest.approx(1.0)
    assert (r.t_low, r.t_high) == (pytest.approx(1 - half), pytest.approx(1 + half))
    assert r.t_low == pytest.approx(-3.968275, abs=1e-6)
    assert r.verdict == "cannot be separated"
    assert -1 <= r.boot_low <= r.boot_high <= 3


def test_verdict_follows_t_not_bootstrap_when_all_seed_means_share_a_sign():
    # seed means 1, 2, 9 (each from two equal differences): mean 4,
    # sd = sqrt(((-3)^2 + (-2)^2 + 5^2) / 2) = sqrt(19) = 4.358899
    # half width = 4.302653 * 4.358899 / sqrt(3) = 10.828143: [-6.83, 14.83], includes 0
    diffs = {(0, 0): 1, (0, 1): 1, (1, 0): 2, (1, 1): 2, (2, 0): 9, (2, 1): 9}
    r = paired_interval(runs(diffs), "rounds strict", "l1", "none")
    half = T_975_2 * math.sqrt(19) / math.sqrt(3)
    assert (r.t_low, r.t_high) == (pytest.approx(4 - half), pytest.approx(4 + half))
    # all three seed means positive: each resample's mean is >= 1, so the bootstrap
    # interval excludes 0 (its 2.5% quantile is the all-"1" resample, chance 1/27 > 2.5%)
    assert r.boot_low == pytest.approx(1.0)
    assert r.verdict == "cannot be separated"


def test_bootstrap_is_reproducible_and_follows_its_seed():
    a = paired_interval(runs(MIXED), "rounds strict", "l1", "none", n_boot=500, seed=3)
    b = paired_interval(runs(MIXED), "rounds strict", "l1", "none", n_boot=500, seed=3)
    assert (a.boot_low, a.boot_high) == (b.boot_low, b.boot_high)
    # by hand: the mean of each resample of the seed means with numpy's Generator(seed 3)
    means = np.array([-1.0, 1.0, 3.0])
    boot = means[np.random.default_rng(3).integers(0, 3, size=(500, 3))].mean(axis=1)
    assert (a.boot_low, a.boot_high) == pytest.approx(tuple(np.quantile(boot, [0.025, 0.975])))


def test_missing_and_unpaired_runs_are_dropped_and_counted():
    diffs = dict(SEPARATED)
    diffs[(1, 1)] = None  # the arm's run never met the target
    per_run = runs(diffs)
    # the baseline's run of (2, 1) has no value; (0, 2) is run by the baseline only
    per_run.loc[(per_run["arm"] == "none") & (per_run["seed"] == 2)
                & (per_run["unlearning seed"] == 1), "rounds strict"] = np.nan
    per_run = pd.concat([per_run, pd.DataFrame([{"arm": "none", "seed": 0,
                                                 "unlearning seed": 2, "rounds strict": 7.0}])])
    got, dropped = paired_differences(per_run, "rounds strict", "l1", "none")
    assert list(zip(got["seed"], got["unlearning seed"])) == [(0, 0), (0, 1), (1, 0), (2, 0)]
    assert dropped == 3
    # seed means: (1 + 3) / 2 = 2, 2 (one pair left), 3 (one pair left); mean 7/3
    assert seed_means(got).to_dict() == {0: 2.0, 1: 2.0, 2: 3.0}
    r = paired_interval(per_run, "rounds strict", "l1", "none")
    assert (r.n_pairs, r.n_seeds, r.n_missing) == (4, 3, 3)
    assert r.mean == pytest.approx(7 / 3)


def test_one_pretraining_seed_cannot_be_separated():
    r = paired_interval(runs({(0, 0): 5, (0, 1): 7}), "rounds strict", "l1", "none")
    assert (r.n_pairs, r.n_seeds, r.mean) == (2, 1, 6.0)  # (5 + 7) / 2
    assert all(math.isnan(v) for v in (r.t_low, r.t_high, r.boot_low, r.boot_high))
    assert r.verdict == FEW_SEEDS == "cannot be separated (fewer than 2 pretraining seeds)"


def test_bad_names_and_duplicate_runs_are_errors():
    per_run = runs(SEPARATED)
    with pytest.raises(ValueError, match="'final u'"):
        paired_interval(per_run, "final u", "l1", "none")
    with pytest.raises(ValueError, match="'tfidf'"):
        paired_differences(per_run, "rounds strict", "tfidf", "none")
    with pytest.raises(ValueError, match="more than one run"):
        paired_differences(pd.concat([per_run, per_run.iloc[:1]]), "rounds strict", "l1",
                           "none")


def test_paired_table_has_one_row_per_arm_and_measure():
    per_run = runs(SEPARATED)
    per_run["final U"] = [None if arm == "l1" else 0.5 for arm in per_run["arm"]]
    table = paired_table(per_run, ["rounds strict", "final U"], ["none", "l1", "random"],
                         "none")
    assert list(table.columns) == ["arm", "vs", "measure", "pairs", "seeds", "missing",
                                   "mean diff", "95% CI (t)", "95% CI (bootstrap)", "verdict"]
    assert list(zip(table["arm"], table["measure"])) == [
        ("l1", "rounds strict"), ("l1", "final U"),
        ("random", "rounds strict"), ("random", "final U")]
    assert (table["vs"] == "none").all()
    l1 = table.iloc[0]
    assert (l1["pairs"], l1["seeds"], l1["missing"], l1["mean diff"]) == (6, 3, 0, 3.0)
    assert l1["95% CI (t)"] == "[0.52, 5.48]"  # 3 -/+ 2.484138
    assert l1["verdict"] == "differ"
    # l1 has no final U: nothing paired, no interval
    empty = table.iloc[1]
    assert (empty["pairs"], empty["seeds"], empty["missing"]) == (0, 0, 6)
    assert empty["95% CI (t)"] == empty["95% CI (bootstrap)"] == "–"
    assert empty["verdict"] == FEW_SEEDS
    # random is 100 above the baseline everywhere: sd 0, a zero-width interval at 100
    random = table.iloc[2]
    assert random["95% CI (t)"] == random["95% CI (bootstrap)"] == "[100.00, 100.00]"
    assert table.iloc[3]["mean diff"] == 0.0


def test_sensitivity_table_compares_the_paired_difference_at_two_rates():
    from fedunlearn_lib.paired import sensitivity_table
    chosen = pd.DataFrame([
        {"arm": a, "seed": s, "unlearning seed": u, "fine-tuning lr": 0.05, "final U": v}
        for (a, s, u), v in {("none", 0, 0): 80.0, ("none", 0, 1): 70.0,
                             ("tfidf-highest", 0, 0): 10.0, ("tfidf-highest", 0, 1): 20.0,
                             ("none", 1, 0): 0.0, ("tfidf-highest", 1, 0): 99.0}.items()])
    other = pd.DataFrame([
        {"arm": a, "seed": 0, "unlearning seed": u, "fine-tuning lr": 0.01, "final U": v}
        for (a, u), v in {("none", 0): 50.0, ("none", 1): 60.0, ("tfidf-highest", 0): 55.0,
                          ("tfidf-highest", 1): 75.0}.items()])
    row = sensitivity_table(chosen, other, ["final U"]).iloc[0]
    # seed 1 ran only at the chosen rate: left out so that both rates cover the same pairs
    assert row["pairs chosen"] == 2 and row["mean diff chosen"] == -60.0
    assert row["diffs chosen"] == "-70.00, -50.00"
    assert row["lr other"] == "0.01" and row["mean diff other"] == 10.0
    assert bool(row["same direction"]) is False and row["same direction"] is not None
