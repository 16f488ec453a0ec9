import json

import pandas as pd
import pytest

from fedunlearn_lib.compare import compare_folders, compare_tables, parse_cell
from fedunlearn_lib.report import (accuracy_curves, jobs_table, load_metrics, mean_sd,
                                   save_figure, summarize, table2, table2_runs, training_curves,
                                   training_table, write_table)


def _metrics(speedup=7.25, rounds_finetune=2):
    hist = [{"round": r, "loss": None, "u_acc": 0.0, "r_acc": 0.1 * r} for r in range(4)]
    acc = {"u_acc": 0.5, "r_acc": 0.25}
    return {"raw": acc, "pruned": acc, "pruned_bn": acc, "finetuned_at_rule": acc,
            "finetuned": acc, "retrained": {"u_acc": 0.0, "r_acc": 0.3},
            "rounds_finetune": rounds_finetune, "rounds_finetune_strict": rounds_finetune,
            "rounds_retrain": 3, "rounds_retrain_strict": 3, "rounds_retrain_cap": 6,
            "speedup": speedup, "speedup_strict": speedup, "recipe_ratio": None,
            "history": {"finetune": hist, "retrain": hist, "pretrain": hist},
            "config": {"dataset": "digits", "model": "resnet20", "forget": [0, 9],
                       "rounds": 4, "federation": {"q": 0.1, "seed": 0},
                       "unlearning": {"direction": "highest"}}}


def test_table2_has_one_row_per_run_in_percent(tmp_path):
    p = tmp_path / "metrics.json"
    p.write_text(json.dumps(_metrics()))
    runs = load_metrics([p])
    t = table2_runs(runs + [{**_metrics(None), "path": "x"}])
    assert list(t["forget"]) == ["0,9", "0,9"]
    assert t.loc[0, "raw U"] == 50.0 and t.loc[0, "retrained R"] == 30.0
    assert t.loc[0, "pruned BN re-est. U"] == 50.0 and t.loc[0, "at paper stop R"] == 25.0
    assert t.loc[0, "speedup"] == 7.25 and t["speedup"].isna().iloc[1]
    assert t.loc[0, "U by fine-tuning round"] == "0 0 0 0"
    written = write_table(t, tmp_path / "table2")
    assert [w.suffix for w in written] == [".csv", ".md"]
    assert "| digits" in (tmp_path / "table2.md").read_text()


def test_figure3_has_a_panel_per_experiment_and_saves_png_and_pdf(tmp_path):
    fig = accuracy_curves([_metrics()])
    assert len(fig.axes) == 1
    paths = save_figure(fig, tmp_path / "fig3")
    assert all(p.stat().st_size > 1000 for p in paths)


def test_training_table_has_one_row_per_checkpoint_and_the_gap_to_the_target(tmp_path):
    runs = []
    for useed in (0, 1):  # two unlearning runs sharing one pretraining and one retraining
        m = _metrics()
        m["config"]["unlearning"] = {"direction": "highest", "seed": useed}
        m["history"]["pretrain"] = [{"round": 0, "r_acc": 0.1, "val_r_acc": 0.1},
                                    {"round": 2, "r_acc": 0.7, "val_r_acc": 0.72}]
        m.update(seconds={"pretrain": 60.0, "retrain": 30.0}, pretrained_checkpoint="p.pt",
                 retrained_checkpoint="r.pt", path=f"run{useed}")
        runs.append(m)
    t = training_table(runs, {"resnet20": 75.0})
    assert list(t["phase"]) == ["pretrain", "retrain"] and list(t["forget"]) == ["–", "0,9"]
    assert t.loc[0, "R val"] == 72.0 and t.loc[0, "R test"] == 70.0 and t.loc[0, "gap"] == 5.0
    assert pd.isna(t.loc[1, "R val"]) and t.loc[1, "R test"] == 30.0  # no validation split
    assert training_table(runs)["gap"].isna().all()  # no target named
    fig = training_curves(runs, {"resnet20": 75.0})
    ax = fig.axes[0]
    assert ax.get_xlim()[1] >= 1.0  # 2 rounds of 30 s: one minute
    assert any(list(line.get_ydata()) == [75.0, 75.0] for line in ax.get_lines())


def test_table2_gives_mean_sd_and_n_over_seeds():
    runs = [_metrics(1.5, 2), _metrics(inf := float("inf"), 0), _metrics(None, None)]
    runs[1]["config"] = {**runs[1]["config"], "federation": {"q": 0.1, "seed": 1}}
    runs[2]["retrained"] = {"u_acc": 0.0, "r_acc": 0.9}  # seed 0 again: not a third value
    assert inf == float("inf")
    t = table2(runs)
    assert len(t) == 1 and t.loc[0, "n"] == 3 and t.loc[0, "seeds"] == 2
    # a run met at round 0 counts 0 rounds; the one that never met it is left out:
    # mean retraining rounds 3 over mean fine-tuning rounds (2 + 0) / 2 = 1
    assert t.loc[0, "rounds fine-tune"] == "1.00 ± 1.41"
    assert t.loc[0, "speedup (ratio of means)"] == 3.0
    assert t.loc[0, "no target (paper / strict)"] == "1 / 1"
    # the pretrained and retrained models: one value per pretraining seed
    assert t.loc[0, "raw U"] == "50.00 ± 0.00" and t.loc[0, "retrained R"] == "30.00 ± 0.00"


def test_mean_sd_and_summarize():
    assert mean_sd([1.0, 3.0]) == "2.00 ± 1.41" and mean_sd([2.0]) == "2.00"
    assert mean_sd([None, float("nan")]) is None
    df = pd.DataFrame({"arm": ["a", "a", "b"], "x": [1, 3, 5]})
    s = summarize(df, ["arm"], ["x"])
    assert s.to_dict("records") == [{"arm": "a", "n": 2, "x": "2.00 ± 1.41"},
                                    {"arm": "b", "n": 1, "x": "5.00"}]


def test_comparison_flags_only_differences_beyond_the_spread(tmp_path):
    assert parse_cell("12.5 ± 1.5") == (12.5, 1.5) and parse_cell(3) == (3.0, None)
    assert parse_cell("truck 40%") is None
    ref = pd.DataFrame({"arm": ["none", "tfidf"], "rounds": ["5.00 ± 1.00", "2.00 ± 0.50"],
                        "R": [80.0, 81.0]})
    new = pd.DataFrame({"arm": ["none", "tfidf"], "rounds": ["5.90 ± 0.20", "3.00 ± 0.40"],
                        "R": [84.0, 87.0]})
    diffs = compare_tables(new, ref, tolerance=5.0)
    # rounds: 0.9 <= 1.0 (none) but 1.0 > 0.5 (tfidf); R: 4 <= 5 but 6 > 5
    assert sorted(zip(diffs["row"], diffs["column"])) == [("tfidf", "R"), ("tfidf", "rounds")]
    extra = pd.concat([new, pd.DataFrame({"arm": ["l1"], "rounds": ["1"], "R": [1.0]})])
    assert "3 rows" in set(compare_tables(extra, ref, 5.0)["rebuilt"])
    # all-numeric tables (no label column), missing and text cells, timings
    ref2 = pd.DataFrame({"clients": [1, 5], "Jaccard": [0.5, None], "relearn": [">5", "3"],
                         "s/round": [1.0, 2.0]})
    new2 = pd.DataFrame({"clients": [1, 5], "Jaccard": [9.0, None], "relearn": ["4", "3"],
                         "s/round": [9.0, 9.0], "extra": [0, 0]})
    diffs = compare_tables(new2, ref2, tolerance=1.0)
    assert sorted(zip(diffs["row"], diffs["column"])) == [
        ("row 1", "Jaccard"), ("row 1", "relearn"), ("–", "extra")]
    assert parse_cell("1e-05") == (1e-05, None) and parse_cell("1.2.3") is None
    (tmp_path / "ref").mkdir(), (tmp_path / "new").mkdir()
    ref.to_csv(tmp_path / "ref/t.csv", index=False)
    new.to_csv(tmp_path / "new/t.csv", index=False)
    pd.DataFrame({"job": ["x"], "seconds": [1.0]}).to_csv(tmp_path / "ref/table_jobs.csv")
    report = compare_folders(tmp_path / "new", tmp_path / "ref", 5.0)
    assert "## t: 2 cell(s) differ" in report and "table_jobs" not in report
    assert "nothing to compare" in compare_folders(tmp_path / "new", tmp_path / "none", 5.0)


def test_jobs_table_sums_the_benchmark_records(tmp_path):
    for rule, name, s in (("pretrain", "a", 60.0), ("kl_distribution", "kl_distribution", 30.5)):
        (tmp_path / rule).mkdir()
        (tmp_path / rule / f"{name}.tsv").write_text(f"s\th:m:s\tmax_rss\n{s}\t0:01:00\t100\n")
    jobs = jobs_table(sorted(tmp_path.glob("*/*.tsv")))
    assert list(jobs["job"]) == ["kl_distribution", "a", "total"]
    assert list(jobs["rule"])[:2] == ["kl_distribution", "pretrain"]
    assert jobs["seconds"].iloc[-1] == pytest.approx(90.5)
    assert jobs["hours"].iloc[-1] == pytest.approx(90.5 / 3600, abs=1e-3)


def test_ratio_of_means_keeps_a_run_met_at_round_zero():
    import pandas as pd
    from fedunlearn_lib.report import ratio_of_means
    assert ratio_of_means(pd.Series([10, 12]), pd.Series([0, 2])) == 11.0  # 11 / 1
    assert ratio_of_means(pd.Series([10, 12]), pd.Series([0, 0])) == float("inf")
    assert ratio_of_means(pd.Series([10, None]), pd.Series([None, 2])) is None
