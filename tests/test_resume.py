"""Interrupted runs (issue 12, section 2).

The CLI is killed with SIGKILL at several points of ``run_experiment`` (pretrain -> retrain ->
prune -> fine-tune -> metrics.json), rerun with the same command, and must end with the same
``metrics.json`` as an uninterrupted run, with no half-written file left behind. A truncated
or corrupted checkpoint must stop the CLI with exit code 2 and an error naming the file.

CPU runs are deterministic (every round's randomness comes from generators seeded by seed,
round and client; checkpoints store the exact weights and history), so all of
``metrics.json`` must be equal except:
- ``seconds`` (wall-clock per phase; resumed phases add up time across processes) and
  ``per_class[*].local_proc_s`` / ``server_proc_s`` (wall-clock of the score procs): every
  key named ``seconds`` or ending in ``_s``;
- ``pretrained_checkpoint`` and ``retrained_checkpoint``, the paths of ``OUT/pretrain.pt``
  and ``OUT/retrain.pt``, which name the output folder (each run here has its own); only
  their file names are compared.
Two uninterrupted runs differ in exactly these fields.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fedunlearn_lib import cli
from fedunlearn_lib.io import load_blob

REPO = Path(__file__).resolve().parents[1]
ROUNDS, FT_ROUNDS = 2, 2
# tiny settings; --target-r-acc 1.0 keeps fine-tuning running for its whole budget, so a
# kill can land inside it (with the default target it stops after one round here)
ARGS = ["--dataset", "digits", "--model", "resnet20", "--forget", "9",
        "--rounds", str(ROUNDS), "--finetune-rounds", str(FT_ROUNDS), "--target-r-acc", "1.0",
        "--num-clients", "10", "--clients-per-round", "5", "--batch-size", "16",
        "--train-per-class", "20", "--test-per-class", "5", "--augment", "false",
        "--checkpoint-every", "1", "--quiet", "--threads", "1"]
CHECKPOINTS = ("pretrain.pt", "retrain.pt", "pruned.pt", "finetune.pt")


def command(out: Path) -> list[str]:
    return [sys.executable, "-m", "fedunlearn_lib", "run", *ARGS, "--out", str(out)]


def run_cli(out: Path) -> subprocess.CompletedProcess:
    return subprocess.run(command(out), cwd=REPO, capture_output=True, text=True, timeout=600)


def comparable(metrics: dict) -> dict:
    """``metrics`` without the fields that cannot be equal between runs (module docstring)."""
    def strip(x):
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items()
                    if k != "seconds" and not k.endswith("_s")}
        if isinstance(x, list):
            return [strip(v) for v in x]
        return x
    out = strip(metrics)
    for key in ("pretrained_checkpoint", "retrained_checkpoint"):
        out[key] = Path(out[key]).name
    return out


def temp_files(out: Path) -> set[str]:
    """Leftovers of ``io.atomic_write`` (``.<name>.<random>`` beside the target)."""
    return {p.name for p in out.iterdir() if p.name.startswith(".")}


def state_of(out: Path) -> str:
    """Where a run stands: each checkpoint's round (every one must load) and metrics.json."""
    parts = []
    for name in CHECKPOINTS:
        path = out / name
        if path.exists():
            blob = load_blob(path)  # raises, naming the file, if it is half-written
            parts.append(f"{name}@{blob['round']}" if "round" in blob else name)
    if (out / "metrics.json").exists():
        parts.append("metrics.json")
    return ", ".join(parts) or "nothing"


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """One uninterrupted run."""
    out = tmp_path_factory.mktemp("resume") / "reference"
    proc = run_cli(out)
    assert proc.returncode == 0, proc.stderr
    assert not temp_files(out)
    return out


@pytest.fixture
def keep_threads():
    """``cli.main`` in this process sets torch's thread count (``--threads 1``); restore it."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


# kill point -> (checkpoints of the reference run copied in first, so that the run starts
# with the earlier phases finished and time goes to the phase of interest; the condition on
# the output folder at which the process is killed)
KILL_POINTS = {
    # pretrain.pt first appears after round 1 of ROUNDS
    "during pretraining": ((), lambda out: (out / "pretrain.pt").exists()),
    # retrain.pt first appears after retraining's round 1
    "during retraining": (("pretrain.pt",), lambda out: (out / "retrain.pt").exists()),
    # pruned.pt is written just before fine-tuning starts; finetune.pt after its round 1
    "between pruning and fine-tuning": (("pretrain.pt", "retrain.pt"),
                                        lambda out: (out / "pruned.pt").exists()),
    "during fine-tuning": (("pretrain.pt", "retrain.pt", "pruned.pt"),
                           lambda out: (out / "finetune.pt").exists()),
}


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_killed_run_resumes_to_the_uninterrupted_result(reference, tmp_path, point, capsys,
                                                        keep_threads):
    out = tmp_path / "run"
    done, when = KILL_POINTS[point]
    out.mkdir()
    for name in done:
        shutil.copy2(reference / name, out / name)
    proc = subprocess.Popen(command(out), cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while proc.poll() is None and not (out.is_dir() and when(out)):
            assert time.monotonic() < deadline, f"{point}: the run neither got there nor ended"
            time.sleep(0.005)
        killed = proc.poll() is None
        if killed:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # The kill may land a little after the condition; the final result must not depend on it.
    landed = (f"killed {point}; on disk: {state_of(out)}" if killed
              else f"the run ended (rc {proc.returncode}) before the kill {point}")
    print(landed)  # shown with -s or on failure
    assert killed or proc.returncode == 0, f"{landed}\n{proc.stderr.read()}"
    proc.stderr.close()
    # SIGKILL during a write can leave atomic_write's temporary file (never the target);
    # the rerun must not add any of its own
    left_by_kill = temp_files(out)

    # the same command again, in this process (a fresh interpreter is what the reference
    # run and the killed one are; this saves starting a third)
    assert cli.main(["run", *ARGS, "--out", str(out)]) == 0, \
        f"{landed}\n{capsys.readouterr().err}"
    assert temp_files(out) <= left_by_kill, f"{landed}: temporary files left by the rerun"
    state_of(out)  # every checkpoint loads
    json.loads((out / "config.json").read_text())
    ours = json.loads((out / "metrics.json").read_text())
    theirs = json.loads((reference / "metrics.json").read_text())
    assert Path(ours["pretrained_checkpoint"]) == out / "pretrain.pt"
    assert comparable(ours) == comparable(theirs), landed


def corrupt(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "half":
        data = data[:len(data) // 2]
    elif how == "empty":
        data = b""
    elif how == "garbage":
        data = b"not a checkpoint\n" * 100
    elif how == "flipped":  # bytes in the middle (tensor data) inverted, size unchanged
        mid = len(data) // 2
        data = data[:mid] + bytes(b ^ 0xFF for b in data[mid:mid + 64]) + data[mid + 64:]
    path.write_bytes(data)


def test_truncated_checkpoint_stops_the_cli_naming_it(reference, tmp_path):
    """The real command line: exit code 2 and the file named on stderr."""
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    corrupt(out / "pretrain.pt", "half")
    proc = run_cli(out)
    assert proc.returncode == 2, proc.stderr
    assert f"{out / 'pretrain.pt'} is truncated or corrupted" in proc.stderr
    assert "Traceback" not in proc.stderr


# every file that a rerun of the CLI reads (run_experiment: Federation._resume for the three
# training checkpoints, prune() for pruned.pt; all through io.load_blob)
@pytest.mark.parametrize("name,how", [
    ("pretrain.pt", "empty"), ("retrain.pt", "half"), ("pruned.pt", "half"),
    ("pruned.pt", "garbage"), ("finetune.pt", "half"), ("finetune.pt", "empty"),
])
def test_corrupted_checkpoint_is_named_never_used(reference, tmp_path, capsys, keep_threads,
                                                  name, how):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    corrupt(out / name, how)
    before = (out / "metrics.json").read_bytes()
    assert cli.main(["run", *ARGS, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{out / name} is truncated or corrupted" in err
    assert (out / "metrics.json").read_bytes() == before  # nothing rewritten from bad input


@pytest.mark.parametrize("name", ["metrics.json", "config.json"])
def test_truncated_outputs_are_rewritten(reference, tmp_path, capsys, keep_threads, name):
    """metrics.json and config.json are written by a run, never read by it: a truncated one
    is replaced by the complete file."""
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    corrupt(out / name, "half")
    assert cli.main(["run", *ARGS, "--out", str(out)]) == 0, capsys.readouterr().err
    assert json.loads((out / name).read_text())  # complete JSON again
    ours = json.loads((out / "metrics.json").read_text())
    theirs = json.loads((reference / "metrics.json").read_text())
    assert comparable(ours) == comparable(theirs)
    assert not temp_files(out)


# torch.load does not verify the zip entries' CRC: bytes corrupted in place (size unchanged)
# load as other weights, which the digest saved beside the weights catches
@pytest.mark.parametrize("name", ["pretrain.pt", "retrain.pt", "pruned.pt", "finetune.pt"])
def test_checkpoint_corrupted_in_place_is_named(reference, tmp_path, capsys, keep_threads, name):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    corrupt(out / name, "flipped")
    assert cli.main(["run", *ARGS, "--out", str(out)]) == 2
    assert str(out / name) in capsys.readouterr().err
