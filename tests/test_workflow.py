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
    # 2 data sets x 8 models, one forget set each: 16 pretrain and 16 unlearn jobs
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", out, flags=re.M))
    assert counts["pretrain"] == "16" and counts["unlearn"] == "16", out


@pytest.mark.slow
def test_smoke_profile_builds_figures_and_then_has_nothing_to_do(tmp_path):
    wd = _copy_workflow(tmp_path)
    run = subprocess.run(SNAKEMAKE + ["--cores", "2", "--config", "profile=smoke"], cwd=wd,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    fig = wd / "figures" / "smoke"
    for name in ("fig2_feature_maps.png", "fig2_activations.pdf", "fig3_accuracy_curves.png",
                 "table2.csv", "table2.md"):
        assert (fig / name).stat().st_size > 0, name
    assert (wd / "results/smoke/notebooks/03_unlearn_digits_resnet20_q0.1_seed0_forget9.ipynb"
            ).exists()
    again = subprocess.run(SNAKEMAKE + ["-n", "--cores", "2", "--config", "profile=smoke"],
                           cwd=wd, capture_output=True, text=True, check=True)
    assert "Nothing to be done" in again.stdout + again.stderr
