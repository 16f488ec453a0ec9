"""How fast is the federated simulation compared with centralized SGD on the same machine?

Prints throughput (images/s) of plain centralized SGD, of FedAvg rounds at the quick
profile's client counts and at the paper's (100 clients, 25 per round), the wall-clock of
one unlearning request (local procs + server proc) against one fine-tuning round, the
time per round of a masked vs a physically pruned model, and peak memory of each. The
last line is the summary:

    fedavg/centralized=0.93 paper-scale=0.86 scoring/round=0.40 pruned/masked=0.97 channels-last/contiguous=1.20 bf16/fp32=2.00 bf16/fp32-eval=4.50 fedsgd-batched/loop=1.10 fedavg-batched/loop=0.90

(bf16/fp32 and bf16/fp32-eval: rounds and test-set evaluation with bfloat16 autocast against
float32; fedsgd-batched/loop: images/s of a FedSGD round computed as one batch
(``client_batching: batched``) over the sequential loop's, at the paper profile's round
size, 25 clients x 500 images in minibatches of 64 (``--paper-per-round``,
``--fedsgd-images``, ``--fedsgd-batch``); fedavg-batched/loop: the same for the quick
profile's FedAvg round with the clients stacked and vmapped. > 1: batched is faster).

Usage: python benchmarks/bench_sim.py [--model resnet20] [--batch-size 32] [--device cpu]
       [--channels-last] [--precision fp32] [--fedsgd-images 500] [--fedsgd-batch 64]
"""
from __future__ import annotations

import argparse
import copy
import resource
import time
from dataclasses import replace

import torch
import torch.nn.functional as F

from fedunlearn_lib import FedConfig, Federation, build_model
from fedunlearn_lib.data import BatchTransform, ImageData
from fedunlearn_lib.procs import aggregate, local_proc
from fedunlearn_lib.pruning import conv_flops, layer_scores, remove_channels, select_channels


def synthetic_data(n: int, num_classes: int = 10, seed: int = 0) -> ImageData:
    """CIFAR-sized random uint8 images with balanced labels (speed does not depend on content)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    y = torch.arange(n) % num_classes
    return ImageData(x, y, x[:1000], y[:1000], tuple(map(str, range(num_classes))),
                     (0.49, 0.48, 0.45), (0.25, 0.24, 0.26))


def peak_memory_mb(device: torch.device) -> float:
    """Peak accelerator memory since the last reset, or the process's peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def centralized(model_name: str, data: ImageData, cfg: FedConfig, n_images: int,
                device: torch.device) -> float:
    """Images/s of plain SGD over batches of ``cfg.batch_size`` (with augmentation)."""
    model = build_model(model_name, data.num_classes).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                          weight_decay=cfg.weight_decay)
    t = BatchTransform(data.mean, data.std, device)
    x_all, y_all = data.train_x.to(device), data.train_y.to(device)
    g = torch.Generator().manual_seed(0)

    def steps(n: int) -> None:
        perm = torch.randperm(len(y_all), generator=g)[:n].to(device)
        for s in range(0, n, cfg.batch_size):
            idx = perm[s:s + cfg.batch_size]
            loss = F.cross_entropy(model(t(x_all[idx], g, True)), y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    steps(4 * cfg.batch_size)  # warm-up
    sync(device)
    t0 = time.perf_counter()
    steps(n_images)
    sync(device)
    return n_images / (time.perf_counter() - t0)


def timed_rounds(fed: Federation, rounds: int) -> tuple[float, float]:
    """(images/s, seconds per round) over ``rounds`` FedAvg rounds after one warm-up round."""
    fed.run_round()
    images = 0
    sync(fed.device)
    t0 = time.perf_counter()
    for _ in range(rounds):
        chosen = [fed.clients[c] for c in fed.sample_clients(fed.round + 1)]
        images += sum(len(c) for c in chosen) * fed.cfg.local_epochs
        fed.run_round()
    sync(fed.device)
    dt = time.perf_counter() - t0
    return images / dt, dt / rounds


def eval_ips(fed: Federation, repeats: int = 3) -> float:
    """Images/s of ``Federation.evaluate`` on the test set (after one warm-up call)."""
    fed.evaluate()
    sync(fed.device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        fed.evaluate()
    sync(fed.device)
    return repeats * len(fed.data.test_y) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--samples", type=int, default=10000, help="training images in all")
    ap.add_argument("--clients", type=int, default=20, help="quick profile: clients")
    ap.add_argument("--per-round", type=int, default=5, help="quick profile: clients per round")
    ap.add_argument("--paper-clients", type=int, default=100)
    ap.add_argument("--paper-per-round", type=int, default=25)
    ap.add_argument("--local-epochs", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=1, help="timed rounds per measurement")
    ap.add_argument("--ratio", type=float, default=0.3, help="R for pruned vs masked")
    ap.add_argument("--fedsgd-images", type=int, default=500,
                    help="batched vs loop FedSGD: images per client (--paper-per-round "
                         "clients; the paper profile: 25 x 500)")
    ap.add_argument("--fedsgd-batch", type=int, default=64,
                    help="batched vs loop FedSGD: minibatch (the paper profile's 64)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--channels-last", action="store_true",
                    help="the main measurements in channels-last layout (the other layout is "
                         "timed once for the comparison)")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                    help="the main measurements' precision (the other is timed once)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    data = synthetic_data(args.samples)
    quick = FedConfig(num_clients=args.clients, clients_per_round=args.per_round,
                      local_epochs=args.local_epochs, batch_size=args.batch_size,
                      precision=args.precision)
    paper = replace(quick, num_clients=args.paper_clients, clients_per_round=args.paper_per_round)
    print(f"device={device} threads={torch.get_num_threads()} model={args.model} "
          f"batch={args.batch_size} samples={args.samples}")

    def fed(cfg: FedConfig, model=None, mask=None, exclude=(),
            channels_last: bool = args.channels_last) -> Federation:
        torch.manual_seed(0)
        model = model if model is not None else build_model(args.model, data.num_classes)
        return Federation(model, data, cfg, forget=[9], exclude=exclude, mask=mask,
                          device=device, progress=False, channels_last=channels_last)

    rows = []
    reset_peak(device)
    n_central = args.per_round * (args.samples // args.clients) * args.local_epochs
    central = centralized(args.model, data, quick, n_central, device)
    rows.append(("centralized SGD", central, None, peak_memory_mb(device)))

    reset_peak(device)
    quick_ips, _ = timed_rounds(fed(quick), args.rounds)
    rows.append((f"FedAvg {args.per_round}/{args.clients} clients", quick_ips, None,
                 peak_memory_mb(device)))

    # the same rounds in the other memory layout
    reset_peak(device)
    other_ips, _ = timed_rounds(fed(quick, channels_last=not args.channels_last), args.rounds)
    rows.append((f"  ... {'contiguous' if args.channels_last else 'channels-last'}", other_ips,
                 None, peak_memory_mb(device)))
    last, contiguous = (quick_ips, other_ips) if args.channels_last else (other_ips, quick_ips)

    # the same rounds, and the test-set evaluation, in the other precision
    train_rate, eval_rate = {}, {}
    for precision in ("fp32", "bf16"):
        reset_peak(device)
        f = fed(replace(quick, precision=precision))
        if precision == args.precision:
            train_rate[precision] = quick_ips
        else:
            train_rate[precision], _ = timed_rounds(f, args.rounds)
            rows.append((f"  ... {precision}", train_rate[precision], None, peak_memory_mb(device)))
        eval_rate[precision] = eval_ips(f)
        rows.append((f"evaluation, {precision}", eval_rate[precision], None, peak_memory_mb(device)))

    reset_peak(device)
    paper_ips, _ = timed_rounds(fed(paper), args.rounds)
    rows.append((f"FedAvg {args.paper_per_round}/{args.paper_clients} clients", paper_ips, None,
                 peak_memory_mb(device)))

    # FedSGD at the paper profile's round size, as one batch and in the loop
    per = args.fedsgd_images
    sgd_data = synthetic_data(args.paper_per_round * per)
    sgd_cfg = replace(quick, algorithm="fedsgd", num_clients=args.paper_per_round,
                      clients_per_round=args.paper_per_round, batch_size=args.fedsgd_batch,
                      local_epochs=1)
    sgd_rate = {}
    for batching in ("loop", "batched"):
        reset_peak(device)
        torch.manual_seed(0)
        f = Federation(build_model(args.model, data.num_classes), sgd_data,
                       replace(sgd_cfg, client_batching=batching), device=device,
                       progress=False, channels_last=args.channels_last,
                       partition=[torch.arange(c * per, (c + 1) * per)
                                  for c in range(args.paper_per_round)])
        sgd_rate[batching], _ = timed_rounds(f, args.rounds)
        rows.append((f"FedSGD {args.paper_per_round}x{per}, {batching}", sgd_rate[batching],
                     None, peak_memory_mb(device)))
        del f

    # the quick profile's FedAvg round with the clients stacked (vmap)
    reset_peak(device)
    vmapped_ips, _ = timed_rounds(fed(replace(quick, client_batching="batched")), args.rounds)
    rows.append((f"FedAvg {args.per_round}/{args.clients}, batched", vmapped_ips, None,
                 peak_memory_mb(device)))

    # one unlearning request at quick settings: local procs on one round's clients + server
    reset_peak(device)
    base = fed(quick)
    sync(device)
    t0 = time.perf_counter()
    chosen = [base.clients[c] for c in base.sample_clients(1)]
    uploads = [local_proc(base.model, c, base.transform, data.num_classes) for c in chosen]
    acts, _ = aggregate(uploads)
    mask = select_channels(layer_scores(acts, 9), 0.05)
    sync(device)
    t_score = time.perf_counter() - t0
    rows.append(("local + server proc", None, t_score, peak_memory_mb(device)))
    _, t_round = timed_rounds(fed(quick, copy.deepcopy(base.model), mask, exclude=[9]),
                              args.rounds)
    rows.append(("fine-tuning round", None, t_round, peak_memory_mb(device)))

    # masked vs physically pruned model at ratio R
    model = build_model(args.model, data.num_classes)
    g = torch.Generator().manual_seed(0)
    scores = {n: torch.rand(m.out_channels, generator=g) for n, m in model.named_modules()
              if isinstance(m, torch.nn.Conv2d)}
    big = select_channels(scores, args.ratio)
    reset_peak(device)
    _, t_masked = timed_rounds(fed(quick, copy.deepcopy(model), big), args.rounds)
    rows.append((f"round, masked R={args.ratio}", None, t_masked, peak_memory_mb(device)))
    thin, keep, removed = remove_channels(copy.deepcopy(model), big, torch.zeros(1, 3, 32, 32))
    reset_peak(device)
    _, t_pruned = timed_rounds(fed(quick, thin, keep), args.rounds)
    rows.append((f"round, pruned R={args.ratio}", None, t_pruned, peak_memory_mb(device)))
    macs = (conv_flops(model), conv_flops(thin.cpu()))

    print(f"{'measurement':32s} {'images/s':>10s} {'seconds':>9s} {'peak MB':>9s}")
    for name, ips, sec, mem in rows:
        ips_s = "" if ips is None else f"{ips:.0f}"
        sec_s = "" if sec is None else f"{sec:.2f}"
        print(f"{name:32s} {ips_s:>10s} {sec_s:>9s} {mem:9.0f}")
    print(f"pruned model: {removed} channels removed, {len(keep)} kept masked, "
          f"MACs {macs[0] / 1e6:.1f}M -> {macs[1] / 1e6:.1f}M")
    print(f"fedavg/centralized={quick_ips / central:.2f} paper-scale={paper_ips / central:.2f} "
          f"scoring/round={t_score / t_round:.2f} pruned/masked={t_pruned / t_masked:.2f} "
          f"channels-last/contiguous={last / contiguous:.2f} "
          f"bf16/fp32={train_rate['bf16'] / train_rate['fp32']:.2f} "
          f"bf16/fp32-eval={eval_rate['bf16'] / eval_rate['fp32']:.2f} "
          f"fedsgd-batched/loop={sgd_rate['batched'] / sgd_rate['loop']:.2f} "
          f"fedavg-batched/loop={vmapped_ips / quick_ips:.2f}")


if __name__ == "__main__":
    main()
