"""How the server proc holds up when some participants upload crafted matrices.

For each random sample of participants, the honest uploads give the reference selection
(the paper's count-weighted mean). Then a fraction f of them is replaced by an attack
(``attacks.ATTACKS``), the server aggregates with each defence (``procs.aggregate``
options), and each cell reports the Jaccard overlap of its selection with the honest one
and the U-/R-set accuracy right after pruning (and, for the fractions asked, after a short
federated fine-tuning).
"""
from __future__ import annotations

import copy
from typing import Sequence

import numpy as np
import pandas as pd

from .attacks import poison
from .federated import Federation
from .masking import ChannelMask, jaccard
from .procs import aggregate, local_proc
from .unlearn import UnlearnConfig, server_selection

DEFENCES: dict[str, dict] = {  # name -> aggregate() options
    "mean (paper)": {},
    "median": {"method": "median"},
    "trimmed 20%": {"method": "trimmed", "trim": 0.2},
    "weight cap 20%": {"max_weight": 0.2},
}


def _selection(uploads: list, target: int, cfg: UnlearnConfig, **options) -> ChannelMask:
    return server_selection(aggregate(uploads, **options)[0], target, cfg)


def robustness_rows(fed: Federation, target: int, cfg: UnlearnConfig,
                    fractions: Sequence[float], attacks: Sequence[str],
                    defences: dict[str, dict] | None = None, samples: int = 3,
                    participants: int | None = None, finetune_at: Sequence[float] = (),
                    finetune_rounds: int = 2, seed: int = 0) -> list[dict]:
    """One row per sample x attack x fraction x defence (see the module docstring).

    ``fed`` holds the raw model (left unchanged); ``participants`` (default one round's
    worth) are drawn among all clients for each of the ``samples``; the rows at a fraction
    in ``finetune_at`` (first sample only) also get ``finetune_rounds`` rounds of federated
    fine-tuning on the remaining classes.
    """
    defences = DEFENCES if defences is None else defences
    k = participants or fed.cfg.clients_per_round
    raw = copy.deepcopy(fed.model)
    evaluator = Federation(copy.deepcopy(raw), fed.data, fed.cfg, forget=[target],
                           device=fed.device, progress=False)
    after_pruning: dict[frozenset, dict] = {}

    def accuracy(mask: ChannelMask) -> dict:
        key = mask.pairs()
        if key not in after_pruning:
            evaluator.model.load_state_dict(raw.state_dict())
            mask.apply(evaluator.model)
            after_pruning[key] = evaluator.evaluate()
        return after_pruning[key]

    rows = []
    for s in range(samples):
        rng = np.random.default_rng([seed, 4099, s])
        chosen = sorted(rng.choice(len(fed.clients), k, replace=False).tolist())
        honest = [local_proc(raw, fed.clients[c], fed.transform, fed.data.num_classes)
                  for c in chosen]
        reference = _selection(honest, target, cfg)
        for attack in attacks:
            for f in fractions:
                uploads, bad = poison(honest, attack, f, target, seed=seed * 1009 + s)
                for name, options in defences.items():
                    mask = _selection(uploads, target, cfg, **options)
                    acc = accuracy(mask)
                    row = {"sample": s, "attack": attack, "f": f, "poisoned": len(bad),
                           "defence": name, "Jaccard": round(jaccard(mask, reference), 3),
                           "pruned U": acc["u_acc"], "pruned R": acc["r_acc"]}
                    if s == 0 and f in finetune_at:
                        ft = Federation(copy.deepcopy(raw), fed.data, fed.cfg, forget=[target],
                                        exclude=[target], mask=mask, device=fed.device,
                                        progress=False)
                        ft.train_until(None, finetune_rounds)
                        final = ft.evaluate()
                        row.update({"fine-tuned U": final["u_acc"],
                                    "fine-tuned R": final["r_acc"]})
                    rows.append(row)
    return rows


def summarize(rows: list[dict]) -> pd.DataFrame:
    """Mean over samples per attack x fraction x defence (Jaccard also as its minimum),
    accuracies in %."""
    df = pd.DataFrame(rows)
    acc = [c for c in df.columns if c.startswith(("pruned", "fine-tuned"))]
    df[acc] = 100 * df[acc]
    out = df.groupby(["attack", "f", "defence"], sort=False).agg(
        **{"Jaccard mean": ("Jaccard", "mean"), "Jaccard min": ("Jaccard", "min"),
           "poisoned": ("poisoned", "first"), "samples": ("sample", "nunique")},
        **{c: (c, "mean") for c in acc})
    return out.round(3).reset_index()
