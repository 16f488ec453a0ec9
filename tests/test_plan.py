"""The ``plan`` command: the smoke profile's image passes by hand, its jobs as a dry run's."""
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fedunlearn_lib import cli
from fedunlearn_lib.experiment import ExperimentConfig
from fedunlearn_lib.plan import data_sizes, format_plan, notebook_defaults, plan_rows, \
    workflow_jobs, Row

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "config" / "smoke.yaml"


@pytest.fixture(scope="module")
def smoke_jobs():
    return workflow_jobs(SMOKE, snakefile=ROOT / "Snakefile")


def test_smoke_settings_are_those_of_the_hand_count():
    """The hand count below reads these numbers; when the profile (or a study notebook's
    default) changes, redo the count."""
    cfg = yaml.safe_load(SMOKE.read_text())
    exp, fed = cfg["experiment"], cfg["experiment"]["federation"]
    assert (exp["rounds"], exp["train_per_class"], exp["test_per_class"]) == (3, 40, 15)
    assert not exp.get("val_fraction") and exp.get("finetune_rounds") is None
    assert exp["retrain_rounds"] == 6 and exp.get("target_r_acc") is None
    assert exp["finetune_lr_candidates"] == [0.1, 0.05] and exp.get("finetune_lr") is None
    assert cfg["decide"]["sensitivity"] == {"lr": 0.01, "arms": ["none", "tfidf-highest"],
                                            "seeds": [0]}
    assert (fed["algorithm"], fed["num_clients"], fed["clients_per_round"],
            fed["local_epochs"]) == ("fedavg", 10, 5, 1)
    assert exp["unlearning"]["score_clients"] == 10 and not exp["unlearning"].get(
        "score_samples")
    assert cfg["relearn_rounds"] == 1 and cfg["bias"]["fisher_samples"] == 20
    assert cfg["bias"]["fisher"] == {"method": "eq1"}
    assert cfg["ablations"]["rounds"] == 1 and len(cfg["ablations"]["ratios"]) == 2
    assert cfg["robustness"]["fractions"] == [0.0, 0.4] and cfg["robustness"][
        "finetune_at"] == [] and cfg["robustness"]["samples"] == 1
    assert cfg["robustness"]["participants"] == 10 and len(cfg["robustness"]["attacks"]) == 3
    fisher = notebook_defaults(ROOT / "notebooks" / "06_bias_fisher.ipynb")
    assert len(fisher["sigmas"]) == 4 and len(fisher["damping"]) == 3


# The smoke profile by hand. Digits, 40 training and 15 test images per class, no
# validation split: N = 400 training images (N_R = 360 without class 9, 320 without 0 and
# 9; N_U = 40 / 80), T = 150 test images (T_U = 15 / 30), D = T. FedAvg, 5 of 10 clients
# per round, 1 local epoch: a round trains on half the images. A forward counts 1/3.
# Evaluation of an R-round run: (R + 1) x 150 forwards. 3 rounds (pretraining,
# fine-tuning), retraining's cap 6; relearning 1 round.
#
# pretrain, 3 jobs (resnet20 q0.1, resnet20 q1.0, vgg11 q0.1 for Figure 2), each:
#   3 x 200 = 600 training + 4 x 150 / 3 = 200 evaluation = 800           -> 2,400
# retrain, 3 jobs (the target comes from the pretraining's history): 6 rounds x N_R / 2;
#   evaluation 7 x 150 / 3 = 350
#   forget 9 (q0.1, q1.0): 1,080 + 350 = 1,430, twice;  forget 0-9: 960 + 350 = 1,310
#                                                                              -> 4,170
# unlearn, 4 jobs (raw, target, retrained and fine-tuned scores come from the histories).
#   Forwards: per forgotten class the test split (150) and, with TF-IDF, local procs of all
#   10 clients (400); after pruning: scores (150), the U-set predictions (T_U), BN
#   re-estimation (N_R), scores (150); fine-tuning's evaluation 4 x 150 = 600. Training
#   3 x N_R / 2.
#   tfidf-highest, forget 9 (q0.1 and q1.0): 550 + 150 + 15 + 360 + 150 + 600 = 1,825
#     forwards -> 1,825 / 3 + 540, twice
#   none, forget 9: 150 + 150 + 15 + 360 + 150 + 600 = 1,425 -> 475 + 540 = 1,015
#   tfidf-highest, forget 0-9: 2 x 550 + 150 + 30 + 320 + 150 + 600 = 2,350 -> 2,350 / 3
#     + 480
#   sum: (2 x 1,825 + 2,350) / 3 + 2 x 540 + 1,015 + 480 = 2,000 + 2,575 = 4,575 -> 4,575
# feature_maps: (150 test + 1 + 2 x 3 figure images) / 3 = 52.3                  -> 52
# mia, runs forget 9 and 0-9, 3 models each on members + non-members + targets:
#   3 x (360 + 135 + 40) + 3 x (320 + 120 + 80) = 3,165 forwards / 3            -> 1,055
# kl_distribution, the same 2 runs x 2 models x 150 = 600 / 3                     -> 200
# Evidence of one model: relearning 1 round x 200 = 200 training + 2 x 150 evaluation +
#   probe (400 training + T_U test images): forget 9: 200 + 715 / 3 = 1,315 / 3.
# bias_fisher, runs q0.1 and q1.0 (forget 9), each: Fisher statistics 5 clients x
#   min(20, 36) = 100 images x 7/3 = 700 / 3; half the test split as validation (7 per
#   class = 70) for the raw model, 3 dampings and 4 sigmas: 8 x 70 = 560 forwards; 150
#   after the step; fine-tuning 540 + 600 / 3; 150 after it; evidence of 4 models:
#   700 / 3 + (560 + 150 + 600 + 150) / 3 + 540 + 4 x 1,315 / 3 = (700 + 1,460 + 1,620 +
#   5,260) / 3 = 9,040 / 3 per run; 2 runs = 18,080 / 3 = 6,026.7                 -> 6,027
# multiclass, run 0-9: evidence of 2 models, 2 x (200 + (300 + 400 + 30) / 3) = 2 x 1,330
#   / 3 = 886.7                                                                    -> 887
# ablations, run forget 9, budget 1:
#   8 arms: fine-tuning 1 x 180 = 180 + 2 x 150 / 3 each (1,440 training, 2,400
#     forwards); the 4 TF-IDF arms' requests 400 + 150 each (2,200 forwards)
#   evidence of raw, retrained and 8 arms: 10 x 1,315 / 3
#   closeness of raw and 8 arms: BN recall (400 + 15) + (40 + 15), KL 2 x (15 + 40),
#     histogram 15: 595 forwards each, 9 x 595 = 5,355; BN recall of retrained 470
#   ratios 0.05 and 0.2: request 550 + fine-tuning 180 + 300 / 3 each (360 training, 1,700
#     forwards)
#   mask vs remove: 2 x (150 forwards + 2 rounds x 180): 300 forwards, 720 training
#   selection stability 2 x 400 forwards; IDF readings 5 clients x 40 = 200 forwards
#   training 1,440 + 360 + 720 = 2,520; forwards 2,200 + 2,400 + 5,355 + 470 + 1,700 + 300
#   + 800 + 200 = 13,425; 2,520 + 13,425 / 3 + 13,150 / 3 = 2,520 + 8,858.3 = 11,378.3
#                                                                                 -> 11,378
# robustness: honest procs 10 clients x 40 = 400; 1 sample x 3 attacks x 2 fractions x 4
#   defences x 150 = 3,600; no fine-tuning: 4,000 / 3 = 1,333.3                   -> 1,333
# finetune_rate, 3 jobs (two candidates, 0.1 and 0.05; see
#   test_rate_choice_costs_a_fine_tuning_per_candidate): 2 x (2 x 740 + 680)      -> 4,320
# unlearn, 2 more jobs: decide.sensitivity's none and tfidf-highest at forget 9 q0.1 (at
#   lr 0.01, no choice), costed as their counterparts above: 1,015 + 1,825 / 3 + 540;
#   with the 4 above: 6,130 + 1,825 / 3 = 6,738.3                                  -> 6,738
# decide, runs none and tfidf-highest (seed 0): per run evidence + closeness
#   (1,315 + 595) / 3; the seed's retrained model: evidence + BN recall (1,315 + 470) / 3:
#   (2 x 1,910 + 1,785) / 3 = 5,605 / 3 = 1,868.3                                   -> 1,868
# report, all: 0
HAND = {"pretrain": 2400, "retrain": 4170, "unlearn": 6738, "finetune_rate": 4320, "feature_maps": 52, "mia": 1055,
        "kl_distribution": 200, "bias_fisher": 6027, "multiclass": 887, "ablations": 11378,
        "robustness": 1333, "decide": 1868, "report": 0, "all": 0}
HAND_TOTAL = 40428  # 2,400 + 4,170 + 6,738 + 4,320 + 52 + 1,055 + 200 + 6,027 + 887
#                     + 11,378 + 1,333 + 1,868


def test_smoke_total_equals_the_hand_count(smoke_jobs):
    assert sum(HAND.values()) == HAND_TOTAL
    rows = plan_rows(smoke_jobs)
    assert {r.rule: r.passes for r in rows} == HAND
    assert sum(r.passes for r in rows) == HAND_TOTAL


def _dry_run_counts(wd: Path) -> dict[str, int]:
    for item in ("Snakefile", "rules", "schemas", "config", "notebooks"):
        src = ROOT / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, wd / item)
    out = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "1",
                          "--config", "profile=smoke"], cwd=wd, capture_output=True,
                         text=True, check=True).stdout
    stats = out[out.index("Job stats:"):]
    return {rule: int(n) for rule, n in re.findall(r"^(\w+)\s+(\d+)$", stats, flags=re.M)
            if rule != "total"}


def test_job_counts_are_those_of_a_dry_run(smoke_jobs, tmp_path):
    """A dry run in a fresh copy (no results) plans the full rebuild the plan counts."""
    rows = plan_rows(smoke_jobs)
    assert {r.rule: r.jobs for r in rows} == _dry_run_counts(tmp_path)


def test_rate_choice_costs_a_fine_tuning_per_candidate():
    """finetune_rate (when a profile gives finetune_lr_candidates): per candidate, the
    unpruned raw model fine-tuned at the cap (3 rounds) on N_R with its evaluation, no stop
    round (no target). Smoke with two candidates: forget 9, 3 x 360 / 2 = 540 training +
    4 x 150 / 3 = 200 evaluation = 740 per candidate, at q 0.1 and q 1.0; forget 0-9,
    3 x 320 / 2 = 480 + 200 = 680: 2 x (2 x 740 + 680) = 4,320. Every other rule costs the
    hand count's passes (the unlearn jobs read the chosen rate and fine-tune as before);
    the smoke profile's own candidates (0.1, 0.05) cost the same."""
    over = {"experiment": {"finetune_lr_candidates": [0.1, 0.01]}}
    rows = {r.rule: r for r in plan_rows(workflow_jobs(SMOKE, over,
                                                       snakefile=ROOT / "Snakefile"))}
    assert (rows["finetune_rate"].jobs, rows["finetune_rate"].passes) == (3, 4320)
    assert {rule: r.passes for rule, r in rows.items()} == HAND


def test_jobs_carry_their_settings(smoke_jobs):
    unlearn = [j for j in smoke_jobs if j.rule == "unlearn"]
    assert {tuple(j.params["experiment"]["forget"]) for j in unlearn} == {(9,), (0, 9)}
    mia = next(j for j in smoke_jobs if j.rule == "mia")
    assert sorted(r["forget"] for r in mia.runs) == [[0, 9], [9]]
    bias = next(j for j in smoke_jobs if j.rule == "bias_fisher")
    assert bias.notebook["fisher_samples"] == 20  # the rule's params over the defaults


def test_cli_prints_the_total_last(capsys):
    rc = cli.main(["plan", "--configfile", str(SMOKE), "--snakefile", str(ROOT / "Snakefile")])
    out = capsys.readouterr().out
    assert rc == 0
    lines = out.rstrip("\n").splitlines()
    assert lines[-1] == f"total: {HAND_TOTAL:,} image passes"
    assert re.fullmatch(r"total: \d{1,3}(,\d{3})* image passes", lines[-1])
    assert any(re.match(r"ablations\s+1\s+11,378\b", line) for line in lines)


def test_missing_configfile_is_named(capsys, tmp_path):
    missing = tmp_path / "config" / "nosuch.yaml"
    rc = cli.main(["plan", "--configfile", str(missing), "--snakefile",
                   str(ROOT / "Snakefile")])
    err = capsys.readouterr().err
    assert rc == 2
    assert f"config file {missing} not found" in err


def test_sizes_follow_the_subset_and_the_validation_split():
    cfg = ExperimentConfig.from_dict({"dataset": "cifar10", "forget": [0, 9],
                                      "test_per_class": 15, "val_fraction": 0.5})
    s = data_sizes(cfg)
    # 5,000 training images per class; 15 test images per class, int(0.5 x 15) = 7 of
    # them to validation, 8 stay
    assert (s.train, s.train_u, s.retained, s.val, s.test, s.test_u, s.decision) == (
        50000, 10000, 40000, 70, 80, 16, 70)
    digits = data_sizes(ExperimentConfig.from_dict({"dataset": "digits"}))
    assert (digits.train, digits.test) == (1347, 450)  # the loader's 75/25 split of 1,797


def test_format_aligns_rows_and_ends_with_the_total():
    text = format_plan([Row("unlearn", 38, 5052167), Row("report", 1, 0)])
    lines = text.splitlines()
    assert lines[-1] == "total: 5,052,167 image passes"
    assert len({len(line) for line in lines[:-1]}) == 1  # one width: aligned columns


def test_quick_profile_plans_at_most_3_5_million_image_passes():
    """The quick profile's total at its caps, every table and figure (headline and
    secondary), stays within 3,500,000 image passes."""
    rows = plan_rows(workflow_jobs(ROOT / "config" / "quick.yaml", snakefile=ROOT / "Snakefile"))
    assert sum(r.passes for r in rows) <= 3_500_000
