"""fedunlearn: federated class unlearning by TF-IDF-guided channel pruning (Wang et al. 2022).

The names below are imported lazily, on first use (``from fedunlearn_lib import
ExperimentConfig`` works as before): importing the package, or a torch-free module of it
such as ``fedunlearn_lib.arms``, loads no torch, so that the workflow (Snakefile) parses
without it. To export another name, add it to ``_EXPORTS`` (name -> module), not as an
``from .module import name`` line, which would load that module (and torch) eagerly.
"""
from __future__ import annotations

import importlib
import importlib.util
from typing import Any

_EXPORTS = {
    "ImageData": "data", "load_dataset": "data",
    "ExperimentConfig": "experiment", "run_experiment": "experiment",
    "FedConfig": "federated", "Federation": "federated",
    "ChannelMask": "masking",
    "build_model": "models",
    "aggregate": "procs", "local_proc": "procs",
    "remove_channels": "pruning", "select_channels": "pruning",
    "tfidf_scores": "tfidf",
    "TFIDFImportance": "tp_importance",
    "UnlearnConfig": "unlearn", "prune_for_classes": "unlearn",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:  # a submodule (fedunlearn_lib.studies after import fedunlearn_lib)
        if importlib.util.find_spec(f"{__name__}.{name}") is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        return importlib.import_module(f".{name}", __name__)
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
