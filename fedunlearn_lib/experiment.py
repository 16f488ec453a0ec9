"""The paper's protocol end to end: pretrain -> unlearn (score, prune) -> fine-tune, and retrain."""
from __future__ import annotations

import copy
import json
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
import yaml

from .classwise import model_logits, prediction_histogram
from .data import DATASETS, ImageData, load_dataset
from .evidence import BN_IMAGES, bn_recall, training_images
from .federated import (FedConfig, Federation, Remote, TrainResult, identity_fields, load_state,
                        rounds_for)
from .io import (atomic_torch_save, atomic_write_json, check_identity, check_weights, load_blob,
                 state_digest)
from .masking import ChannelMask
from .models import MODELS, build_model, prefers_channels_last
from .pruning import conv_flops, count_conv_channels, remove_channels
from .partition import fang_partition
from .unlearn import UnlearnConfig, prune_for_classes, stream_seed


@dataclass
class ExperimentConfig:
    """Everything one experiment depends on; mirrors the YAML config and the CLI flags."""

    dataset: str = "digits"
    data_root: str | None = None
    model: str = "resnet20"
    forget: list[int] = field(default_factory=lambda: [9])
    rounds: int = 20  # pretraining budget (the cap, with patience); also the length of the
    # learning-rate schedule of pre- and retraining
    patience: int | None = None  # stop pretraining after this many rounds without gain
    # in validation R-set accuracy (a plateau); None = train for all `rounds`
    retrain_rounds: int | None = None  # cap on retraining, which stops at the first round
    # meeting the target (the paper's "rounds to the target"); None = rounds
    finetune_rounds: int | None = None  # None = rounds
    finetune_lr: float | None = None  # constant fine-tuning lr; None = federation.lr, or
    # the rate select_finetune_lr chooses among finetune_lr_candidates when there are any
    finetune_lr_candidates: list[float] = field(default_factory=list)
    finetune_lr_tolerance: float = 0.01  # R-set accuracy a candidate may lose to the best
    target_r_acc: float | None = None  # None = the raw model's R-set accuracy on the
    # decision split minus target_margin, fixed before retraining and fine-tuning run
    target_margin: float = 0.01
    strict_u: float = 0.01  # strict stop rule: U-set accuracy <= this in the target round
    train_per_class: int | None = None  # class-balanced subset; None = all
    test_per_class: int | None = None
    val_fraction: float = 0.0  # of each class's test images held out for decisions
    # (stop rules, target); 0 = no validation split, decide on the test split
    device: str = "cpu"
    threads: int | None = None
    channels_last: bool | None = None  # memory layout; None = the faster one for the
    # model on the device (models.prefers_channels_last)
    federation: FedConfig = field(default_factory=FedConfig)
    unlearning: UnlearnConfig = field(default_factory=UnlearnConfig)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "ExperimentConfig":
        raw = dict(raw)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"unknown config key(s) {', '.join(unknown)}; "
                             f"valid: {', '.join(sorted(known))}")
        sub = {"federation": FedConfig, "unlearning": UnlearnConfig}
        for key, typ in sub.items():
            value = raw.get(key) or {}
            if not isinstance(value, typ):
                bad = sorted(set(value) - {f.name for f in fields(typ)})
                if bad:
                    raise ValueError(f"unknown {key} key(s) {', '.join(bad)}")
                value = typ(**value)
            raw[key] = value
        if isinstance(raw.get("forget"), (int, str)):
            raw["forget"] = parse_classes(raw["forget"])
        rates = raw.get("finetune_lr_candidates")
        if isinstance(rates, (int, float, str)):  # a flag or run-config value: "0.1,0.03"
            try:
                raw["finetune_lr_candidates"] = [float(v) for v in str(rates).split(",")
                                                 if v.strip()]
            except ValueError:
                raise ValueError(f"finetune_lr_candidates must be rates like 0.1,0.03, got "
                                 f"{rates!r}") from None
        return cls(**raw)

    def uses_channels_last(self) -> bool:
        """The memory layout of every training run: ``channels_last`` or, when None, the
        faster one for the model on the device."""
        if self.channels_last is not None:
            return self.channels_last
        return prefers_channels_last(self.model, self.device)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> "ExperimentConfig":
        with open(path) as fh:
            return cls.from_dict(yaml.safe_load(fh) or {})

    def validate(self, num_classes: int | None = None) -> None:
        """Raise ``ValueError`` naming the bad value; ``num_classes`` checks ``forget``."""
        if self.dataset.lower() not in DATASETS:
            raise ValueError(f"unknown data set {self.dataset!r}; choose one of "
                             f"{', '.join(DATASETS)}")
        if self.model.lower() not in MODELS:
            raise ValueError(f"unknown model {self.model!r}; choose one of {', '.join(MODELS)}")
        if not self.forget:
            raise ValueError("forget must name at least one class")
        if len(set(self.forget)) != len(self.forget):
            raise ValueError(f"forget lists a class twice: {self.forget}")
        if num_classes is not None:
            bad = [c for c in self.forget if not 0 <= c < num_classes]
            if bad:
                raise ValueError(f"forget class(es) {bad} outside the label range "
                                 f"[0, {num_classes - 1}]")
            if len(self.forget) >= num_classes:
                raise ValueError("forget must leave at least one class")
        if self.rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {self.rounds}")
        if self.retrain_rounds is not None and self.retrain_rounds < 1:
            raise ValueError(f"retrain_rounds must be >= 1 or None, got {self.retrain_rounds}")
        if not 0.0 <= self.target_margin < 1.0:
            raise ValueError(f"target_margin must lie in [0, 1), got {self.target_margin}")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"patience must be >= 1 or None, got {self.patience}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must lie in [0, 1), got {self.val_fraction}")
        if not 0.0 <= self.strict_u <= 1.0:
            raise ValueError(f"strict_u must lie in [0, 1], got {self.strict_u}")
        if self.finetune_lr is not None and self.finetune_lr <= 0:
            raise ValueError(f"finetune_lr must be > 0 or None, got {self.finetune_lr}")
        bad_lr = [lr for lr in self.finetune_lr_candidates if not lr > 0]
        if bad_lr:
            raise ValueError(f"finetune_lr_candidates must be > 0, got {bad_lr}")
        if not 0.0 <= self.finetune_lr_tolerance < 1.0:
            raise ValueError(f"finetune_lr_tolerance must lie in [0, 1), got "
                             f"{self.finetune_lr_tolerance}")
        if self.target_r_acc is not None and not 0.0 < self.target_r_acc <= 1.0:
            raise ValueError(f"target_r_acc must lie in (0, 1], got {self.target_r_acc}")
        if self.dataset != "digits" and (self.data_root is None
                                         or not Path(self.data_root).is_dir()):
            raise FileNotFoundError(f"data root {self.data_root!r} for {self.dataset} is not "
                                    f"an existing folder (pass --data-root)")
        self.federation.validate()
        self.unlearning.validate()


def flat_name(section: str, name: str) -> str:
    """A section field's name among the flat keys of the CLI and the Flower run config:
    its own, but "unlearning_seed" for the unlearning seed ("seed" is the federation's)."""
    return "unlearning_seed" if (section, name) == ("unlearning", "seed") else name


def parse_classes(value: int | str | list[int]) -> list[int]:
    """Parse ``9`` or ``"0,5,9"`` into a list of class indices."""
    if isinstance(value, int):
        return [value]
    if isinstance(value, list):
        return [int(v) for v in value]
    try:
        return [int(v) for v in str(value).split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"forget must be class indices like 9 or 0,5,9, got {value!r}") from None


def prepare_data(cfg: ExperimentConfig) -> ImageData:
    """Load the configured data set (and subset), validating ``forget`` against its labels."""
    cfg.validate()
    data = load_dataset(cfg.dataset, cfg.data_root)
    cfg.validate(data.num_classes)
    if cfg.train_per_class or cfg.test_per_class:
        data = data.subset(cfg.train_per_class, cfg.test_per_class, seed=cfg.federation.seed)
    if cfg.val_fraction:
        data = data.with_validation(cfg.val_fraction, seed=VAL_SEED)
    return data


VAL_SEED = 0  # one validation split for every run, so all report on the same test images


def identity(cfg: ExperimentConfig) -> dict:
    """The settings named in a checkpoint's identity beside the data's fingerprint."""
    return {"dataset": cfg.dataset, "model": cfg.model, "train_per_class": cfg.train_per_class,
            "test_per_class": cfg.test_per_class, "val_fraction": cfg.val_fraction}


def new_model(cfg: ExperimentConfig, num_classes: int) -> torch.nn.Module:
    """A freshly initialized model, seeded so pretraining and retraining start alike."""
    torch.manual_seed(cfg.federation.seed)
    return build_model(cfg.model, num_classes)


def pretrain(cfg: ExperimentConfig, data: ImageData, checkpoint: Path,
             progress: bool = True, remote: Remote | None = None) -> Federation:
    """Federated training on all classes for ``cfg.rounds`` rounds, or to a plateau with
    ``cfg.patience`` (resumable)."""
    fed = Federation(new_model(cfg, data.num_classes), data, cfg.federation, forget=cfg.forget,
                     device=cfg.device, checkpoint=checkpoint, identity=identity(cfg),
                     channels_last=cfg.uses_channels_last(), progress=progress,
                     desc="pretrain", remote=remote, lr_rounds=cfg.rounds)
    fed.train_until(None, cfg.rounds, patience=cfg.patience)
    return fed


def retrain(cfg: ExperimentConfig, data: ImageData, checkpoint: Path, target: float,
            progress: bool = True, remote: Remote | None = None) -> tuple[Federation, TrainResult]:
    """The baseline: from scratch, remaining classes only, pretraining's recipe (its
    learning-rate schedule over ``cfg.rounds``), until the strict stop rule holds (R-set
    accuracy >= ``target`` on the decision split; U-set <= ``cfg.strict_u``, which a model
    that never saw the forgotten classes meets) or ``cfg.retrain_rounds`` rounds ran.
    Resumable; it reads no unlearning setting, so one retraining serves every arm and
    unlearning seed of a forget set."""
    cap = cfg.retrain_rounds or cfg.rounds
    fed = Federation(new_model(cfg, data.num_classes), data, cfg.federation, forget=cfg.forget,
                     exclude=cfg.forget, device=cfg.device, checkpoint=checkpoint,
                     identity={**identity(cfg), "target": target, "retrain_rounds": cap},
                     channels_last=cfg.uses_channels_last(),
                     progress=progress, desc="retrain", remote=remote, lr_rounds=cfg.rounds)
    result = fed.train_until(target, cap, max_u=cfg.strict_u)
    if not checkpoint.exists():  # target met before any round: keep the model all the same
        fed.save_checkpoint()
    return fed, result


def target_of(cfg: ExperimentConfig, pretrained: Federation) -> float:
    """The R-set accuracy that retraining and fine-tuning must reach: ``cfg.target_r_acc``,
    or the raw model's on the decision split minus ``cfg.target_margin``. It depends on the
    pretrained model only, so it is fixed before either run."""
    if cfg.target_r_acc is not None:
        return cfg.target_r_acc
    return pretrained.final_scores()[pretrained.decision_key] - cfg.target_margin


def finetune(cfg: ExperimentConfig, data: ImageData, model: torch.nn.Module,
             mask: ChannelMask | None, checkpoint: Path, target: float | None,
             max_rounds: int | None = None, progress: bool = True,
             desc: str = "fine-tune",
             remote: Remote | None = None) -> tuple[Federation, TrainResult]:
    """Federated training on the remaining classes until the strict stop rule holds
    (R-set accuracy >= ``target`` and U-set accuracy <= ``cfg.strict_u``, on the validation
    split when there is one), resumable; ``target=None`` trains for the whole budget.
    The learning rate is ``finetune_config``'s, constant; client sampling and batch order
    follow the unlearning seed, on the pretraining's partition."""
    ft_cfg = finetune_config(cfg)
    partition = None if ft_cfg.seed == cfg.federation.seed else fang_partition(
        data.train_y, ft_cfg.num_clients, ft_cfg.q, data.num_classes, cfg.federation.seed)
    ft = Federation(model, data, ft_cfg, forget=cfg.forget, exclude=cfg.forget, mask=mask,
                    partition=partition, device=cfg.device, checkpoint=checkpoint,
                    identity=identity(cfg),
                    channels_last=cfg.uses_channels_last(), progress=progress, desc=desc,
                    remote=remote)
    result = ft.train_until(target, max_rounds or cfg.finetune_rounds or cfg.rounds,
                            max_u=cfg.strict_u)
    if not checkpoint.exists():  # target met before any round: keep the model all the same
        ft.save_checkpoint()
    return ft, result


def finetune_config(cfg: ExperimentConfig) -> FedConfig:
    """The federation config of fine-tuning: ``finetune_lr`` (if set) as a constant rate,
    the random streams of the unlearning seed."""
    return replace(cfg.federation, lr=cfg.finetune_lr or cfg.federation.lr,
                   lr_schedule="constant", warmup_rounds=0,
                   seed=stream_seed(cfg.federation.seed, cfg.unlearning.seed))


def select_finetune_lr(cfg: ExperimentConfig, data: ImageData, pretrained: Federation,
                       progress: bool = True, remote: Remote | None = None) -> dict:
    """Fine-tuning's rate, chosen on the decision split before any arm runs: the raw model
    (no channel pruned: the ``none`` arm, which every arm shares as its starting point) is
    fine-tuned for the full ``finetune_rounds`` at each of ``cfg.finetune_lr_candidates``
    with the unlearning seed's draws; the largest rate whose final R-set accuracy lies
    within ``cfg.finetune_lr_tolerance`` of the best candidate's is chosen, for every arm.
    Returns the choice, the rule and each candidate's final accuracies."""
    if not cfg.finetune_lr_candidates:
        raise ValueError("select_finetune_lr needs finetune_lr_candidates, got none")
    key = pretrained.decision_key
    u_key = key.replace("r_acc", "u_acc")
    tried = []
    with tempfile.TemporaryDirectory() as tmp:
        for lr in sorted(set(cfg.finetune_lr_candidates), reverse=True):
            ft, _ = finetune(replace(cfg, finetune_lr=lr), data,
                             copy.deepcopy(pretrained.model), None, Path(tmp) / f"{lr}.pt",
                             None, progress=progress, desc=f"fine-tune at lr {lr}",
                             remote=remote)
            last = ft.history[-1]
            tried.append({"lr": lr, "rounds": ft.round, key: last[key], u_key: last[u_key]})
    best = max(t[key] for t in tried)
    chosen = max(t["lr"] for t in tried if t[key] >= best - cfg.finetune_lr_tolerance)
    return {"finetune_lr": chosen, "candidates": tried, "decided_on": key,
            "unlearning_seed": cfg.unlearning.seed,
            "rule": f"the largest rate whose R-set accuracy ({key}) after fine-tuning the "
                    f"unpruned raw model for {cfg.finetune_rounds or cfg.rounds} rounds lies "
                    f"within {cfg.finetune_lr_tolerance} of the best candidate's"}


def finetune_rate(cfg: ExperimentConfig, data: ImageData, pretrained: Federation,
                  path: Path, progress: bool = True, remote: Remote | None = None) -> dict:
    """``select_finetune_lr``'s choice, read from ``path`` when it was made for the same
    candidates, tolerance, rounds and pretrained weights, else made and written there (the
    workflow makes it once per pretraining, with unlearning seed 0's draws, for every arm
    and unlearning seed)."""
    key = {"candidates": sorted(set(cfg.finetune_lr_candidates), reverse=True),
           "tolerance": cfg.finetune_lr_tolerance, "rounds": cfg.finetune_rounds or cfg.rounds,
           "pretrained_weights": state_digest(pretrained.model)}
    if path.exists():
        chosen = json.loads(path.read_text())
        if chosen.get("identity") != key:
            raise ValueError(f"{path} was chosen for {chosen.get('identity')}, not for this "
                             f"run's {key}: delete it or pass the matching file")
        return chosen
    chosen = {**select_finetune_lr(cfg, data, pretrained, progress, remote), "identity": key}
    atomic_write_json(chosen, path)
    return chosen


def speedup(rounds_baseline: int | None, rounds_ours: int | None) -> float | None:
    """Retraining rounds over fine-tuning rounds: ``inf`` when fine-tuning needed no round
    (the pruned model already met the target); ``None`` when either never reached it, or
    when retraining needed no round (an untrained model meets the target: the raw model
    learned too little for a speedup to mean anything)."""
    if rounds_baseline is None or rounds_ours is None or rounds_baseline == 0:
        return None
    return math.inf if rounds_ours == 0 else rounds_baseline / rounds_ours


def speedup_definition(cfg: ExperimentConfig) -> str:
    """What ``speedup`` measures for ``cfg``, as ``metrics.json`` states it."""
    split = "validation" if cfg.val_fraction else "test (no validation split: decisions " \
        "and reports share it)"
    text = (f"rounds_retrain / rounds_finetune: the first round in which retraining from "
            f"scratch and fine-tuning each reach target_r_acc (R-set, {split} split), a "
            f"target fixed from the raw model before either runs; _strict: U-set <= strict_u "
            f"in that round too; inf: the pruned model met it before any round; null: "
            f"never met, or met by the untrained model (rounds_retrain 0). "
            f"recipe_ratio: rounds (the pretraining recipe's length) / "
            f"rounds_finetune_strict, the cost of rerunning the recipe")
    if cfg.federation.lr_schedule != "constant":
        text += (f". The {cfg.federation.lr_schedule} learning-rate schedule of retraining "
                 f"spans `rounds`, so its rounds to the target follow that length")
    return text


def prediction_shares(fed: Federation) -> dict[str, list[float]]:
    """Where ``fed.model``'s predictions of the U-set test images go (``u_test``): the share
    predicted as each class; with the R-set accuracy it shows a collapsed model, which
    sends nearly every image to one class."""
    data, in_u = fed.data, fed._in_u[fed.data.test_y]
    hist = prediction_histogram(model_logits(fed.model, data.test_x[in_u], fed.transform),
                                data.num_classes)
    return {"u_test": [round(float(v), 4) for v in hist]}


def prune(cfg: ExperimentConfig, pretrained: Federation, out: Path) -> dict:
    """Score and prune a copy of the pretrained model; cached in ``out/pruned.pt`` and
    reused only when the unlearning settings, the pretrained weights and the data match."""
    path = out / "pruned.pt"
    key = {**identity(cfg), "forget": list(cfg.forget), "unlearning": asdict(cfg.unlearning),
           "federation": identity_fields(cfg.federation), "data": pretrained.data.fingerprint,
           "pretrained_weights": state_digest(pretrained.model)}
    if path.exists():
        blob = load_blob(path, cfg.device)
        check_identity(path, key, blob.get("identity"))
        check_weights(path, blob["model"], blob.get("weights"))
        return blob
    pruned_model = pretrained.model
    original = copy.deepcopy(pruned_model)
    t0 = time.perf_counter()
    mask, per_class = prune_for_classes(pretrained, cfg.forget, cfg.unlearning)  # masks in place
    t_score = time.perf_counter() - t0
    after_mask = pretrained.scores()
    shares = prediction_shares(pretrained)
    retained = [c for c in range(pretrained.data.num_classes) if c not in cfg.forget]
    pretrained.model = bn_recall(pruned_model, training_images(
        pretrained.data, retained, BN_IMAGES, seed=cfg.federation.seed), pretrained.data, mask,
        precision=cfg.federation.precision)
    after_bn = pretrained.scores()  # running statistics of the retained classes, no step
    pretrained.model = original  # leave the pretrained federation as it was
    t0 = time.perf_counter()
    removed, keep = 0, mask
    if cfg.unlearning.apply == "remove":
        example = torch.zeros(1, 3, 32, 32, device=cfg.device)
        pruned_model, keep, removed = remove_channels(pruned_model, mask, example)
    blob = {"identity": key, "model": pruned_model, "weights": state_digest(pruned_model),
            "mask": keep.state(), "selected": mask.state(),
            "per_class": per_class, "metrics": after_mask, "metrics_bn": after_bn,
            "predictions": shares,
            "channels": {"total": count_conv_channels(original), "selected": len(mask),
                         "removed": removed, "masked": len(keep)},
            "macs": {"raw": conv_flops(original), "pruned": conv_flops(pruned_model)},
            "seconds": {"scoring": t_score, "pruning": time.perf_counter() - t0}}
    atomic_torch_save(blob, path)
    return blob


def run_experiment(cfg: ExperimentConfig, out: str | os.PathLike, progress: bool = True,
                   pretrained: str | os.PathLike | None = None,
                   retrained: str | os.PathLike | None = None,
                   remote: Remote | None = None,
                   rate: str | os.PathLike | None = None) -> dict:
    """Pretrain, unlearn, fine-tune and retrain; write and return ``out/metrics.json``.

    The target is fixed from the raw model (``target_of``); retraining and fine-tuning stop
    by the strict rule; ``rounds_*`` is the paper's rule (first round with R-set accuracy
    >= target), ``rounds_*_strict`` the strict one, ``speedup_definition`` says what the
    ratios mean. ``finetuned_at_rule`` holds the accuracies in the paper's stop round,
    ``finetuned`` those after the last round run; ``pruned_bn`` the pruned model's after
    re-estimating BatchNorm statistics on retained-class training images (no step),
    ``pruned_predictions`` where the pruned model's test predictions go.
    Every phase checkpoints into ``out``, so an interrupted run resumes where it stopped.
    ``pretrained`` names a finished pretraining checkpoint to use instead of
    ``out/pretrain.pt`` (it is read, never written, when it is complete); ``retrained``
    likewise names a retraining checkpoint instead of ``out/retrain.pt``, and ``rate`` a
    ``finetune_rate`` file instead of ``out/finetune_rate.json`` (fine-tuning's rate, when
    ``finetune_lr`` is None and there are ``finetune_lr_candidates``). With ``remote``
    every round trains on clients outside this process (the Flower app); this process
    keeps the data only for its test and validation splits.
    """
    data = prepare_data(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(asdict(cfg), out / "config.json")

    pre = pretrain(cfg, data, Path(pretrained) if pretrained else out / "pretrain.pt", progress,
                   remote)
    raw = pre.final_scores()
    decide = pre.decision_key  # the stop rules read the validation split when there is one
    target = target_of(cfg, pre)
    re, re_result = retrain(cfg, data, Path(retrained) if retrained else out / "retrain.pt",
                            target, progress, remote)
    retrained = re.final_scores()

    selection = None
    if cfg.finetune_lr is None and cfg.finetune_lr_candidates:
        selection = finetune_rate(cfg, data, pre, Path(rate) if rate else
                                  out / "finetune_rate.json", progress, remote)
        cfg = replace(cfg, finetune_lr=selection["finetune_lr"])
    pruned = prune(cfg, pre, out)
    ft, result = finetune(cfg, data, pruned["model"], ChannelMask(pruned["mask"]),
                          out / "finetune.pt", target, progress=progress, remote=remote)
    finetuned = ft.final_scores()
    at_rule = next((h for h in ft.history if h["round"] == result.rounds_to_target), None)

    rounds_retrain = rounds_for(re.history, target, decide)
    strict_retrain = re_result.rounds_strict
    metrics = {
        "raw": raw, "pruned": pruned["metrics"], "pruned_bn": pruned["metrics_bn"],
        "pruned_predictions": pruned["predictions"],
        "finetuned_at_rule": None if at_rule is None else
        {k: v for k, v in at_rule.items() if k.endswith("_acc")},
        "finetuned": finetuned, "retrained": retrained,
        "target_r_acc": target, "target_rule": "given" if cfg.target_r_acc is not None
        else f"raw {decide} - {cfg.target_margin}",
        "decided_on": decide, "decisions_share_test_split": data.val_y is None,
        "speedup_definition": speedup_definition(cfg),
        "finetune_lr": finetune_config(cfg).lr, "finetune_lr_selection": selection,
        "rounds_pretrain": pre.round,
        "rounds_finetune": result.rounds_to_target, "rounds_finetune_strict": result.rounds_strict,
        "rounds_finetune_run": result.rounds_run,
        "rounds_finetune_cap": cfg.finetune_rounds or cfg.rounds,
        "rounds_retrain": rounds_retrain, "rounds_retrain_strict": strict_retrain,
        "rounds_retrain_run": re.round, "rounds_retrain_cap": cfg.retrain_rounds or cfg.rounds,
        "speedup": speedup(rounds_retrain, result.rounds_to_target),
        "speedup_strict": speedup(strict_retrain, result.rounds_strict),
        "recipe_ratio": speedup(cfg.rounds, result.rounds_strict),
        "channels": pruned["channels"], "macs": pruned["macs"],
        "seconds": {"pretrain": pre.elapsed, "scoring": pruned["seconds"]["scoring"],
                    "pruning": pruned["seconds"]["pruning"], "finetune": ft.elapsed,
                    "retrain": re.elapsed},
        "per_class": pruned["per_class"],
        "history": {"pretrain": pre.history, "finetune": ft.history, "retrain": re.history},
        "config": asdict(cfg),
        "pretrained_checkpoint": str(pre.checkpoint),
        "retrained_checkpoint": str(re.checkpoint),
    }
    atomic_write_json(metrics, out / "metrics.json")
    return metrics


@dataclass
class Run:
    """A finished unlearning run: its config, data, metrics and the models to compare."""

    path: Path
    cfg: ExperimentConfig
    data: ImageData
    metrics: dict
    raw: torch.nn.Module
    unlearned: torch.nn.Module  # pruned channels stay zero in its weights
    retrained: torch.nn.Module
    mask: ChannelMask | None = None  # the channels pruned for ``unlearned``


def load_run(run_dir: str | os.PathLike) -> Run:
    """Load a ``run_experiment`` output folder: raw, unlearned (fine-tuned) and retrained."""
    run_dir = Path(run_dir)
    metrics_path = run_dir / "metrics.json"
    if not metrics_path.exists():
        raise FileNotFoundError(f"{metrics_path} not found: is {run_dir} a finished run?")
    try:
        metrics = json.loads(metrics_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{metrics_path} is truncated or corrupted ({err})") from err
    cfg = ExperimentConfig.from_dict(metrics["config"])
    data = prepare_data(cfg)

    def load(model: torch.nn.Module, path: str | os.PathLike) -> torch.nn.Module:
        blob = load_blob(path, cfg.device)
        load_state(model, blob["model"], path)
        return model.to(cfg.device).eval()

    pruned = load_blob(run_dir / "pruned.pt", cfg.device)
    return Run(run_dir, cfg, data, metrics,
               raw=load(new_model(cfg, data.num_classes), metrics["pretrained_checkpoint"]),
               unlearned=load(pruned["model"], run_dir / "finetune.pt"),
               retrained=load(new_model(cfg, data.num_classes),
                              metrics.get("retrained_checkpoint", run_dir / "retrain.pt")),
               mask=ChannelMask(pruned["mask"]))
