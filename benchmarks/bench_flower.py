"""What does Flower cost per fine-tuning round, against the in-process simulator?

The same workload three ways: fine-tuning rounds of the same pruned model (``digits`` by
default, ResNet-20, Fang partition, the same sampled clients each round), run

1. in process (``run_experiment``, the reference: a plain loop over the clients),
2. through Flower's simulation engine (``flwr run . local``, one simulated SuperNode per
   client, Ray actors with one CPU each),
3. through a local deployment (a SuperLink plus one ``flower-supernode`` process per
   client, reading its Fang partition by ``partition-id``).

Each run starts from the same pretrained checkpoint, retrains for ``--rounds`` rounds and
fine-tunes for exactly ``--ft-rounds`` rounds (target accuracy 1.0 is never reached); the
figure is fine-tuning seconds per round as ``metrics.json`` records it (training plus the
server's evaluation, which all three do alike). The in-process reference runs with the
same torch threads as each Flower process (``--threads``), and once more with every core.
The simulation runs clients in parallel, one Ray actor per CPU; the deployment starts a
fresh ClientApp process for every message (Flower 1.42's SuperNode), so its figure
includes importing torch and reading the data on every node, every round. Prints:

    in-process, 2 threads: 2.4 s/round (0.83x the 1-thread reference)
    in-process 2.9 s/round | simulation 2.7 s/round (0.9x) | deployment 35.1 s/round (12.0x)

Usage: python benchmarks/bench_flower.py [--ft-rounds 3] [--clients-per-round 5] [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from fedunlearn_lib.experiment import run_experiment
from fedunlearn_lib.flower.launch import (flower_env, flwr_run, free_port, local_deployment,
                                          stop_local_superlink)
from fedunlearn_lib.flower.records import experiment_config


def per_round(metrics_file: Path) -> float:
    m = json.loads(metrics_file.read_text())
    return m["seconds"]["finetune"] / m["rounds_finetune_run"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--num-clients", type=int, default=10)
    ap.add_argument("--clients-per-round", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2, help="pretraining (and retraining) rounds")
    ap.add_argument("--ft-rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--out", help="keep the runs here (default: a temporary folder)")
    args = ap.parse_args()
    work = Path(args.out or tempfile.mkdtemp(prefix="bench_flower_"))
    run_config = {"dataset": args.dataset, "num-clients": args.num_clients,
                  "clients-per-round": args.clients_per_round, "rounds": args.rounds,
                  "finetune-rounds": args.ft_rounds, "target-r-acc": 1.0,
                  "threads": args.threads}
    cfg, _ = experiment_config(run_config)
    t0 = time.perf_counter()
    run_experiment(cfg, work / "inprocess", progress=False)
    ref = per_round(work / "inprocess" / "metrics.json")
    cfg_all, _ = experiment_config({**run_config, "threads": os.cpu_count()})
    run_experiment(cfg_all, work / "inprocess-all-cores", progress=False,
                   pretrained=work / "inprocess" / "pretrain.pt")
    ref_all = per_round(work / "inprocess-all-cores" / "metrics.json")
    flower_cfg = {**run_config, "pretrained": str(work / "inprocess" / "pretrain.pt")}

    home = work / "flwr-sim"
    home.mkdir(exist_ok=True)
    env = flower_env(home, FLWR_LOCAL_SUPERLINK_HTTP_API_PORT=str(free_port()))
    try:
        run = flwr_run("local", {**flower_cfg, "out": str(work / "simulation")}, env,
                       federation_config=f"num-supernodes={args.num_clients} "
                                         f"client-resources-num-cpus=1",
                       log=work / "simulation.log")
    finally:
        stop_local_superlink(home)
    if run["status"] != "finished:completed":
        raise SystemExit(f"simulation run failed: {run}; see {work / 'simulation.log'}")
    sim = per_round(work / "simulation" / "metrics.json")

    home = work / "flwr-deploy"
    env = flower_env(home)
    nodes = [f"partition-id={i} num-partitions={args.num_clients} threads={args.threads}"
             for i in range(args.num_clients)]
    with local_deployment(nodes, home, env):
        run = flwr_run("deploy", {**flower_cfg, "out": str(work / "deployment")}, env,
                       log=work / "deployment.log")
    if run["status"] != "finished:completed":
        raise SystemExit(f"deployment run failed: {run}; see {work / 'deployment.log'}")
    dep = per_round(work / "deployment" / "metrics.json")
    print(f"workload: {args.dataset}, resnet20, {args.num_clients} clients, "
          f"{args.clients_per_round} per round, {args.ft_rounds} fine-tuning rounds, "
          f"{args.threads} thread(s) per process; runs in {work}")
    print(f"in-process, {os.cpu_count()} threads: {ref_all:.1f} s/round "
          f"({ref_all / ref:.2f}x the 1-thread reference)")
    print(f"in-process {ref:.1f} s/round | simulation {sim:.1f} s/round ({sim / ref:.1f}x) | "
          f"deployment {dep:.1f} s/round ({dep / ref:.1f}x)   [total "
          f"{time.perf_counter() - t0:.0f} s]")


if __name__ == "__main__":
    main()
