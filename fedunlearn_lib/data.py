"""Data sets as uint8 tensors, decoded once; batch-wise normalization and augmentation.

Supported names: ``cifar10``, ``cifar100`` (official pickles, downloaded through torchvision
when absent), ``imagefolder`` (``root/train/<class>/*`` and ``root/test/<class>/*``) and
``digits`` (scikit-learn's bundled 8x8 digits upsampled to 32x32 RGB; needs no download).
"""
from __future__ import annotations

import hashlib
import os
import pickle
from dataclasses import dataclass, fields, replace
from functools import cached_property
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .io import atomic_torch_save, digest, load_blob

DATASETS = ("cifar10", "cifar100", "imagefolder", "digits")
_CIFAR = {
    "cifar10": dict(folder="cifar-10-batches-py", train=[f"data_batch_{i}" for i in range(1, 6)],
                    test=["test_batch"], meta="batches.meta", names="label_names",
                    labels="labels", archive="cifar-10-python.tar.gz",
                    url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                    mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616)),
    "cifar100": dict(folder="cifar-100-python", train=["train"], test=["test"], meta="meta",
                     names="fine_label_names", labels="fine_labels",
                     archive="cifar-100-python.tar.gz",
                     url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                     mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762)),
}


@dataclass(frozen=True)
class ImageData:
    """A classification data set held as NCHW uint8 tensors plus int64 labels."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: tuple[str, ...]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    val_x: torch.Tensor | None = None  # validation split (decisions), held out of test
    val_y: torch.Tensor | None = None
    crop_padding: int = 4  # training augmentation that suits the images: random crop
    flip: bool = True  # after this much zero padding, and a horizontal flip or not

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to(self, device: torch.device | str) -> "ImageData":
        """Move all tensors to ``device`` (images stay uint8)."""
        moved = {k: getattr(self, k).to(device) for k in ("train_x", "train_y", "test_x",
                                                          "test_y", "val_x", "val_y")
                 if getattr(self, k) is not None}
        return replace(self, **moved)

    def with_validation(self, fraction: float, seed: int = 0) -> "ImageData":
        """Move a class-balanced ``fraction`` of every class's test images (at random, fixed
        ``seed``) into a validation split; the rest stays the test split."""
        if not 0.0 < fraction < 1.0:
            raise ValueError(f"validation fraction must lie in (0, 1), got {fraction!r}")
        if self.val_y is not None:
            raise ValueError("this data set already has a validation split")
        g = torch.Generator().manual_seed(seed)
        y = self.test_y.cpu()
        val = []
        for c in range(self.num_classes):
            idx = torch.nonzero(y == c).flatten()
            val.append(idx[torch.randperm(len(idx), generator=g)[:int(fraction * len(idx))]])
        is_val = torch.zeros(len(y), dtype=torch.bool)
        is_val[torch.cat(val)] = True
        is_val = is_val.to(self.test_y.device)
        return replace(self, test_x=self.test_x[~is_val], test_y=self.test_y[~is_val],
                       val_x=self.test_x[is_val], val_y=self.test_y[is_val])

    def subset(self, train_per_class: int | None = None, test_per_class: int | None = None,
               seed: int = 0) -> "ImageData":
        """A class-balanced random subset (``None`` keeps a split whole)."""
        g = torch.Generator().manual_seed(seed)

        def pick(y: torch.Tensor, k: int | None) -> torch.Tensor:
            if k is None:
                return torch.arange(len(y))
            idx = [torch.nonzero(y.cpu() == c).flatten() for c in range(self.num_classes)]
            idx = [i[torch.randperm(len(i), generator=g)[:k]] for i in idx]
            return torch.cat(idx).sort().values

        tr, te = pick(self.train_y, train_per_class), pick(self.test_y, test_per_class)
        return replace(self, train_x=self.train_x[tr], train_y=self.train_y[tr],
                       test_x=self.test_x[te], test_y=self.test_y[te])

    @cached_property
    def fingerprint(self) -> str:
        """Digest of every image, label, class name and normalization: the data's identity."""
        return digest([self.classes, self.mean, self.std, self.train_x, self.train_y,
                       self.test_x, self.test_y, self.val_x, self.val_y, self.crop_padding,
                       self.flip])


def load_dataset(name: str, root: str | os.PathLike | None = None, *, download: bool = True,
                 cache_dir: str | os.PathLike | None = None) -> ImageData:
    """Load a data set by name as uint8 tensors (see module docstring for the names)."""
    key = name.lower()
    if key == "digits":
        return _load_digits()
    if key not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}")
    if root is None:
        raise ValueError(f"data set {name!r} needs a data root (--data-root)")
    root = Path(root)
    if key == "imagefolder":
        return _load_imagefolder(root, cache_dir)
    return _load_cifar(key, root, download)


def _load_digits() -> ImageData:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = torch.from_numpy(d.images).float().unsqueeze(1) / 16.0  # N,1,8,8 in [0,1]
    x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    x = (x.clamp(0, 1) * 255).round().to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    y = torch.from_numpy(d.target).long()
    tr, te = train_test_split(np.arange(len(y)), test_size=0.25, random_state=0,
                              stratify=d.target)
    tr, te = torch.from_numpy(np.sort(tr)), torch.from_numpy(np.sort(te))
    xf = x[tr].float() / 255
    mean = tuple(xf.mean(dim=(0, 2, 3)).tolist())
    std = tuple(xf.std(dim=(0, 2, 3)).tolist())
    # digits are not mirror-symmetric and fill the frame: no flip, a 2-pixel crop
    return ImageData(x[tr], y[tr], x[te], y[te], tuple(str(i) for i in range(10)), mean, std,
                     crop_padding=2, flip=False)


def _read_cifar_pickles(key: str, root: Path) -> ImageData:
    spec = _CIFAR[key]
    base = root / spec["folder"]

    def read(files: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = [], []
        for f in files:
            with open(base / f, "rb") as fh:
                entry = pickle.load(fh, encoding="latin1")
            xs.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(entry[spec["labels"]], dtype=np.int64))
        return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))

    with open(base / spec["meta"], "rb") as fh:
        classes = tuple(pickle.load(fh, encoding="latin1")[spec["names"]])
    trx, try_ = read(spec["train"])
    tex, tey = read(spec["test"])
    return ImageData(trx, try_, tex, tey, classes, spec["mean"], spec["std"])


def _load_cifar(key: str, root: Path, download: bool) -> ImageData:
    if not cifar_present(key, root):
        if not download:
            raise FileNotFoundError(f"{key}: no {_CIFAR[key]['folder']}/ under {root}; "
                                    f"{where_to_put(key, root)}, or pass another data root")
        fetch_cifar(key, root)
    return _read_cifar_pickles(key, root)


def cifar_present(key: str, root: str | os.PathLike) -> bool:
    """Whether ``root`` holds the extracted official pickles of ``key`` (cifar10 or
    cifar100) that ``load_dataset`` reads."""
    spec = _CIFAR[key]
    base = Path(root) / spec["folder"]
    return all((base / f).is_file() for f in [*spec["train"], *spec["test"], spec["meta"]])


def where_to_put(key: str, root: str | os.PathLike) -> str:
    """What to put where when ``key`` (cifar10 or cifar100) cannot be downloaded."""
    spec = _CIFAR[key]
    return (f"put {spec['archive']} (the official archive, {spec['url']}) or its extracted "
            f"{spec['folder']}/ folder in {root}")


def fetch_cifar(key: str, root: str | os.PathLike) -> Path:
    """Put ``key`` (cifar10 or cifar100) under ``root`` as ``load_dataset`` reads it,
    creating ``root``: torchvision extracts the official archive when it lies in ``root``
    already and downloads it there otherwise, checking its md5 either way. Returns the
    folder; raises ``RuntimeError`` saying what to put where when that fails (no network)."""
    spec, root = _CIFAR[key], Path(root)
    if not cifar_present(key, root):
        import torchvision

        cls = torchvision.datasets.CIFAR10 if key == "cifar10" else torchvision.datasets.CIFAR100
        try:
            cls(str(root), train=True, download=True)
        except Exception as err:  # network errors come in many types
            raise RuntimeError(
                f"{key}: download into {root} failed ({type(err).__name__}: {err}). Without "
                f"network, {where_to_put(key, root)}, or pass the data root that holds it"
            ) from err
        if not cifar_present(key, root):
            raise RuntimeError(f"{key}: after the download {root} still lacks "
                               f"{spec['folder']}/; {where_to_put(key, root)}")
    return root / spec["folder"]


def _load_imagefolder(root: Path, cache_dir: str | os.PathLike | None) -> ImageData:
    if not (root / "train").is_dir() or not (root / "test").is_dir():
        raise FileNotFoundError(
            f"imagefolder: {root} must contain train/<class>/* and test/<class>/* folders")
    classes = tuple(sorted(p.name for p in (root / "train").iterdir() if p.is_dir()))

    def decode() -> dict:
        trx, try_ = _decode_split(root / "train", classes)
        tex, tey = _decode_split(root / "test", classes)
        xf = trx[:: max(1, len(trx) // 10000)].float() / 255
        mean = tuple(xf.mean(dim=(0, 2, 3)).tolist())
        std = tuple(xf.std(dim=(0, 2, 3)).tolist())
        data = ImageData(trx, try_, tex, tey, classes, mean, std)
        return {f.name: getattr(data, f.name) for f in fields(data)}

    return ImageData(**_cached("imagefolder", root, ("train", "test"), cache_dir, decode))


def load_client_folder(root: str | os.PathLike, classes: tuple[str, ...],
                       cache_dir: str | os.PathLike | None = None) -> tuple[torch.Tensor,
                                                                           torch.Tensor]:
    """One client's own images, ``root/<class>/*``, labelled by their index in ``classes``
    (the federation's class list; a client may lack some classes). A folder whose name is
    not in ``classes`` raises ``ValueError`` naming it. Decoded once, then cached."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"client data folder {root} does not exist")
    odd = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name not in classes)
    if odd:
        raise ValueError(f"client data folder {root} has class folder(s) {', '.join(odd)} "
                         f"outside the federation's classes ({', '.join(classes)})")

    def decode() -> dict:
        x, y = _decode_split(root, classes, missing_ok=True)
        return {"x": x, "y": y}

    blob = _cached("client", root, (".",), cache_dir, decode)
    return blob["x"], blob["y"]


def write_client_folders(data: ImageData, parts: list[torch.Tensor],
                         out: str | os.PathLike) -> list[Path]:
    """Write each client's training images as ``out/<client>/<class>/<index>.png`` (the
    layout ``load_client_folder`` reads); returns the client folders."""
    from PIL import Image

    out = Path(out)
    folders = []
    for cid, idx in enumerate(parts):
        folder = out / str(cid)
        for i in idx.tolist():
            target = folder / data.classes[int(data.train_y[i])] / f"{i}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(data.train_x[i].permute(1, 2, 0).cpu().numpy()).save(target)
        folders.append(folder)
    return folders


def _cached(kind: str, root: Path, splits: tuple[str, ...],
            cache_dir: str | os.PathLike | None, decode: Callable[[], dict]) -> dict:
    """``decode()``'s result for the images under ``root``, cached on disk and reused while
    the file listing (paths, sizes, times) of ``splits`` is unchanged."""
    cache = Path(cache_dir or os.environ.get("FEDUNLEARN_CACHE",
                                             Path.home() / ".cache" / "fedunlearn"))
    name = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:12]
    cache_file = cache / f"{kind}-{name}.pt"
    listing = _listing_digest(root, splits)
    if cache_file.exists():
        blob = load_blob(cache_file)
        if blob.get("listing") == listing:  # the same files, sizes and times: still valid
            return blob["data"]
    data = decode()
    atomic_torch_save({"listing": listing, "data": data}, cache_file)
    return data


def _listing_digest(root: Path, splits: tuple[str, ...] = ("train", "test")) -> str:
    """Digest of every file's relative path, size and modification time under ``root``'s
    ``splits`` folders."""
    entries = []
    for split in splits:
        for dirpath, _, files in os.walk(root / split):
            for f in files:
                st = os.stat(os.path.join(dirpath, f))
                entries.append((os.path.relpath(os.path.join(dirpath, f), root), st.st_size,
                                st.st_mtime_ns))
    return digest(sorted(entries))


def _decode_split(folder: Path, classes: tuple[str, ...],
                  missing_ok: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    from PIL import Image
    from tqdm.auto import tqdm

    files = [(f, c) for c, name in enumerate(classes)
             if not (missing_ok and not (folder / name).is_dir())
             for f in sorted((folder / name).iterdir()) if f.is_file()]
    if not files:
        raise FileNotFoundError(f"imagefolder: no images under {folder}")
    x = np.empty((len(files), 32, 32, 3), dtype=np.uint8)
    for i, (f, _) in enumerate(tqdm(files, desc=f"decoding {folder.name}", leave=False)):
        with Image.open(f) as im:
            im = im.convert("RGB")
            if im.size != (32, 32):
                im = im.resize((32, 32))
            x[i] = np.asarray(im)
    y = torch.tensor([c for _, c in files], dtype=torch.long)
    return torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(), y


class BatchTransform:
    """Normalize (and optionally augment) whole uint8 batches on their device.

    Augmentation is a random crop after ``padding`` pixels of zero padding and, with
    ``flip``, a random horizontal flip (``ImageData.crop_padding`` and ``flip`` say which
    suits a data set).
    """

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...],
                 device: torch.device | str = "cpu", channels_last: bool = False,
                 padding: int = 4, flip: bool = True) -> None:
        self.padding, self.flip = padding, flip
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1) * 255
        self.inv_std = 1.0 / (torch.tensor(std, device=device).view(1, -1, 1, 1) * 255)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None,
                 augment: bool = False) -> torch.Tensor:
        if augment:
            x = random_crop_flip(x, generator, self.padding, self.flip)
        out = (x.float() - self.mean) * self.inv_std
        return out.contiguous(memory_format=self.memory_format)


def to_device(t: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """``t.to(device)``; a host tensor bound for a GPU goes through pinned memory without
    blocking (a copy from pageable memory waits for the GPU's queue to drain, every step)."""
    device = torch.device(device)
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def random_crop_flip(x: torch.Tensor, generator: torch.Generator | None = None,
                     padding: int = 4, flip: bool = True) -> torch.Tensor:
    """Random crop after zero padding plus (with ``flip``) a random horizontal flip, for a
    whole NCHW batch."""
    n, _, h, w = x.shape
    dev = x.device
    gen_dev = generator.device if generator is not None else torch.device("cpu")
    oy = to_device(torch.randint(0, 2 * padding + 1, (n,), generator=generator,
                                 device=gen_dev), dev)
    ox = to_device(torch.randint(0, 2 * padding + 1, (n,), generator=generator,
                                 device=gen_dev), dev)
    mirror = to_device(torch.rand(n, generator=generator, device=gen_dev), dev) < 0.5 if flip \
        else torch.zeros(n, dtype=torch.bool, device=dev)
    xp = F.pad(x, (padding,) * 4)
    rows = oy[:, None] + torch.arange(h, device=dev)  # n,h
    cols = ox[:, None] + torch.arange(w, device=dev)  # n,w
    cols = torch.where(mirror[:, None], cols.flip(1), cols)
    idx_n = torch.arange(n, device=dev)[:, None, None]
    out = xp.permute(0, 2, 3, 1)[idx_n, rows[:, :, None], cols[:, None, :]]  # n,h,w,c
    return out.permute(0, 3, 1, 2)
