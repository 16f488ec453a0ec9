"""The Flower app on Flower's own engines (issue 11): the simulation engine through
``flwr run . local`` and a deployment of one SuperLink and two SuperNodes as processes.

Flower's home is a temporary folder, telemetry is off, and every process a test starts is
stopped when it ends, passed or failed.
"""
from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest

pytest.importorskip("flwr")
from fedunlearn_lib import cli  # noqa: E402
from fedunlearn_lib.experiment import ExperimentConfig, run_experiment  # noqa: E402
from fedunlearn_lib.flower.launch import (flower_env, flwr_run, free_port,  # noqa: E402
                                          local_deployment, stop_local_superlink)
from fedunlearn_lib.flower.records import experiment_config  # noqa: E402
from fedunlearn_lib.io import load_blob  # noqa: E402

TINY = {"rounds": 1, "finetune-rounds": 1, "ratio": 0.1, "batch-size": 64, "augment": False,
        "threads": 1}


def test_simulation_selects_the_in_process_channels(tmp_path):
    """``flwr run . local`` on 10 simulated nodes, started from the in-process run's
    pretrained model: the same channels, the same accuracies after pruning."""
    run_config = {**TINY, "clients-per-round": 3, "q": 0.5}
    cfg, _ = experiment_config(run_config)
    run_experiment(cfg, tmp_path / "sim", progress=False)
    home = tmp_path / "flwr"
    home.mkdir()
    env = flower_env(home, FLWR_LOCAL_SUPERLINK_HTTP_API_PORT=str(free_port()))
    try:
        run = flwr_run("local", {**run_config, "out": str(tmp_path / "flower"),
                                 "pretrained": str(tmp_path / "sim" / "pretrain.pt")},
                       env, federation_config="num-supernodes=10 client-resources-num-cpus=1",
                       timeout=300, log=tmp_path / "run.log")
    finally:
        stop_local_superlink(home)
    assert run["status"] == "finished:completed", (run, (tmp_path / "run.log").read_text())
    ours = json.loads((tmp_path / "flower" / "metrics.json").read_text())
    theirs = json.loads((tmp_path / "sim" / "metrics.json").read_text())
    selected = load_blob(tmp_path / "sim" / "pruned.pt")["selected"]
    assert load_blob(tmp_path / "flower" / "pruned.pt")["selected"] == selected and selected
    assert ours["pruned"] == theirs["pruned"]
    assert ours["flower"]["nodes"] == 10
    assert set(ours) - {"flower"} == set(theirs)


def test_deployment_with_two_supernodes_on_their_own_folders(tmp_path):
    """A SuperLink and three SuperNodes, each reading its own data folder; one node is
    killed as its first training message arrives. The run goes on with the others, says
    so in its log, ends completed with a metrics.json, and no Flower process outlives the
    test."""
    assert cli.main(["split", "--dataset", "digits", "--num-clients", "3",
                     "--out", str(tmp_path / "nodes")]) == 0
    home = tmp_path / "flwr"
    env = flower_env(home, FEDUNLEARN_CACHE=str(tmp_path / "cache"))
    nodes = [f"data-dir='{tmp_path / 'nodes' / str(i)}' client-id={i} threads=1"
             for i in range(3)]
    with local_deployment(nodes, home, env) as dep:
        victim = dep.processes[3]  # superlink, then the nodes in order

        def kill_at_first_train() -> None:
            log = dep.logs / "supernode2.log"
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline and victim.poll() is None:
                if "train message" in (log.read_text() if log.exists() else ""):
                    os.killpg(victim.pid, signal.SIGKILL)
                    return
                time.sleep(0.2)

        killer = threading.Thread(target=kill_at_first_train, daemon=True)
        killer.start()
        run = flwr_run("deploy", {**TINY, "num-clients": 3, "clients-per-round": 3,
                                  "round-timeout": 10.0, "out": str(tmp_path / "out")},
                       env, timeout=300, log=tmp_path / "run.log")
        killer.join(timeout=5)
    assert all(p.poll() is not None for p in dep.processes)
    log = (tmp_path / "run.log").read_text()
    assert run["status"] == "finished:completed", (run, log)
    assert victim.returncode == -signal.SIGKILL
    assert "round 1: no reply from node(s)" in log or "failed (Error: Node Unavailable" in log
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["flower"]["nodes"] == 3  # the pruned U-set: reported, not asserted
    assert sum(metrics["pruned_predictions"]["u_test"]) == pytest.approx(1.0, abs=1e-3)
    assert ExperimentConfig.from_dict(metrics["config"]).federation.num_clients == 3
    assert metrics["flower"]["clients_unlearned"]["nodes"] == 2
