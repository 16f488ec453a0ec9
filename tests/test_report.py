import json

from fedunlearn_lib.report import accuracy_curves, load_metrics, save_figure, table2, write_table


def _metrics(speedup=7.25):
    hist = [{"round": r, "loss": None, "u_acc": 0.0, "r_acc": 0.1 * r} for r in range(4)]
    acc = {"u_acc": 0.5, "r_acc": 0.25}
    return {"raw": acc, "pruned": acc, "finetuned": acc, "retrained": {"u_acc": 0.0,
                                                                       "r_acc": 0.3},
            "rounds_finetune": 2, "rounds_retrain": 3, "speedup": speedup,
            "history": {"finetune": hist, "retrain": hist, "pretrain": hist},
            "config": {"dataset": "digits", "model": "resnet20", "forget": [0, 9],
                       "federation": {"q": 0.1, "seed": 0},
                       "unlearning": {"direction": "highest"}}}


def test_table2_has_one_row_per_run_in_percent(tmp_path):
    p = tmp_path / "metrics.json"
    p.write_text(json.dumps(_metrics()))
    runs = load_metrics([p])
    t = table2(runs + [{**_metrics(None), "path": "x"}])
    assert list(t["forget"]) == ["0,9", "0,9"]
    assert t.loc[0, "raw U"] == 50.0 and t.loc[0, "retrained R"] == 30.0
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
