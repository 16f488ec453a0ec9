"""The workflow's data step on a fresh copy with the shipped profile (quick: CIFAR-10 under
data/): the download happens once, before the first job, which it then reaches; without
network the run stops before any job with one message saying what to put where. The
download is torchvision's, replaced here by a stand-in package on PYTHONPATH (nothing real
is downloaded)."""
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]

# torchvision's CIFAR10(root, train=True, download=True), as the library calls it: writes
# a tiny tree of the official pickles (20 images per file) instead of downloading
FAKE_DOWNLOAD = '''
import pickle
from pathlib import Path

import numpy as np


class CIFAR10:
    def __init__(self, root, train=True, download=False, **kwargs):
        base = Path(root) / "cifar-10-batches-py"
        base.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            entry = {"data": rng.integers(0, 256, (20, 3072), dtype=np.uint8),
                     "labels": [i % 10 for i in range(20)]}
            (base / name).write_bytes(pickle.dumps(entry))
        (base / "batches.meta").write_bytes(
            pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))
        with open(Path(root) / "fake-downloads.txt", "a") as fh:
            fh.write("cifar10\\n")


CIFAR100 = CIFAR10
'''
# ... and as it fails without network
FAKE_OFFLINE = '''
import urllib.error


class CIFAR10:
    def __init__(self, root, train=True, download=False, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")


CIFAR100 = CIFAR10
'''


def _fresh_copy(dst: Path) -> Path:
    dst.mkdir()
    for item in ("Snakefile", "rules", "schemas", "config", "notebooks", "profiles"):
        src = ROOT / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dst / item)
    assert not (dst / "data").exists()
    return dst


def _env(tmp_path: Path, datasets_module: str, **extra: str) -> dict:
    """The environment with a stand-in torchvision (its datasets module) first on the path."""
    pkg = tmp_path / "fake" / "torchvision"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("from . import datasets\n")
    (pkg / "datasets.py").write_text(textwrap.dedent(datasets_module))
    path = os.pathsep.join(filter(None, [str(pkg.parent), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, **extra}


def test_first_run_downloads_cifar10_then_reaches_the_first_pretraining(tmp_path):
    """`snakemake` with the cluster-local profile, whose submit command records each job
    and (SUBMIT_REFUSE=1) refuses it: the data step fetches CIFAR-10 into data/ (created)
    before anything is submitted, and the first job submitted is a pretraining."""
    pytest.importorskip("snakemake_executor_plugin_cluster_generic")
    wd = _fresh_copy(tmp_path / "repo")
    env = _env(tmp_path, FAKE_DOWNLOAD, SUBMIT_REFUSE="1")
    run = subprocess.run(SNAKEMAKE + ["--profile", "profiles/cluster-local", "--config",
                                      "profile=quick"],
                         cwd=wd, env=env, capture_output=True, text=True)
    out = run.stdout + run.stderr
    assert (wd / "data" / "fake-downloads.txt").read_text() == "cifar10\n", out[-3000:]
    assert (wd / "data" / "cifar-10-batches-py" / "batches.meta").is_file()
    assert "downloading it there, once, before the first job" in out
    assert out.index("downloading it there") < out.index("rule pretrain:")
    submitted = (wd / ".snakemake/cluster-local/submitted.tsv").read_text().splitlines()
    assert len(submitted) == 1 and submitted[0].startswith("rule=pretrain\t"), submitted
    assert run.returncode != 0 and "Error submitting jobscript" in out  # refused, as asked

    # the data is there now: a dry run plans the pretrainings first, and nothing about data
    dry = subprocess.run(SNAKEMAKE + ["-n", "--cores", "1", "--config", "profile=quick"],
                         cwd=wd, env=env, capture_output=True, text=True, check=True)
    first = re.findall(r"^rule (\w+):\n(?:    .*\n)*?    reason: Missing output files",
                       dry.stdout, flags=re.M)
    assert "pretrain" in first
    ready = [block for block in re.split(r"^\[.*\]\n", dry.stdout, flags=re.M)
             if block.startswith("rule ") and "updated by another job" not in block]
    assert ready and all(block.startswith("rule pretrain:") for block in ready)


def test_offline_first_run_stops_before_any_job_with_one_message(tmp_path):
    wd = _fresh_copy(tmp_path / "repo")
    env = _env(tmp_path, FAKE_OFFLINE)
    run = subprocess.run(SNAKEMAKE + ["--cores", "2", "--config", "profile=quick"], cwd=wd,
                         env=env, capture_output=True, text=True)
    out = run.stdout + run.stderr
    assert run.returncode != 0
    assert out.count("downloading it there failed") == 1, out[-3000:]
    message = out[out.index("Profile 'quick' reads CIFAR-10"):]
    for needle in ("from data/ (its data_root)", "URLError",
                   "put cifar-10-python.tar.gz (the official archive, https://",
                   "or its extracted cifar-10-batches-py/ folder in data/",
                   "--config data_root=<folder>",
                   "--config data_format=imagefolder data_root=<folder>",
                   "No job has run"):
        assert needle in message, (needle, message)
    assert "rule pretrain:" not in out and "localrule" not in out  # no job started
    assert not (wd / "results").exists()
