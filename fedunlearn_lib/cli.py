"""Command line: ``python -m fedunlearn_lib run --dataset digits --forget 9 --out DIR``."""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import MISSING, fields
from types import UnionType
from typing import Sequence, Union, get_args, get_origin, get_type_hints

from .experiment import ExperimentConfig, run_experiment
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
        group.add_argument(_flag(f.name), dest=f"{title}.{f.name}", type=_arg_type(hints[f.name]),
                           default=None, help=f"(default: {default})")


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
    return parser


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
    try:
        cfg = config_from_args(args)
        metrics = run_experiment(cfg, args.out, progress=not args.quiet)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    summary = {k: metrics[k] for k in ("raw", "pruned", "finetuned", "retrained",
                                       "rounds_finetune", "rounds_retrain", "speedup")}
    print(json.dumps(summary, indent=2))
    return 0
