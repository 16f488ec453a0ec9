"""The first GPU run, prepared: what the paper profile costs on this device.

One command, at most 8 minutes on one GPU (a time budget skips what would not fit), nothing
downloaded (synthetic CIFAR-sized images: speed does not depend on their content). Every
output line is ``<kind> key=value key=value ...`` (values hold no space and no '='):

    env       torch / CUDA / cuDNN versions, the device, its memory, bf16 support
    plain     a plain single-model training loop at batch 512: the reference throughput
    round     one round of the paper profile (FedSGD, 25 of 100 clients x 500 images,
              batch 64; FedAvg as its bias study runs it, 5 local epochs), loop and batched
    ratio     batched over loop throughput of those rounds (> 1: batched is faster)
    pretrain  the first rounds of the paper profile's pretraining through the library
              (experiment.pretrain: evaluation on the validation split every round)
    model_round  every model of the grid: its round time scaled from the measured one of
              its family by conv MACs
    estimate  the paper grid's GPU-hours from those round times, per batching
    formula   how the estimate is computed
    skipped   a section the time budget left out
    total     wall-clock seconds of the whole check

Usage: python benchmarks/device_check.py [--device cuda] [--tiny] [--budget 420]
(``--tiny``: tiny sizes, so it runs in seconds on a CPU: ``--device cpu --tiny``; its
numbers are not meaningful.) docs/gpu.md documents the output line by line.
"""
from __future__ import annotations

import argparse
import platform
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

from fedunlearn_lib import FedConfig, Federation, build_model
from fedunlearn_lib.data import BatchTransform, ImageData
from fedunlearn_lib.experiment import ExperimentConfig, pretrain
from fedunlearn_lib.federated import autocast, native_bf16
from fedunlearn_lib.models import RESNET_DEPTHS
from fedunlearn_lib.pruning import conv_flops

ROOT = Path(__file__).resolve().parents[1]
FAMILY_REP = {"resnet": "resnet20", "vgg": "vgg16"}  # measured; the others scale by MACs


def family(model: str) -> str:
    return "resnet" if model in RESNET_DEPTHS else "vgg"


def emit(kind: str, **values) -> None:
    """One output line: ``kind key=value ...``."""
    def fmt(v) -> str:
        if isinstance(v, float):
            v = f"{v:.4g}" if abs(v) < 1e4 else f"{v:.0f}"
        return str(v).replace(" ", "_").replace("=", "-") or "none"
    print(kind + "".join(f" {k}={fmt(v)}" for k, v in values.items()), flush=True)


def synthetic(n_train: int, n_test: int, num_classes: int = 10, seed: int = 0) -> ImageData:
    """CIFAR-sized random uint8 images with balanced labels."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n_train + n_test, 3, 32, 32), generator=g, dtype=torch.uint8)
    y = torch.arange(n_train + n_test) % num_classes
    return ImageData(x[:n_train], y[:n_train], x[n_train:], y[n_train:],
                     tuple(map(str, range(num_classes))), (0.49, 0.48, 0.45),
                     (0.25, 0.24, 0.26))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_gib(device: torch.device) -> str:
    if device.type != "cuda":
        return "na"
    return f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f}"


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def plain_loop(model_name: str, batch: int, steps: int, precision: str,
               device: torch.device) -> float:
    """Images/s of plain SGD on one model (augmentation on the device, data resident)."""
    torch.manual_seed(0)
    model = build_model(model_name, 10).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    data = synthetic(batch * 4, 0)
    t = BatchTransform(data.mean, data.std, device)
    x_all, y_all = data.train_x.to(device), data.train_y.to(device)
    g = torch.Generator(device=device).manual_seed(0)

    def step(i: int) -> None:
        s = (i % 4) * batch
        with autocast(device, precision):
            loss = F.cross_entropy(model(t(x_all[s:s + batch], g, True)), y_all[s:s + batch])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for i in range(3):  # warm-up (cuDNN autotuning, allocator)
        step(i)
    sync(device)
    t0 = time.perf_counter()
    for i in range(steps):
        step(i)
    sync(device)
    return steps * batch / (time.perf_counter() - t0)


def timed_round(fed: Federation) -> float:
    """Seconds of one round after a warm-up round."""
    fed.run_round()
    sync(fed.device)
    t0 = time.perf_counter()
    fed.run_round()
    sync(fed.device)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="tiny sizes (seconds on a CPU)")
    ap.add_argument("--budget", type=float, default=420.0,
                    help="seconds; sections that would start later are skipped")
    ap.add_argument("--profile", default=str(ROOT / "config" / "paper.yaml"))
    ap.add_argument("--pretrain-rounds", type=int, default=4,
                    help="rounds of each pretraining measured (the first one apart)")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    t_start = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("device_check: --device cuda but CUDA is not available "
                         "(use --device cpu --tiny for the CPU smoke run)")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    profile = yaml.safe_load(Path(args.profile).read_text())
    exp = profile["experiment"]
    fed_raw = dict(exp["federation"])
    paper = FedConfig(**fed_raw)
    bias = replace(paper, **(profile.get("bias", {}).get("federation") or {}))
    tiny = args.tiny
    images = 12 if tiny else len_per_client(paper)  # per client
    if tiny:  # 2 of 10 clients (>= the classes, as the Fang split needs), minibatches of 4
        paper = replace(paper, num_clients=10, clients_per_round=2, batch_size=4)
        bias = replace(bias, num_clients=10, clients_per_round=2, batch_size=4,
                       local_epochs=1)
    plain_batch, plain_steps = (8, 2) if tiny else (512, 30)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    memory = torch.cuda.get_device_properties(device).total_memory / 2**30 \
        if device.type == "cuda" else 0.0
    emit("env", torch=torch.__version__, cuda=torch.version.cuda or "none",
         cudnn=torch.backends.cudnn.version() or "none", device=device, name=name,
         memory_gib=f"{memory:.1f}", bf16=int(native_bf16(device)),
         threads=torch.get_num_threads(), tiny=int(tiny), budget_s=args.budget)

    skipped = []

    def fits(section: str) -> bool:
        if time.perf_counter() - t_start > args.budget:
            emit("skipped", section=section, reason="budget")
            skipped.append(section)
            return False
        return True

    # ---------------------------------------------------------------- plain loop
    for model_name in FAMILY_REP.values():
        for precision in ("fp32", "bf16"):
            if precision == "bf16" and not native_bf16(device):  # emulated: 12x slower
                emit("skipped", section=f"plain-{model_name}-bf16", reason="no_native_bf16")
                continue
            if not fits(f"plain-{model_name}-{precision}"):
                continue
            reset_peak(device)
            ips = plain_loop(model_name, plain_batch, plain_steps, precision, device)
            emit("plain", model=model_name, batch=plain_batch, steps=plain_steps,
                 precision=precision, images_per_s=ips, peak_gib=peak_gib(device))

    # ------------------------------------------------- one round, loop and batched
    data = synthetic(paper.num_clients * images, 100)
    parts = [torch.arange(c * images, (c + 1) * images) for c in range(paper.num_clients)]
    round_s: dict[tuple[str, str, str], float] = {}
    jobs = [("fedsgd", m, paper) for m in FAMILY_REP.values()] + [("fedavg", "resnet20", bias)]
    for algorithm, model_name, cfg in jobs:
        for batching in ("loop", "batched"):
            if not fits(f"round-{algorithm}-{model_name}-{batching}"):
                continue
            reset_peak(device)
            torch.manual_seed(0)
            fed = Federation(build_model(model_name, 10), data,
                             replace(cfg, algorithm=algorithm, client_batching=batching),
                             partition=parts, device=device, progress=False)
            sec = timed_round(fed)
            round_s[algorithm, model_name, batching] = sec
            n = cfg.clients_per_round * images * (cfg.local_epochs if algorithm == "fedavg"
                                                  else 1)
            emit("round", algorithm=algorithm, model=model_name,
                 clients=f"{cfg.clients_per_round}/{cfg.num_clients}", images=images,
                 batch=cfg.batch_size, local_epochs=cfg.local_epochs if algorithm == "fedavg"
                 else 1, precision=cfg.precision, batching=batching, seconds=sec,
                 images_per_s=n / sec, peak_gib=peak_gib(device))
            del fed
        if (algorithm, model_name, "loop") in round_s and \
                (algorithm, model_name, "batched") in round_s:
            emit("ratio", model=model_name, **{
                f"{algorithm}-batched/loop": round_s[algorithm, model_name, "loop"]
                / round_s[algorithm, model_name, "batched"]})

    # ------------------------------------------- pretraining through the library
    per_round: dict[str, float] = {}
    n_rounds = 2 if tiny else max(args.pretrain_rounds, 2)
    pre_data = synthetic(100, 40) if tiny else synthetic(50_000, 10_000)
    val = exp.get("val_fraction") or 0.0
    if val:
        pre_data = pre_data.with_validation(val, seed=0)
    for model_name in FAMILY_REP.values():
        if not fits(f"pretrain-{model_name}"):
            continue
        known = {k: v for k, v in exp.items() if k in ExperimentConfig.__dataclass_fields__}
        fed_cfg = replace(paper, client_batching="batched")
        cfg = ExperimentConfig.from_dict({**known, "federation": fed_cfg, "dataset": "cifar10",
                                          "model": model_name, "device": str(device),
                                          "rounds": 1, "forget": [9]})
        reset_peak(device)
        with tempfile.TemporaryDirectory() as tmp:
            sync(device)
            t0 = time.perf_counter()
            fed = pretrain(cfg, pre_data, Path(tmp) / "pretrain.pt", progress=False)
            sync(device)
            first = time.perf_counter() - t0
            t0 = time.perf_counter()
            fed.train_until(None, n_rounds)
            sync(device)
            per_round[model_name] = (time.perf_counter() - t0) / (n_rounds - 1)
        emit("pretrain", model=model_name, dataset="cifar10-synthetic",
             clients=f"{fed_cfg.clients_per_round}/{fed_cfg.num_clients}",
             batching="batched", precision=fed_cfg.precision,
             channels_last=int(cfg.uses_channels_last()), rounds=n_rounds,
             setup_and_first_round_s=first, per_round_s=per_round[model_name],
             peak_gib=peak_gib(device))
        del fed

    # -------------------------------------------------------- the grid's GPU-hours
    if all(m in per_round for m in FAMILY_REP.values()):
        macs = {m: conv_flops(build_model(m, 10)) for m in profile["models"]}
        rep_macs = {f: conv_flops(build_model(m, 10)) for f, m in FAMILY_REP.items()}
        t_round = {"batched": {}, "loop": {}}
        for m in profile["models"]:
            rep = FAMILY_REP[family(m)]
            scale = macs[m] / rep_macs[family(m)]
            t_round["batched"][m] = per_round[rep] * scale
            loop_extra = (round_s.get(("fedsgd", rep, "loop"), 0.0)
                          - round_s.get(("fedsgd", rep, "batched"), 0.0))
            t_round["loop"][m] = (per_round[rep] + loop_extra) * scale
            emit("model_round", model=m, macs_m=macs[m] / 1e6, scale=scale,
                 batched_s=t_round["batched"][m], loop_s=t_round["loop"][m])
        rounds = int(exp["rounds"])
        seeds = len(profile["seeds"])
        useeds = len(profile.get("unlearning_seeds") or [0])
        trainings = {d: 1 + len(profile["forget"][d]) * (1 + useeds)
                     for d in profile["datasets"]}
        for batching in ("batched", "loop"):
            seconds = sum(seeds * trainings[d] * rounds * t_round[batching][m]
                          for d in profile["datasets"] for m in profile["models"])
            emit("estimate", batching=batching, datasets=len(profile["datasets"]),
                 models=len(profile["models"]), seeds=seeds, unlearning_seeds=useeds,
                 trainings_per_model=sum(trainings.values()) * seeds, rounds_per_training=rounds,
                 gpu_hours=seconds / 3600)
        emit("formula",
             gpu_hours="sum_over_datasets_and_models(seeds*trainings*rounds*t_round(model))/3600",
             trainings="1_pretraining+forget_sets*(1_retraining+unlearning_seeds_finetunings)",
             rounds="experiment.rounds_(the_cap:_stop_rules_end_most_trainings_earlier)",
             t_round="pretrain_per_round_s(resnet20|vgg16)*macs(model)/macs(resnet20|vgg16)",
             loop_t_round="t_round+(fedsgd_loop_s-fedsgd_batched_s)*macs_scale",
             scope="main_grid_only_(studies_add_on_top:_python_-m_fedunlearn_lib_plan)")
    else:
        emit("skipped", section="estimate", reason="no_pretraining_measured")
    emit("total", seconds=time.perf_counter() - t_start, budget_s=args.budget,
         skipped=",".join(skipped) or "none")


def cpu_name() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def len_per_client(cfg: FedConfig) -> int:
    """Images per client of the paper profile: CIFAR's 50,000 over its clients."""
    return 50_000 // cfg.num_clients


if __name__ == "__main__":
    main()
