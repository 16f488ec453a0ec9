import json
import re

import pytest
import torch

from fedunlearn_lib import ExperimentConfig, run_experiment
from fedunlearn_lib.cli import main

# the README's command-line example, with the library's defaults (issue 10, section 5)
E2E = ["--dataset", "digits", "--model", "resnet20", "--forget", "9", "--quiet"]


@pytest.fixture(scope="module")
def e2e(tmp_path_factory):
    out = tmp_path_factory.mktemp("e2e")
    assert main(["run", "--out", str(out), *E2E]) == 0
    return out, json.loads((out / "metrics.json").read_text())


def test_end_to_end_on_digits_forgets_and_recovers(e2e):
    _, m = e2e
    for phase in ("raw", "pruned", "finetuned", "retrained"):
        assert 0.0 <= m[phase]["u_acc"] <= 1.0 and 0.0 <= m[phase]["r_acc"] <= 1.0
    assert m["raw"]["u_acc"] > 0.5, "the raw model must know the class to forget"
    assert m["raw"]["r_acc"] >= 0.90, "the default digits run must start from a learned model"
    assert m["pruned"]["u_acc"] < 0.5 * m["raw"]["u_acc"], "pruning must collapse U-set acc"
    assert m["finetuned"]["u_acc"] == 0.0
    # fine-tuning stops at the first round reaching the retrained model's R-set accuracy,
    # so it ends within 2 points below it at worst (it may overshoot)
    assert m["finetuned"]["r_acc"] >= m["retrained"]["r_acc"] - 0.02
    assert m["target_r_acc"] == m["retrained"]["r_acc"]
    assert m["rounds_finetune"] >= 1 and m["rounds_retrain"] >= 1
    assert m["speedup"] == pytest.approx(m["rounds_retrain"] / m["rounds_finetune"])
    assert m["config"]["forget"] == [9] and m["config"]["unlearning"]["ratio"] == 0.05
    assert m["channels"]["selected"] == round(0.05 * m["channels"]["total"])


def test_outputs_are_complete_and_rerun_resumes(e2e):
    out, m = e2e
    for f in ("metrics.json", "config.json", "pretrain.pt", "retrain.pt", "pruned.pt",
              "finetune.pt"):
        assert (out / f).exists(), f
    assert not list(out.glob(".*"))  # no temporary files left behind
    again = run_experiment(ExperimentConfig.from_dict(json.loads((out / "config.json")
                                                                 .read_text())), out,
                           progress=False)
    assert again["finetuned"] == m["finetuned"] and again["raw"] == m["raw"]


def test_several_classes_and_physical_removal(small_digits, tmp_path, monkeypatch):
    monkeypatch.setattr("fedunlearn_lib.experiment.load_dataset", lambda *a, **k: small_digits)
    cfg = ExperimentConfig.from_dict({
        "dataset": "digits", "model": "resnet20", "forget": "0,5,9", "rounds": 1,
        "federation": {"num_clients": 10, "clients_per_round": 10},
        "unlearning": {"ratio": 0.1, "apply": "remove"}})
    m = run_experiment(cfg, tmp_path, progress=False)
    ch = m["channels"]
    assert ch["selected"] == 3 * round(0.1 * ch["total"])  # once per class, disjoint
    assert ch["removed"] > 0 and ch["removed"] + ch["masked"] == ch["selected"]
    assert m["macs"]["pruned"] < m["macs"]["raw"]
    assert [p["class"] for p in m["per_class"]] == [0, 5, 9]


@pytest.mark.parametrize("args,msg", [
    (["--model", "resnet21"], "unknown model 'resnet21'; choose one of .*resnet20"),
    (["--dataset", "mnist"], "unknown data set 'mnist'; choose one of .*digits"),
    (["--forget", "10"], r"forget class\(es\) \[10\] outside the label range \[0, 9\]"),
    (["--ratio", "1.5"], "ratio R must lie in \\(0, 1\\), got 1.5"),
    (["--q", "2"], "q must lie in \\[0, 1\\], got 2.0"),
    (["--clients-per-round", "20"], "clients_per_round=20 must lie in \\[1, num_clients=10\\]"),
    (["--dataset", "imagefolder", "--data-root", "/nonexistent/cifar"], "/nonexistent/cifar"),
    (["--direction", "sideways"], "sideways.*highest, lowest"),
])
def test_bad_input_is_named_and_nothing_is_written(tmp_path, capsys, args, msg):
    out = tmp_path / "out"
    assert main(["run", "--out", str(out), "--quiet", "--num-clients", "10", *args]) == 2
    err = capsys.readouterr().err
    assert re.search(msg, err), err
    assert not out.exists()


def test_checkpoint_without_identity_is_rejected_by_the_cli(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    torch.save({"model": {"w": torch.zeros(1)}, "round": 1, "elapsed": 0.0, "history": [],
                "mask": {}, "server_opt": None}, out / "pretrain.pt")
    assert main(["run", "--out", str(out), "--quiet", "--rounds", "1"]) == 2
    assert "pretrain.pt was computed under another configuration" in capsys.readouterr().err
    assert not (out / "metrics.json").exists()


TINY = ["--dataset", "digits", "--rounds", "1", "--num-clients", "10", "--clients-per-round",
        "5", "--batch-size", "16", "--test-per-class", "10", "--quiet"]


def test_pretraining_checkpoint_of_another_subset_is_refused_naming_the_key(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", "--out", str(out), *TINY, "--train-per-class", "20"]) == 0
    capsys.readouterr()
    assert main(["run", "--out", str(out), *TINY, "--train-per-class", "25"]) == 2
    err = capsys.readouterr().err
    assert "pretrain.pt was computed under another configuration" in err
    assert "train_per_class: 25 now, 20 in the file" in err


def test_rerun_with_another_ratio_never_returns_the_old_mask(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", "--out", str(out), *TINY, "--train-per-class", "20",
                 "--ratio", "0.05"]) == 0
    first = json.loads((out / "metrics.json").read_text())
    capsys.readouterr()
    assert main(["run", "--out", str(out), *TINY, "--train-per-class", "20",
                 "--ratio", "0.2"]) == 2
    err = capsys.readouterr().err
    assert "pruned.pt was computed under another configuration" in err
    assert "unlearning.ratio: 0.2 now, 0.05 in the file" in err
    assert json.loads((out / "metrics.json").read_text()) == first  # nothing overwritten


def test_yaml_config_and_unknown_keys(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("model: vgg11\nforget: 0,9\nfederation: {q: 0.5}\n")
    cfg = ExperimentConfig.from_yaml(p)
    assert cfg.model == "vgg11" and cfg.forget == [0, 9] and cfg.federation.q == 0.5
    with pytest.raises(ValueError, match="unknown config key.*lr"):
        ExperimentConfig.from_dict({"lr": 0.1})
