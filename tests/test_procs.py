import pytest
import torch

from fedunlearn_lib import FedConfig, Federation, aggregate, build_model, local_proc
from fedunlearn_lib.procs import Upload


@pytest.fixture(scope="module")
def fed(small_digits):
    return Federation(build_model("resnet20", 10), small_digits,
                      FedConfig(num_clients=10, clients_per_round=2), progress=False)


def test_local_proc_shapes_counts_and_values(fed):
    c = fed.clients[0]
    up = local_proc(fed.model, c, fed.transform, 10)
    assert up.counts.tolist() == torch.bincount(c.y, minlength=10).float().tolist()
    assert set(up.means) == {n for n, m in fed.model.named_modules()
                             if isinstance(m, torch.nn.Conv2d)}
    assert up.means["layer3.2.conv2"].shape == (10, 64)
    assert (up.means["conv1"] >= 0).all()
    # check one entry by hand: class of the first sample, stem conv
    cls = int(c.y[0])
    with torch.no_grad():
        fed.model.eval()
        feats = torch.relu(fed.model.conv1(fed.transform(c.x[c.y == cls]))).mean((2, 3))
    assert torch.allclose(up.means["conv1"][cls], feats.mean(0), atol=1e-5)


def test_aggregate_is_count_weighted_and_absent_classes_do_not_nan():
    a = Upload(0, {"l": torch.tensor([[1.0, 1.0], [0.0, 0.0]])}, torch.tensor([2.0, 0.0]))
    b = Upload(1, {"l": torch.tensor([[4.0, 0.0], [3.0, 1.0]])}, torch.tensor([1.0, 5.0]))
    acts, counts = aggregate([a, b])
    assert counts.tolist() == [3.0, 5.0]
    assert torch.allclose(acts["l"], torch.tensor([[2.0, 2 / 3], [3.0, 1.0]]))
    c = Upload(2, {"l": torch.zeros(2, 2)}, torch.tensor([0.0, 0.0]))
    assert torch.isfinite(aggregate([c])[0]["l"]).all()


@pytest.mark.parametrize("means,counts,msg", [
    ({"x": torch.ones(2, 2)}, [1.0, 1.0], "client 7: unexpected or missing layer.*x"),
    ({"l": torch.ones(2, 3)}, [1.0, 1.0], "client 7, layer l: shape"),
    ({"l": torch.tensor([[1.0, float("nan")], [0.0, 0.0]])}, [1.0, 1.0], "client 7, layer l: NaN"),
    ({"l": torch.tensor([[1.0, float("inf")], [0.0, 0.0]])}, [1.0, 1.0], "client 7, layer l: NaN or Inf"),
    ({"l": -torch.ones(2, 2)}, [1.0, 1.0], "client 7, layer l: negative"),
    ({"l": torch.ones(2, 2)}, [1.0, -1.0], "client 7: counts"),
])
def test_malformed_uploads_are_rejected_naming_client_and_layer(means, counts, msg):
    good = Upload(0, {"l": torch.ones(2, 2)}, torch.tensor([1.0, 1.0]))
    bad = Upload(7, means, torch.tensor(counts))
    with pytest.raises(ValueError, match=msg):
        aggregate([good, bad])
