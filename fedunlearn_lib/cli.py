"""Command line: ``python -m fedunlearn_lib run --dataset digits --forget 9 --out DIR``."""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import MISSING, fields
from pathlib import Path
from types import UnionType
from typing import Sequence, Union, get_args, get_origin, get_type_hints

from .experiment import ExperimentConfig, flat_name, run_experiment
from .federated import FedConfig
from .unlearn import UnlearnConfig

_SECTIONS = {"federation": FedConfig, "unlearning": UnlearnConfig}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _arg_type(hint: object):
    """The argparse type for a dataclass field's annotation (``list`` fields parse later)."""
    if get_origin(hint) is list:
        return str
    options = [a for a in get_args(hint) if a is not type(None)] \
        if get_origin(hint) in (Union, UnionType) else [hint]
    return {bool: _parse_bool, int: int, float: float}.get(options[0], str)


def _add_fields(parser: argparse.ArgumentParser, cls: type, title: str) -> None:
    group = parser.add_argument_group(title)
    hints = get_type_hints(cls)
    for f in fields(cls):
        if f.name in _SECTIONS:
            continue
        default = f.default if f.default is not MISSING else f.default_factory()
        group.add_argument(_flag(flat_name(title, f.name)), dest=f"{title}.{f.name}",
                           type=_arg_type(hints[f.name]), default=None,
                           help=f"(default: {default})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fedunlearn_lib",
                                     description="Federated unlearning by TF-IDF channel pruning")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="pretrain -> unlearn -> fine-tune, and retrain; "
                                     "writes OUT/metrics.json")
    run.add_argument("--out", required=True, help="output folder (metrics and checkpoints)")
    run.add_argument("--config", help="YAML config; flags override it")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_fields(run, ExperimentConfig, "experiment")
    for title, cls in _SECTIONS.items():
        _add_fields(run, cls, title)
    split = sub.add_parser("split", help="write each client's training images to a folder "
                                         "of its own (a Flower node's data-dir)")
    split.add_argument("--dataset", required=True)
    split.add_argument("--data-root")
    split.add_argument("--num-clients", type=int, required=True)
    split.add_argument("--q", type=float, default=0.1, help="Fang bias probability (used "
                       "when there are at least as many clients as classes)")
    split.add_argument("--seed", type=int, default=0)
    split.add_argument("--train-per-class", type=int,
                       help="a class-balanced subset of the training images first")
    split.add_argument("--out", required=True)
    plan = sub.add_parser("plan", help="jobs and image passes per Snakemake rule of a "
                                       "profile's full rebuild, before running it")
    plan.add_argument("--configfile", required=True,
                      help="the profile, e.g. config/quick.yaml (passed to snakemake with "
                           "--config profile=<its stem> unless --config gives one)")
    plan.add_argument("--config", nargs="*", default=[], metavar="KEY=VALUE",
                      help="more config entries, as snakemake's --config")
    plan.add_argument("--snakefile", default="Snakefile",
                      help="the workflow (default: ./Snakefile)")
    return parser


def plan_command(args: argparse.Namespace) -> str:
    """The ``plan`` command's table: per rule its jobs and image passes, then the total."""
    from .plan import format_plan, plan, profile_of

    config = {}
    if args.config:
        from snakemake.cli import parse_config

        config = parse_config(args.config)
    rows = plan(args.configfile, config, args.snakefile)
    title = (f"profile {profile_of(Path(args.configfile), config)} ({args.configfile}): a full "
             f"rebuild, every training loop at its cap\nimage pass: one image through one "
             f"training step; an evaluation forward counts 1/3\n")
    return format_plan(rows, title)


def split_clients(args: argparse.Namespace) -> list[str]:
    """The ``split`` command: Fang's split when every class can have a client group,
    otherwise a uniform (IID) random split; one folder per client."""
    import torch

    from .data import load_dataset, write_client_folders
    from .partition import fang_partition

    if args.num_clients < 1:
        raise ValueError(f"--num-clients must be >= 1, got {args.num_clients}")
    data = load_dataset(args.dataset, args.data_root)
    if args.train_per_class:
        data = data.subset(args.train_per_class, None, seed=args.seed)
    if args.num_clients >= data.num_classes:
        parts = fang_partition(data.train_y, args.num_clients, args.q, data.num_classes,
                               args.seed)
    else:
        order = torch.randperm(len(data.train_y),
                               generator=torch.Generator().manual_seed(args.seed))
        parts = [p.sort().values for p in order.chunk(args.num_clients)]
    return [str(f) for f in write_client_folders(data, parts, args.out)]


def config_from_args(args: argparse.Namespace) -> ExperimentConfig:
    """Merge the YAML config (if any) with the flags given on the command line."""
    raw: dict = {}
    if args.config:
        import yaml
        with open(args.config) as fh:
            raw = yaml.safe_load(fh) or {}
    for key, value in vars(args).items():
        if "." not in key or value is None:
            continue
        section, name = key.split(".", 1)
        if section == "experiment":
            raw[name] = value
        else:
            raw.setdefault(section, {})[name] = value
    return ExperimentConfig.from_dict(raw)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "plan":
        try:
            print(plan_command(args))
        except ValueError as err:  # plan.PlanError: a missing file, a workflow error
            print(f"error: {err}", file=sys.stderr)
            return 2
        return 0
    if args.command == "split":
        try:
            print("\n".join(split_clients(args)))
        except (ValueError, FileNotFoundError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        return 0
    try:
        cfg = config_from_args(args)
        metrics = run_experiment(cfg, args.out, progress=not args.quiet)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    summary = {k: metrics[k] for k in ("raw", "pruned", "pruned_bn", "finetuned", "retrained",
                                       "target_r_acc", "rounds_finetune",
                                       "rounds_finetune_strict", "rounds_retrain",
                                       "rounds_retrain_strict", "speedup", "speedup_strict")}
    print(json.dumps(summary, indent=2))
    if metrics["rounds_retrain"] is None:
        print(f"note: retraining did not reach the target within {metrics['rounds_retrain_cap']} "
              f"rounds (retrain_rounds), so there is no speedup; see speedup_definition in "
              f"metrics.json")
    elif metrics["rounds_retrain"] == 0:
        print("note: the untrained model already meets the target (the raw model learned too "
              "little), so there is no speedup")
    if metrics["decisions_share_test_split"]:
        print("note: no validation split (--val-fraction 0): the target and the stop rules "
              "were decided on the test split the numbers above report")
    return 0
