import pickle

import numpy as np
import pytest
import torch

from fedunlearn_lib.data import BatchTransform, load_dataset, random_crop_flip


def test_digits_is_32x32_rgb_uint8_with_fixed_split(digits):
    assert digits.train_x.shape[1:] == (3, 32, 32) and digits.train_x.dtype == torch.uint8
    assert len(digits.train_y) + len(digits.test_y) == 1797
    assert digits.num_classes == 10
    again = load_dataset("digits")
    assert torch.equal(again.test_y, digits.test_y)


def test_subset_is_class_balanced(digits):
    s = digits.subset(20, 5, seed=1)
    assert torch.bincount(s.train_y).tolist() == [20] * 10
    assert torch.bincount(s.test_y).tolist() == [5] * 10


def _write_cifar100_fixture(root, n_train=20, n_test=10):
    base = root / "cifar-100-python"
    base.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        entry = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 "fine_labels": [i % 100 for i in range(n)],
                 "coarse_labels": [i % 20 for i in range(n)]}
        with open(base / split, "wb") as fh:
            pickle.dump(entry, fh)
    with open(base / "meta", "wb") as fh:
        pickle.dump({"fine_label_names": [f"c{i}" for i in range(100)],
                     "coarse_label_names": [f"s{i}" for i in range(20)]}, fh)
    return base


def test_cifar100_reads_official_pickle_layout(tmp_path):
    base = _write_cifar100_fixture(tmp_path)
    d = load_dataset("cifar100", tmp_path, download=False)
    assert d.num_classes == 100 and d.classes[3] == "c3"
    assert d.train_x.shape == (20, 3, 32, 32) and d.test_x.shape == (10, 3, 32, 32)
    with open(base / "train", "rb") as fh:
        raw = pickle.load(fh)["data"][1].reshape(3, 32, 32)
    assert torch.equal(d.train_x[1], torch.from_numpy(raw))
    assert d.train_y[:3].tolist() == [0, 1, 2]


def test_cifar_missing_without_download_says_where_to_put_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar-10-python.tar.gz"):
        load_dataset("cifar10", tmp_path, download=False)


def test_cifar_failed_download_says_where_to_put_it(tmp_path, monkeypatch):
    import torchvision

    def offline(*a, **k):
        raise OSError("network unreachable")
    monkeypatch.setattr(torchvision.datasets.CIFAR100, "download", offline)
    with pytest.raises(RuntimeError, match=r"put cifar-100-python.tar.gz .* in " + str(tmp_path)):
        load_dataset("cifar100", tmp_path)


def test_imagefolder_decodes_and_caches(tmp_path):
    from PIL import Image

    for split in ("train", "test"):
        for c, name in enumerate(("cat", "dog")):
            (tmp_path / split / name).mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (32, 32), (c * 100, i * 10, 7)).save(
                    tmp_path / split / name / f"{i}.png")
    cache = tmp_path / "cache"
    d = load_dataset("imagefolder", tmp_path, cache_dir=cache)
    assert d.classes == ("cat", "dog") and d.train_y.tolist() == [0, 0, 0, 1, 1, 1]
    assert d.train_x[4, :, 0, 0].tolist() == [100, 10, 7]
    assert len(list(cache.glob("*.pt"))) == 1
    assert torch.equal(load_dataset("imagefolder", tmp_path, cache_dir=cache).train_x,
                       d.train_x)


def test_bad_names_and_roots(tmp_path):
    with pytest.raises(ValueError, match="mnist.*cifar10"):
        load_dataset("mnist", tmp_path)
    with pytest.raises(FileNotFoundError, match="train/<class>"):
        load_dataset("imagefolder", tmp_path / "nowhere")


def test_crop_flip_moves_pixels_consistently():
    x = torch.arange(2 * 3 * 32 * 32, dtype=torch.int32).reshape(2, 3, 32, 32).to(torch.uint8)
    g = torch.Generator().manual_seed(0)
    out = random_crop_flip(x, g)
    assert out.shape == x.shape and out.dtype == torch.uint8
    g2 = torch.Generator().manual_seed(0)
    assert torch.equal(random_crop_flip(x, g2), out)
    # padding=0 and forced no-flip: identity
    ident = random_crop_flip(x, torch.Generator().manual_seed(1), padding=0)
    assert all(torch.equal(ident[i], x[i]) or torch.equal(ident[i], x[i].flip(2))
               for i in range(2))


def test_transform_normalizes():
    t = BatchTransform((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    x = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    assert torch.allclose(t(x), torch.full((1, 3, 2, 2), 2.0))


def test_validation_split_is_disjoint_class_balanced_and_fixed(digits):
    d = digits.subset(None, 10, seed=0)
    v = d.with_validation(0.5, seed=0)
    assert len(v.val_y) == 50 and len(v.test_y) == 50
    assert torch.bincount(v.val_y, minlength=10).tolist() == [5] * 10
    assert torch.bincount(v.test_y, minlength=10).tolist() == [5] * 10
    pool = {bytes(x.numpy()) for x in d.test_x}
    val, test = {bytes(x.numpy()) for x in v.val_x}, {bytes(x.numpy()) for x in v.test_x}
    assert not val & test and val | test <= pool  # disjoint halves of the old test split
    assert torch.equal(d.with_validation(0.5, seed=0).val_x, v.val_x)
    assert v.fingerprint != d.fingerprint
    with pytest.raises(ValueError, match="got 1.0"):
        d.with_validation(1.0)
