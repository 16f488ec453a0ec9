"""TFIDFImportance: torch-pruning removes the channels select_channels picks; the library
page's examples run as written."""
import re
from pathlib import Path

import pytest
import torch
import torch_pruning as tp
from torch import nn

from fedunlearn_lib import TFIDFImportance, build_model, local_proc, select_channels
from fedunlearn_lib.data import BatchTransform
from fedunlearn_lib.federated import ClientData
from fedunlearn_lib.procs import aggregate

DOC = Path(__file__).resolve().parents[1] / "docs" / "library.md"
EXAMPLE = torch.zeros(1, 3, 32, 32)
# ResNet-20's convs whose output channels are their own: each block's first conv. The stem
# conv1, every block's conv2 and the projection shortcuts of a stage add into one residual
# stream, so torch-pruning can only prune those together (one group per stage) while
# select_channels ranks each conv on its own: no exact comparison exists for them, and
# TFIDFImportance(coupled="skip") leaves their groups to torch-pruning as None.
UNCOUPLED = [f"layer{s}.{b}.conv1" for s in (1, 2, 3) for b in range(3)]


def uploads_of(model, data, clients=3, drop=None):
    """Local procs on ``clients`` strided shares of ``data``'s training split (without
    class ``drop`` when given)."""
    transform = BatchTransform(data.mean, data.std)
    x, y = data.train_x, data.train_y
    if drop is not None:
        x, y = x[y != drop], y[y != drop]
    return [local_proc(model, ClientData(c, x[c::clients], y[c::clients]), transform,
                       data.num_classes) for c in range(clients)]


def prune_with(model, imp, **kw):
    """Run one torch-pruning step; return {root layer name: removed channels}."""
    names = {m: n for n, m in model.named_modules()}
    pruner = tp.pruner.BasePruner(model, EXAMPLE, importance=imp, **kw)
    removed = {}
    for group in pruner.step(interactive=True):
        dep, idxs = group[0]
        if len(idxs):
            removed[names[dep.target.module]] = sorted(int(i) for i in idxs)
        group.prune()
    return removed


@pytest.fixture(scope="module")
def setup(small_digits):
    torch.manual_seed(0)
    model = build_model("resnet20", 10).eval()  # untrained: scores are still distinct
    return model, uploads_of(model, small_digits)


@pytest.mark.parametrize("target", [9, 3])
def test_global_pruning_removes_what_select_channels_picks(setup, target):
    model, uploads = setup
    model = build_model("resnet20", 10)
    model.load_state_dict(setup[0].state_dict())
    model.eval()
    imp = TFIDFImportance(model, uploads, target)
    uncoupled = {n: imp.scores[n] for n in UNCOUPLED}
    assert sum(len(s) for s in uncoupled.values()) == 336
    want = select_channels(uncoupled, 0.05).channels  # the paper's global top 5 %
    got = prune_with(model, imp, pruning_ratio=0.05, global_pruning=True)
    assert got == want
    assert sum(len(v) for v in got.values()) == 17  # round(0.05 * 336) = 336 - int(319.2)
    # the coupled convs and the classifier are untouched; the model still runs
    convs = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    for n, m in convs.items():
        if n not in UNCOUPLED:
            assert m.out_channels == len(imp.scores[n]), n
    assert model.fc.out_features == 10
    assert model(EXAMPLE).shape == (1, 10)
    # a second step on the thinned model must not reuse the stale scores
    pruned_layer = next(iter(got))
    group = tp.DependencyGraph().build_dependency(model, example_inputs=EXAMPLE) \
        .get_pruning_group(convs[pruned_layer], tp.prune_conv_out_channels,
                           idxs=list(range(convs[pruned_layer].out_channels)))
    with pytest.raises(ValueError, match=re.escape(pruned_layer)):
        imp(group)


def test_layer_pruning_matches_select_channels_per_layer(setup):
    """Per layer, at a ratio where both count alike (1/16 of 16, 32, 64 channels)."""
    model, uploads = setup
    model = build_model("resnet20", 10)
    model.load_state_dict(setup[0].state_dict())
    model.eval()
    imp = TFIDFImportance(model, uploads, 9)
    want = select_channels({n: imp.scores[n] for n in UNCOUPLED}, 1 / 16, scope="layer")
    got = prune_with(model, imp, pruning_ratio=1 / 16, global_pruning=False)
    assert got == want.channels
    assert [len(v) for v in got.values()] == [1] * 3 + [2] * 3 + [4] * 3


def test_sign_grouping_and_options(setup):
    model, uploads = setup
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=EXAMPLE)
    names = {m: n for n, m in model.named_modules()}
    groups = {names[g[0].dep.target.module]: g
              for g in dg.get_all_groups(root_module_types=[nn.Conv2d, nn.Linear])}
    high = TFIDFImportance(model, uploads, 9)
    low = TFIDFImportance(model, uploads, 9, direction="lowest")
    mean = TFIDFImportance(model, uploads, 9, coupled="mean")
    layer = "layer2.1.conv1"
    assert torch.equal(high(groups[layer]), -high.scores[layer])  # pruned first: highest
    assert torch.equal(low(groups[layer]), low.scores[layer])
    assert high(groups["fc"]) is None  # not a scored conv
    stage2 = ["layer2.0.shortcut.0", "layer2.0.conv2", "layer2.1.conv2", "layer2.2.conv2"]
    root = names[groups["layer2.0.shortcut.0"][0].dep.target.module]
    assert root in stage2
    assert high(groups[root]) is None  # a residual stream: skipped by default
    expect = -torch.stack([mean.scores[n].double() for n in stage2]).mean(0).float()
    assert torch.allclose(mean(groups[root]), expect)
    # a hand-made group of a few channels gets one score per channel, in its order
    sub = dg.get_pruning_group(model.get_submodule(layer), tp.prune_conv_out_channels,
                               idxs=[5, 2, 9])
    assert torch.equal(high(sub), -high.scores[layer][[5, 2, 9]])
    # the scores are the library's: layer_scores on the aggregated uploads
    acts, counts = aggregate(uploads)
    again = TFIDFImportance.from_activations(model, acts, counts, 9)
    assert all(torch.equal(again.scores[n], high.scores[n]) for n in high.scores)


def test_bad_arguments_name_the_value(setup, small_digits):
    model, uploads = setup
    without_9 = uploads_of(model, small_digits, drop=9)
    with pytest.raises(ValueError, match=r"target class 9 is not in the uploads"):
        TFIDFImportance(model, without_9, 9)
    with pytest.raises(ValueError, match=r"target class 10 .*\[0, 10\)"):
        TFIDFImportance(model, uploads, 10)
    with pytest.raises(ValueError, match="'sideways'"):
        TFIDFImportance(model, uploads, 9, direction="sideways")
    with pytest.raises(ValueError, match="'sum'"):
        TFIDFImportance(model, uploads, 9, coupled="sum")
    with pytest.raises(ValueError, match="'cosine'"):
        TFIDFImportance(model, uploads, 9, idf_threshold="cosine")
    with pytest.raises(ValueError, match="'conv1', which is not a conv layer"):
        TFIDFImportance(build_model("vgg11", 10), uploads, 9)


def test_library_doc_examples_run():
    """docs/library.md's python blocks, run in order as one script (the first is the
    dozen-line unlearning example, the second the torch-pruning one)."""
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) >= 2
    assert len(blocks[0].strip().splitlines()) <= 16
    ns: dict = {}
    exec(compile(blocks[0], f"{DOC}:block1", "exec"), ns)
    mask, ft = ns["mask"], ns["ft"]
    assert len(mask) == round(0.05 * 784)  # ResNet-20's 784 conv channels
    assert set(ft.evaluate()) == {"u_acc", "r_acc"}
    exec(compile(blocks[1], f"{DOC}:block2", "exec"), ns)
    assert ns["model"](torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert sum(m.out_channels for m in ns["model"].modules() if isinstance(m, nn.Conv2d)) < 784
