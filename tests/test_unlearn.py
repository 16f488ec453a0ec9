"""Who runs the local proc: participants drawn among all clients (the paper) or holders."""
from dataclasses import replace

import pytest
import torch

from fedunlearn_lib import FedConfig, Federation, build_model
from fedunlearn_lib.procs import aggregate, local_proc
from fedunlearn_lib.pruning import layer_scores, select_channels
from fedunlearn_lib.unlearn import UnlearnConfig, prune_for_classes, score_participants


def _fed(data, seed: int = 0, q: float = 1.0) -> Federation:
    torch.manual_seed(0)
    cfg = FedConfig(num_clients=20, clients_per_round=5, q=q, seed=seed)
    return Federation(build_model("resnet20", 10), data, cfg, forget=[9], progress=False)


def test_at_q1_participants_hold_several_classes_and_idf_matters(small_digits):
    fed = _fed(small_digits)  # q = 1: every client holds one class only
    chosen = score_participants(fed, 9, 10, "all")
    uploads = [local_proc(fed.model, fed.clients[c], fed.transform, 10) for c in chosen]
    acts, counts = aggregate(uploads)
    assert counts[9] > 0 and int((counts > 0).sum()) >= 3  # not the target class alone
    tfidf = select_channels(layer_scores(acts, 9), 0.1)
    tf = select_channels({n: a[9] / a[9].sum() for n, a in acts.items()}, 0.1)
    assert tfidf.pairs() != tf.pairs()  # the selection is not TF alone


def test_holders_option_draws_only_clients_with_the_class(small_digits):
    fed = _fed(small_digits)
    holders = {c.client_id for c in fed.clients if bool((c.y == 9).any())}
    chosen = score_participants(fed, 9, 10, "holders")
    assert set(chosen) <= holders
    _, counts = aggregate([local_proc(fed.model, fed.clients[c], fed.transform, 10)
                           for c in chosen])
    assert int((counts > 0).sum()) == 1  # at q = 1 only the target's row is non-zero
    mask, info = prune_for_classes(fed, [9], UnlearnConfig(ratio=0.1, score_from="holders",
                                                           score_clients=2))
    assert set(info[0]["clients"]) <= holders and len(mask) > 0


def test_participants_without_the_class_give_an_error_naming_the_fixes(small_digits):
    for seed in range(20):  # find a draw of one client that lacks class 9 (q = 1)
        fed = _fed(small_digits, seed)
        (c,) = score_participants(fed, 9, 1, "all")
        if not bool((fed.clients[c].y == 9).any()):
            break
    with pytest.raises(ValueError, match=rf"clients \[{c}\]\) hold no image of class 9.*"
                                         r"score_clients.*score_from='holders'"):
        prune_for_classes(fed, [9], UnlearnConfig(ratio=0.1, score_clients=1))


def test_participants_are_deterministic_and_bad_option_is_named(small_digits):
    fed = _fed(small_digits, q=0.1)
    assert score_participants(fed, 9, 5, "all") == score_participants(fed, 9, 5, "all")
    with pytest.raises(ValueError, match="score_from 'everyone'"):
        UnlearnConfig(score_from="everyone").validate()
    with pytest.raises(ValueError, match="idf_threshold 'row'"):
        replace(UnlearnConfig(), idf_threshold="row").validate()


def test_unlearning_seed_redraws_participants_and_fine_tuning_but_not_the_partition(small_digits):
    from fedunlearn_lib.experiment import ExperimentConfig, finetune_config
    fed = _fed(small_digits, q=0.1)
    draws = {tuple(score_participants(fed, 9, 5, "all", seed=s)) for s in range(6)}
    assert len(draws) > 1  # unlearning seeds draw other local-proc participants
    assert score_participants(fed, 9, 5, "all", seed=0) == score_participants(fed, 9, 5, "all")
    cfg = ExperimentConfig(federation=FedConfig(seed=3), unlearning=UnlearnConfig(seed=0))
    assert finetune_config(cfg).seed == 3  # seed 0: the federation's own streams
    other = finetune_config(replace(cfg, unlearning=UnlearnConfig(seed=1))).seed
    assert other != 3 and other == finetune_config(
        replace(cfg, unlearning=UnlearnConfig(seed=1))).seed
    with pytest.raises(ValueError, match="unlearning seed must be >= 0, got -1"):
        UnlearnConfig(seed=-1).validate()


def test_arms_are_unlearning_configs(small_digits):
    from fedunlearn_lib.unlearn import ARMS, arm_config
    fed = _fed(small_digits, q=0.1)
    base = UnlearnConfig(ratio=0.1)
    mask, info = prune_for_classes(fed, [9], arm_config(base, "none"))
    assert len(mask) == 0 and info[0]["clients"] == []  # no upload, nothing pruned
    mask, info = prune_for_classes(fed, [9], arm_config(base, "l1"))
    assert info[0]["clients"] == [] and len(mask) > 0
    # Li et al.: the same share of every layer
    assert all(len(j) == max(1, round(0.1 * m.out_channels)) for n, j in mask.channels.items()
               for name, m in fed.model.named_modules() if name == n)
    a = prune_for_classes(_fed(small_digits, q=0.1), [9],
                          arm_config(base, "random"))[0]
    b = prune_for_classes(_fed(small_digits, q=0.1), [9],
                          replace(arm_config(base, "random"), seed=1))[0]
    assert len(a) == len(b) and a.pairs() != b.pairs()  # the unlearning seed redraws
    assert arm_config(base, "tfidf-lowest-channel").idf_threshold == "channel"
    assert set(ARMS) >= {"none", "random", "l1", "tfidf-lowest", "tfidf-highest"}
    with pytest.raises(ValueError, match="unknown arm 'l2'"):
        arm_config(base, "l2")
    with pytest.raises(ValueError, match="unknown scores 'grad'"):
        UnlearnConfig(scores="grad").validate()
