"""Translations between the library's objects and Flower's records and run config."""
from __future__ import annotations

import json
from dataclasses import fields
from typing import Any, Mapping

import torch
from flwr.app import ArrayRecord, ConfigRecord, RecordDict
from torch import nn

from ..data import ImageData
from ..experiment import ExperimentConfig, flat_name
from ..federated import FedConfig
from ..procs import Upload
from ..unlearn import UnlearnConfig

# The app's own run-config keys (beside every ExperimentConfig, FedConfig and
# UnlearnConfig field, spelled with hyphens) and their defaults.
APP_DEFAULTS: dict[str, Any] = {
    "out": "runs/flower",  # where checkpoints and metrics.json go (on the server)
    "pretrained": "",  # a finished pretraining checkpoint to start from ("" = pretrain)
    "round-timeout": 600.0,  # seconds to wait for the nodes' replies to one request
    "min-replies": 1,  # fewer valid replies than this stops the run with an error
}
_SECTIONS = {flat_name(section, f.name): (section, f.name)  # key -> (section, field)
             for section, cls in (("federation", FedConfig), ("unlearning", UnlearnConfig))
             for f in fields(cls)}


def experiment_config(run_config: Mapping[str, Any]) -> tuple[ExperimentConfig, dict]:
    """Split a Flower run config into an ``ExperimentConfig`` and the app's own settings.

    Keys are the config fields with hyphens (``clients-per-round``, ``idf-threshold``);
    the string ``"none"`` stands for ``None``. An unknown key raises ``ValueError``
    naming it."""
    raw: dict[str, Any] = {}
    app = dict(APP_DEFAULTS)
    top = {f.name for f in fields(ExperimentConfig)} - set(_SECTIONS) - {"federation",
                                                                          "unlearning"}
    for key, value in run_config.items():
        if key in APP_DEFAULTS:
            app[key] = value
            continue
        name = key.replace("-", "_")
        if isinstance(value, str) and value.lower() == "none":
            value = None
        if name in _SECTIONS:
            section, field = _SECTIONS[name]
            raw.setdefault(section, {})[field] = value
        elif name in top:
            raw[name] = value
        else:
            known = sorted({k.replace("_", "-") for k in top | set(_SECTIONS)}
                           | set(APP_DEFAULTS))
            raise ValueError(f"unknown run-config key {key!r}; valid: {', '.join(known)}")
    return ExperimentConfig.from_dict(raw), app


def float_state(model: nn.Module) -> ArrayRecord:
    """The model's floating-point state (weights, BatchNorm statistics): what FedAvg
    averages. Integer buffers (BatchNorm's batch counter) stay where they are."""
    return ArrayRecord(torch_state_dict={k: v.detach() for k, v in model.state_dict().items()
                                         if v.is_floating_point()})


def checked_state(model: nn.Module, record: ArrayRecord, source: str) -> dict[str,
                                                                            torch.Tensor]:
    """``record`` as tensors, checked against ``model``'s floating-point state: a missing or
    extra entry, a wrong shape or a NaN/Inf raises ``ValueError`` naming ``source``."""
    ours = {k: v for k, v in model.state_dict().items() if v.is_floating_point()}
    theirs = record.to_torch_state_dict()
    if set(ours) != set(theirs):
        odd = sorted(set(ours) ^ set(theirs))
        raise ValueError(f"{source}: weights do not match the model ({', '.join(odd[:3])})")
    for k, v in theirs.items():
        if v.shape != ours[k].shape:
            raise ValueError(f"{source}: {k} has shape {tuple(v.shape)}, the model "
                             f"{tuple(ours[k].shape)}")
        if not torch.isfinite(v).all():
            raise ValueError(f"{source}: NaN or Inf in {k}")
    return theirs


@torch.no_grad()
def load_float_state(model: nn.Module, record: ArrayRecord, source: str) -> None:
    """Copy ``record`` into ``model``'s floating-point state after ``checked_state``."""
    ours = model.state_dict()
    for k, v in checked_state(model, record, source).items():
        ours[k].copy_(v)


def upload_record(up: Upload) -> RecordDict:
    """A local proc's result as a reply's content."""
    return RecordDict({"means": ArrayRecord(torch_state_dict=up.means),
                       "counts": ArrayRecord(torch_state_dict={"counts": up.counts})})


def upload_from(content: RecordDict, client_id: int) -> Upload:
    """The ``Upload`` in a ``local_proc`` reply (checked later by ``procs.aggregate``)."""
    means = content["means"].to_torch_state_dict()
    counts = content["counts"].to_torch_state_dict()["counts"].double()
    return Upload(client_id, {k: v.float() for k, v in means.items()}, counts)


def node_config(data: ImageData, **extra: Any) -> ConfigRecord:
    """What every request tells a node about the federation's data: class names (in label
    order), normalization and augmentation; ``extra`` values that are not plain scalars
    go as JSON."""
    conf = {"classes": json.dumps(list(data.classes)), "mean": list(data.mean),
            "std": list(data.std), "crop-padding": data.crop_padding, "flip": data.flip}
    for k, v in extra.items():
        conf[k] = v if isinstance(v, (bool, int, float, str)) else json.dumps(v)
    return ConfigRecord(conf)
