"""The Snakemake workflow: the paper profile plans, the smoke profile runs end to end."""
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def _copy_workflow(dst: Path) -> Path:
    for item in ("Snakefile", "config", "notebooks"):
        src = ROOT / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dst / item)
    return dst


def test_paper_profile_plans_every_experiment(tmp_path):
    wd = _copy_workflow(tmp_path)
    out = subprocess.run(SNAKEMAKE + ["-n", "--cores", "all", "--config", "profile=paper"],
                         cwd=wd, capture_output=True, text=True, check=True).stdout
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", out, flags=re.M))
    # pretrain: 2 data sets x 8 models, plus the bias sweep's own settings (3 q per data set)
    assert counts["pretrain"] == "22", out
    # unlearn: 16 (Table 2) + 4 (classes 0 and 0+9 for ResNet-20/VGG-11, Tables 4-5)
    # + 6 (bias sweep) + 14 (4 class sets x 4 models, 0+9 shared with Tables 4-5)
    assert counts["unlearn"] == "40", out
    for rule in ("feature_maps", "report", "mia", "kl_distribution", "bias_fisher",
                 "multiclass", "ablations"):
        assert counts[rule] == "1", rule


@pytest.mark.slow
def test_smoke_profile_builds_figures_and_then_has_nothing_to_do(tmp_path):
    wd = _copy_workflow(tmp_path)
    run = subprocess.run(SNAKEMAKE + ["--cores", "2", "--config", "profile=smoke"], cwd=wd,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    fig = wd / "figures" / "smoke"
    figures = ("fig2_feature_maps", "fig2_activations", "fig3_accuracy_curves",
               "fig4_multiclass_curves", "fig5_class_accuracy", "fig_ablations")
    tables = ("table1", "table2", "table3", "table4", "table5", "table_ablations",
              "table_ablation_ratio", "table_ablation_apply", "table_ablation_stability")
    for name in [f"{f}.{e}" for f in figures for e in ("png", "pdf")] + \
            [f"{t}.{e}" for t in tables for e in ("csv", "md")]:
        assert (fig / name).stat().st_size > 0, name
    notebooks = wd / "results/smoke/notebooks"
    assert (notebooks / "03_unlearn_main_digits_resnet20_q0.1_seed0_forget9.ipynb").exists()
    for nb in ("04_mia", "05_kl_distribution", "06_bias_fisher", "07_multiclass", "08_ablations"):
        assert (notebooks / f"{nb}.ipynb").exists(), nb
    again = subprocess.run(SNAKEMAKE + ["-n", "--cores", "2", "--config", "profile=smoke"],
                           cwd=wd, capture_output=True, text=True, check=True)
    assert "Nothing to be done" in again.stdout + again.stderr
