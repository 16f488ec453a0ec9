import copy
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from fedunlearn_lib import FedConfig, Federation, build_model
from fedunlearn_lib.data import BatchTransform
from fedunlearn_lib.federated import (_native_bf16, autocast, client_generator, plateaued,
                                      resolve_precision, rounds_for)


def _params(model):
    return torch.cat([t.flatten().float() for t in model.state_dict().values()])


def test_fedavg_one_client_one_epoch_equals_centralized_sgd(small_digits):
    d = small_digits
    cfg = FedConfig(num_clients=1, clients_per_round=1, local_epochs=1, batch_size=16,
                    lr=0.05, momentum=0.9, weight_decay=5e-4, seed=3)
    model = build_model("resnet20", 10)
    ref = copy.deepcopy(model)
    fed = Federation(model, d, cfg, partition=[torch.arange(len(d.train_y))], progress=False)
    fed.run_round()

    # one epoch of plain centralized SGD, same data order and augmentation draws
    opt = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    t = BatchTransform(d.mean, d.std, padding=d.crop_padding, flip=d.flip)
    g = client_generator(3, 1, 0)
    ref.train()
    perm = torch.randperm(len(d.train_y), generator=g)
    for s in range(0, len(perm), 16):
        idx = perm[s:s + 16]
        loss = F.cross_entropy(ref(t(d.train_x[idx], g, True)), d.train_y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.allclose(_params(fed.model), _params(ref), atol=1e-5)


def test_fedavg_weights_clients_by_sample_count(small_digits):
    d = small_digits
    cfg = FedConfig(num_clients=2, clients_per_round=2, batch_size=8, lr=0.01, seed=0,
                    augment=False)
    idx = torch.arange(len(d.train_y))
    parts = [idx[:60], idx[60:240]]
    model = build_model("resnet20", 10)
    fed = Federation(copy.deepcopy(model), d, cfg, partition=parts, progress=False)
    fed.run_round()
    solo = []
    for c, p in enumerate(parts):
        other = FedConfig(**{**cfg.__dict__, "num_clients": 1, "clients_per_round": 1})
        f = Federation(copy.deepcopy(model), d, other, partition=[p], progress=False)
        # client c of the 2-client run used generator (seed, 1, c)
        f.clients[0].client_id = c
        f.run_round()
        solo.append(_params(f.model))
    expected = (60 * solo[0] + 180 * solo[1]) / 240
    got = _params(fed.model)
    floats = torch.tensor([v.is_floating_point() for v in model.state_dict().values()
                           for _ in range(v.numel())])
    assert torch.allclose(got[floats], expected[floats], atol=1e-5)


@pytest.mark.parametrize("algorithm", ["fedavg", "fedsgd"])
def test_bf16_round_autocasts_and_stays_near_the_fp32_round(small_digits, algorithm):
    cfg = FedConfig(algorithm=algorithm, num_clients=10, clients_per_round=2, batch_size=16,
                    lr=0.05, seed=1)
    model = build_model("resnet20", 10)
    feds = {p: Federation(copy.deepcopy(model), small_digits, replace(cfg, precision=p),
                          progress=False) for p in ("fp32", "bf16")}
    for fed in feds.values():
        fed.run_round()
    start, full, half = _params(model), _params(feds["fp32"].model), _params(feds["bf16"].model)
    step, gap = (full - start).norm(), (half - full).norm()
    assert 0 < gap < 0.2 * step  # bfloat16 arithmetic took part, the update is the same
    acc = feds["bf16"].evaluate()
    assert 0.0 <= acc["r_acc"] <= 1.0 and acc["u_acc"] is None


@pytest.mark.parametrize("amx, avx512_bf16, expected", [
    (True, False, "bf16"), (False, True, "bf16"), (False, False, "fp32")])
def test_auto_precision_is_bf16_only_where_the_cpu_computes_it_natively(
        monkeypatch, amx, avx512_bf16, expected):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    _native_bf16.cache_clear()  # the capability is cached per device
    assert resolve_precision("auto", "cpu") == expected
    assert resolve_precision("fp32", "cpu") == "fp32" and resolve_precision("bf16", "cpu") == "bf16"
    with autocast("cpu", "auto"):
        assert torch.is_autocast_enabled("cpu") is (expected == "bf16")
    _native_bf16.cache_clear()  # leave the real capability to the other tests


def test_fedsgd_is_one_server_step_on_the_averaged_gradient(small_digits):
    d = small_digits
    cfg = FedConfig(algorithm="fedsgd", num_clients=10, clients_per_round=10, lr=0.1,
                    momentum=0.0, weight_decay=0.0, augment=False, batch_size=64)
    model = build_model("resnet20", 10)
    ref = copy.deepcopy(model)
    fed = Federation(model, d, cfg, progress=False)
    fed.run_round()
    # the same step computed centrally: mean loss over all clients' samples, BN in train
    # mode per client batch, so compare against per-client gradient sum
    t = BatchTransform(d.mean, d.std, padding=d.crop_padding, flip=d.flip)
    ref.train()
    total = sum(len(c) for c in fed.clients)
    for c in fed.clients:
        for s in range(0, len(c), 64):
            x, y = c.x[s:s + 64], c.y[s:s + 64]
            if len(y) < 2:
                continue
            (F.cross_entropy(ref(t(x)), y, reduction="sum") / total).backward()
    with torch.no_grad():
        for p in ref.parameters():
            p -= 0.1 * p.grad
    params = lambda m: torch.cat([p.flatten() for p in m.parameters()])
    assert torch.allclose(params(fed.model), params(ref), atol=1e-5)


def test_resume_after_interrupt_gives_same_weights(small_digits, tmp_path):
    d = small_digits
    cfg = FedConfig(num_clients=10, clients_per_round=3, batch_size=16, checkpoint_every=2)
    torch.manual_seed(0)
    a = Federation(build_model("resnet20", 10), d, cfg, forget=[9],
                   checkpoint=tmp_path / "a.pt", progress=False)
    a.train_until(None, 4)

    torch.manual_seed(0)
    b = Federation(build_model("resnet20", 10), d, cfg, forget=[9],
                   checkpoint=tmp_path / "b.pt", progress=False)
    b.train_until(None, 2)  # "interrupted" after the round-2 checkpoint
    torch.manual_seed(123)  # other starting weights: not the run that wrote b.pt
    with pytest.raises(ValueError, match="start_weights"):
        Federation(build_model("resnet20", 10), d, cfg, forget=[9],
                   checkpoint=tmp_path / "b.pt", progress=False)
    torch.manual_seed(0)  # a fresh process of the same run starts from the same weights
    c = Federation(build_model("resnet20", 10), d, cfg, forget=[9],
                   checkpoint=tmp_path / "b.pt", progress=False)
    assert c.round == 2
    c.train_until(None, 4)
    assert torch.equal(_params(a.model), _params(c.model))
    assert [h["r_acc"] for h in a.history] == [h["r_acc"] for h in c.history]


def test_checkpoint_of_another_model_is_rejected(small_digits, tmp_path):
    cfg = FedConfig(num_clients=10, clients_per_round=2)
    f = Federation(build_model("resnet20", 10), small_digits, cfg, progress=False,
                   checkpoint=tmp_path / "c.pt")
    f.save_checkpoint()
    with pytest.raises(ValueError, match="start_weights"):
        Federation(build_model("vgg11", 10), small_digits, cfg, progress=False,
                   checkpoint=tmp_path / "c.pt")


def test_checkpoint_of_other_data_or_settings_is_refused_naming_the_keys(small_digits,
                                                                         tmp_path):
    cfg = FedConfig(num_clients=10, clients_per_round=2)
    torch.manual_seed(0)
    f = Federation(build_model("resnet20", 10), small_digits, cfg, progress=False,
                   checkpoint=tmp_path / "c.pt", identity={"train_per_class": 30})
    f.save_checkpoint()
    other = small_digits.subset(20, 10, seed=0)
    torch.manual_seed(0)
    with pytest.raises(ValueError, match=r"data: .*train_per_class: 20 now, 30 in the file"):
        Federation(build_model("resnet20", 10), other, cfg, progress=False,
                   checkpoint=tmp_path / "c.pt", identity={"train_per_class": 20})
    torch.manual_seed(0)
    with pytest.raises(ValueError, match=r"federation.lr: 0.05 now, 0.1 in the file"):
        Federation(build_model("resnet20", 10), small_digits, replace(cfg, lr=0.05),
                   progress=False, checkpoint=tmp_path / "c.pt",
                   identity={"train_per_class": 30})


def test_truncated_checkpoint_names_the_file(small_digits, tmp_path):
    path = tmp_path / "c.pt"
    path.write_bytes(b"PK\x03\x04 not a whole file")
    with pytest.raises(ValueError, match=r"c\.pt is truncated or corrupted"):
        Federation(build_model("resnet20", 10), small_digits,
                   FedConfig(num_clients=10, clients_per_round=2), progress=False,
                   checkpoint=path)


def test_exclude_removes_classes_and_forget_splits_the_test_set(small_digits):
    cfg = FedConfig(num_clients=10, clients_per_round=2)
    f = Federation(build_model("resnet20", 10), small_digits, cfg, forget=[0, 9],
                   exclude=[0, 9], progress=False)
    labels = torch.cat([c.y for c in f.clients])
    assert not ((labels == 0) | (labels == 9)).any()
    assert len(labels) == 8 * 30
    assert int(f._in_u[small_digits.test_y].sum()) == 20


def test_train_until_stops_at_target(small_digits):
    cfg = FedConfig(num_clients=10, clients_per_round=2)
    f = Federation(build_model("resnet20", 10), small_digits, cfg, progress=False)
    res = f.train_until(0.0, 5)
    assert res.rounds_to_target == 0 and res.rounds_run == 0


def test_rounds_for_paper_and_strict_rules():
    hist = [{"round": 0, "r_acc": 0.2, "u_acc": 0.9}, {"round": 1, "r_acc": 0.6, "u_acc": 0.3},
            {"round": 2, "r_acc": 0.5, "u_acc": 0.0}, {"round": 3, "r_acc": 0.7, "u_acc": 0.005}]
    assert rounds_for(hist, 0.55) == 1
    assert rounds_for(hist, 0.55, max_u=0.01) == 3
    assert rounds_for(hist, 0.8) is None
    assert rounds_for(hist, 0.25, key="u_acc") == 0


def test_strict_rule_trains_on_until_the_u_set_is_forgotten(small_digits):
    cfg = FedConfig(num_clients=10, clients_per_round=5, batch_size=16)
    f = Federation(build_model("resnet20", 10), small_digits, cfg, forget=[9], exclude=[9],
                   progress=False)
    res = f.train_until(0.0, 3, max_u=-1.0)  # a U-set bound no round can meet
    assert res.rounds_to_target == 0 and res.rounds_strict is None and res.rounds_run == 3


@pytest.mark.parametrize("field,value,msg", [
    ("clients_per_round", 11, "clients_per_round=11"),
    ("q", -0.1, "-0.1"),
    ("algorithm", "fedprox", "fedprox.*fedavg"),
    ("precision", "fp16", "fp16.*fp32, bf16, auto"),
])
def test_bad_federation_config(small_digits, field, value, msg):
    cfg = FedConfig(num_clients=10, clients_per_round=2)
    setattr(cfg, field, value)
    with pytest.raises(ValueError, match=msg):
        Federation(build_model("resnet20", 10), small_digits, cfg, progress=False)


def test_plateau_rule_counts_rounds_since_the_best_value():
    hist = [{"round": r, "val_r_acc": a} for r, a in enumerate([0.1, 0.5, 0.4, 0.5, 0.45])]
    assert plateaued(hist, "val_r_acc", 3)  # best (first 0.5) at round 1, now round 4
    assert not plateaued(hist, "val_r_acc", 4)
    assert not plateaued(hist[:1], "val_r_acc", 1)


def test_decisions_read_the_validation_split_when_there_is_one(small_digits):
    fed = Federation(build_model("resnet20", 10), small_digits.with_validation(0.5),
                     FedConfig(num_clients=10, clients_per_round=2), forget=[9],
                     progress=False)
    assert fed.decision_key == "val_r_acc"
    assert {"u_acc", "r_acc", "val_u_acc", "val_r_acc"} <= set(fed.scores())
    res = fed.train_until(None, 50, patience=1)  # stops at the first round without gain
    assert res.rounds_run < 50 and plateaued(res.history, "val_r_acc", 1)
    hist = [{"round": 0, "val_r_acc": 0.9, "val_u_acc": 0.5},
            {"round": 1, "val_r_acc": 0.9, "val_u_acc": 0.0}]
    assert rounds_for(hist, 0.8, "val_r_acc", max_u=0.01) == 1


def test_cosine_schedule_with_warmup_over_a_runs_rounds():
    cfg = FedConfig(lr=0.1, lr_schedule="cosine", warmup_rounds=2)
    lrs = [cfg.lr_at(r, 10) for r in range(1, 11)]
    assert lrs[:3] == pytest.approx([0.1 / 3, 0.2 / 3, 0.1])  # warm-up, the cosine's start
    assert all(a > b for a, b in zip(lrs[2:], lrs[3:])) and 0 < lrs[-1] < 0.01
    assert cfg.lr_at(7, None) == 0.1  # no horizon (fine-tuning): constant
    assert FedConfig(lr=0.1, lr_schedule="constant").lr_at(9, 10) == 0.1
    with pytest.raises(ValueError, match="'step'"):
        FedConfig(lr_schedule="step").validate()


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_one_warmup_round_warms_up(schedule, small_digits):
    """warmup_rounds=1 runs round 1 below the full rate (it used to be lr itself, a no-op),
    and the round's training uses that rate."""
    cfg = FedConfig(num_clients=10, clients_per_round=2, lr=0.1, lr_schedule=schedule,
                    warmup_rounds=1)
    assert cfg.lr_at(1, 10) == pytest.approx(0.05) and cfg.lr_at(2, 10) == pytest.approx(0.1)
    fed = Federation(build_model("resnet20", 10), small_digits, cfg, progress=False,
                     lr_rounds=10)
    assert fed.round_config(1).lr == pytest.approx(0.05)
    without = Federation(build_model("resnet20", 10), small_digits,
                         replace(cfg, warmup_rounds=0), progress=False, lr_rounds=10)
    assert without.round_config(1).lr == pytest.approx(0.1)


def test_pretraining_follows_the_schedule_and_records_its_horizon(small_digits, tmp_path):
    """Round r trains with lr_at(r, lr_rounds); a checkpoint of another horizon is refused."""
    cfg = FedConfig(num_clients=10, clients_per_round=2, lr=0.1, lr_schedule="cosine")
    f = Federation(build_model("resnet20", 10), small_digits, cfg, progress=False,
                   lr_rounds=4, checkpoint=tmp_path / "c.pt")
    assert [f.round_config(r).lr for r in (1, 4)] == [cfg.lr_at(1, 4), cfg.lr_at(4, 4)]
    f.train_until(None, 1)
    with pytest.raises(ValueError, match="lr_rounds"):
        Federation(build_model("resnet20", 10), small_digits, cfg, progress=False,
                   lr_rounds=8, checkpoint=tmp_path / "c.pt")


def test_rounds_are_evaluated_on_validation_and_reported_rounds_on_test(small_digits):
    """With a validation split every round records validation accuracy; the test split is
    evaluated in round 0, in the paper's stop round and in the last round only."""
    data = small_digits.with_validation(0.5, seed=0)
    cfg = FedConfig(num_clients=10, clients_per_round=5, lr=0.05, batch_size=16)
    fed = Federation(build_model("resnet20", 10), data, cfg, forget=[9], exclude=[9],
                     progress=False)
    res = fed.train_until(0.0, 3)  # met in round 0: nothing to train
    assert res.rounds_to_target == 0 and res.rounds_run == 0
    target = 0.3
    res = fed.train_until(target, 4, max_u=-1.0)  # the strict rule never holds: 4 rounds
    hist = res.history
    assert all("val_r_acc" in h for h in hist)
    tested = [h["round"] for h in hist if "r_acc" in h]
    paper = res.rounds_to_target
    assert tested == sorted({0, 4} | ({paper} if paper else set()))
