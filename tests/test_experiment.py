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
    for phase in ("raw", "pruned", "pruned_bn", "finetuned_at_rule", "finetuned", "retrained"):
        assert 0.0 <= m[phase]["u_acc"] <= 1.0 and 0.0 <= m[phase]["r_acc"] <= 1.0
    assert m["raw"]["u_acc"] > 0.5, "the raw model must know the class to forget"
    assert m["raw"]["r_acc"] >= 0.90, "the default digits run must start from a learned model"
    # Right after pruning the model may have collapsed (R-set near chance): where its
    # predictions land, and so its U-set accuracy, varies between CPUs. The method
    # guarantees which channels go; where the predictions go is reported, not asserted.
    assert m["channels"]["selected"] == round(0.05 * m["channels"]["total"])
    shares = m["pruned_predictions"]["u_test"]
    assert len(shares) == 10 and sum(shares) == pytest.approx(1.0, abs=1e-3)
    # the target is fixed from the raw model before retraining and fine-tuning run; without
    # a validation split (the library's default) both decide on the test split, and say so
    assert m["decisions_share_test_split"] and m["decided_on"] == "r_acc"
    assert m["target_r_acc"] == pytest.approx(m["raw"]["r_acc"] - 0.01)
    # the library's default cosine schedule anneals retraining over `rounds`: where it ends
    # short of the target (95.8% against 96.3% on the AVX2 EPYC) there is no speedup, and
    # metrics.json says so rather than counting the cap
    if m["rounds_retrain"] is None:
        assert m["retrained"]["r_acc"] < m["target_r_acc"] and m["speedup"] is None
        assert m["rounds_retrain_run"] == m["rounds_retrain_cap"]
    else:
        assert 1 <= m["rounds_retrain"] <= m["rounds_retrain_cap"]
        assert m["retrained"]["r_acc"] >= m["target_r_acc"]
        assert m["speedup_strict"] == pytest.approx(m["rounds_retrain_strict"]
                                                    / m["rounds_finetune_strict"])
    assert "cosine" in m["speedup_definition"]
    # fine-tuning meets the strict rule: R-set at the target with the U-set forgotten
    assert m["rounds_finetune"] <= m["rounds_finetune_strict"] <= m["rounds_finetune_cap"]
    assert m["finetuned"]["u_acc"] <= m["config"]["strict_u"]
    assert m["finetuned"]["r_acc"] >= m["target_r_acc"]
    assert m["finetuned_at_rule"]["r_acc"] >= m["target_r_acc"]
    assert "target_r_acc" in m["speedup_definition"]
    assert m["config"]["forget"] == [9] and m["config"]["unlearning"]["ratio"] == 0.05


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


def test_speedup_is_not_pinned_to_the_retraining_cap(small_digits, tmp_path):
    """The paper's protocol (constant rate, a target fixed before the run): retraining
    reaches the target before 80% of its cap, and doubling the cap changes its rounds, and
    so the speedup, by less than their spread over seeds (here not at all: the cap only
    stops a retraining that has not got there). With a cosine schedule over the cap the
    rounds would follow the cap."""
    from fedunlearn_lib.experiment import retrain
    rounds = {}
    for seed in (0, 1):
        for cap in (15, 30):
            cfg = ExperimentConfig.from_dict({
                "dataset": "digits", "model": "resnet20", "forget": [9], "rounds": 15,
                "retrain_rounds": cap,
                "federation": {"num_clients": 10, "clients_per_round": 5, "batch_size": 16,
                               "lr": 0.1, "lr_schedule": "constant", "seed": seed}})
            fed, result = retrain(cfg, small_digits, tmp_path / f"r{seed}_{cap}.pt", 0.2,
                                  progress=False)
            assert result.rounds_to_target is not None and 1 <= result.rounds_to_target
            assert result.rounds_to_target < 0.8 * cap and fed.round < cap
            rounds[seed, cap] = result.rounds_to_target
    spread = abs(rounds[0, 15] - rounds[1, 15])
    for seed in (0, 1):
        assert abs(rounds[seed, 30] - rounds[seed, 15]) <= spread
        assert rounds[seed, 30] == rounds[seed, 15]


def test_a_target_met_before_any_round_counts_zero_rounds():
    from fedunlearn_lib.experiment import speedup
    from fedunlearn_lib.federated import rounds_for
    hist = [{"round": 0, "r_acc": 0.9, "u_acc": 0.0}, {"round": 1, "r_acc": 0.95, "u_acc": 0.0}]
    assert rounds_for(hist, 0.8) == 0
    assert speedup(12, 0) == float("inf") and speedup(12, 4) == 3.0
    assert speedup(None, 3) is None and speedup(12, None) is None
    assert speedup(0, 0) is None and speedup(0, 3) is None  # the untrained model met it


RATE_RUN = {"dataset": "digits", "model": "resnet20", "forget": [9], "rounds": 2,
            "finetune_rounds": 2, "finetune_lr_candidates": [0.01, 0.1, 0.03],
            "train_per_class": 30, "test_per_class": 10, "val_fraction": 0.5,
            "federation": {"num_clients": 10, "clients_per_round": 5, "batch_size": 16,
                           "lr_schedule": "constant"}}


def test_finetuning_rate_is_chosen_on_validation_by_the_stated_rule(tmp_path):
    """The largest candidate within the tolerance of the best validation R-set accuracy of
    the unpruned raw model's fine-tuning; the run fine-tunes at it and says so; the choice
    is kept beside the run and reused, and a choice made for other candidates is refused."""
    cfg = ExperimentConfig.from_dict(RATE_RUN)
    m = run_experiment(cfg, tmp_path, progress=False)
    sel = m["finetune_lr_selection"]
    assert sel["decided_on"] == "val_r_acc"
    tried = {t["lr"]: t["val_r_acc"] for t in sel["candidates"]}
    assert sorted(tried) == [0.01, 0.03, 0.1]
    best = max(tried.values())
    assert sel["finetune_lr"] == max(lr for lr, acc in tried.items()
                                     if acc >= best - cfg.finetune_lr_tolerance)
    assert m["finetune_lr"] == sel["finetune_lr"] == m["config"]["finetune_lr"]
    assert json.loads((tmp_path / "finetune_rate.json").read_text())["finetune_lr"] \
        == sel["finetune_lr"]
    again = run_experiment(cfg, tmp_path, progress=False)  # reuses the choice
    assert again["finetune_lr_selection"] == sel
    other = ExperimentConfig.from_dict({**RATE_RUN, "finetune_lr_candidates": [0.2]})
    with pytest.raises(ValueError, match="finetune_rate.json was chosen for"):
        run_experiment(other, tmp_path, progress=False)


def test_a_given_finetuning_rate_skips_the_choice_and_bad_rates_are_named(tmp_path):
    cfg = ExperimentConfig.from_dict({**RATE_RUN, "finetune_lr": 0.02})
    m = run_experiment(cfg, tmp_path, progress=False)
    assert m["finetune_lr_selection"] is None and m["finetune_lr"] == 0.02
    assert not (tmp_path / "finetune_rate.json").exists()
    assert ExperimentConfig.from_dict({"finetune_lr_candidates": "0.1,0.03"}) \
        .finetune_lr_candidates == [0.1, 0.03]
    with pytest.raises(ValueError, match=r"finetune_lr_candidates must be > 0, got \[-0.1\]"):
        ExperimentConfig.from_dict({"finetune_lr_candidates": [0.1, -0.1]}).validate()
    with pytest.raises(ValueError, match="rates like 0.1,0.03, got 'fast'"):
        ExperimentConfig.from_dict({"finetune_lr_candidates": "fast"})
