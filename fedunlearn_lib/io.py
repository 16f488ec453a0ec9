"""Atomic writes (write to a temporary file beside the target, then rename over it), content
digests, and the identity check that keeps a cached result from being reused under another
configuration."""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch

_UMASK = os.umask(0)  # read the process umask once (setting it is the only way to read it)
os.umask(_UMASK)


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp)`` on a temporary path beside ``path``, then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` that never leaves a half-written file at ``path``."""
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def atomic_write_json(obj: Any, path: str | os.PathLike) -> Path:
    """Write ``obj`` as indented JSON, atomically."""
    def write(tmp: str) -> None:
        with open(tmp, "w") as fh:
            json.dump(obj, fh, indent=2, sort_keys=False)
            fh.write("\n")
    return atomic_write(path, write)


def load_blob(path: str | os.PathLike, device: str | torch.device = "cpu") -> Any:
    """``torch.load`` of one of our own files, with an error naming the file when it is
    missing, truncated or not a torch file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        return torch.load(path, map_location=device, weights_only=False)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as err:
        raise ValueError(f"{path} is truncated or corrupted ({type(err).__name__}: {err}); "
                         f"delete it and rerun") from err


def digest(items: Iterable[Any]) -> str:
    """SHA-256 (16 hex digits) of a sequence of tensors (their bytes) and other values (their
    ``repr``); ``None`` counts as a value."""
    h = hashlib.sha256()
    for item in items:
        if isinstance(item, torch.Tensor):
            h.update(item.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy()
                     .tobytes())
        else:
            h.update(repr(item).encode())
        h.update(b"|")
    return h.hexdigest()[:16]


def state_digest(module: torch.nn.Module | Mapping[str, torch.Tensor]) -> str:
    """Digest of a model's (or a state dict's) parameters and buffers, names included."""
    state = module.state_dict() if isinstance(module, torch.nn.Module) else module
    return digest(x for name in sorted(state) for x in (name, state[name]))


def check_weights(path: str | os.PathLike, weights: torch.nn.Module | Mapping[str, torch.Tensor],
                  recorded: str | None) -> None:
    """Raise ``ValueError`` naming ``path`` when the loaded weights do not match the digest
    saved with them (``torch.load`` does not notice bytes changed in place)."""
    if recorded is not None and state_digest(weights) != recorded:
        raise ValueError(f"{path} is truncated or corrupted (its weights do not match the "
                         f"digest saved with them); delete it and rerun")


def identity_diff(ours: Mapping[str, Any], theirs: Mapping[str, Any] | None,
                  prefix: str = "") -> list[str]:
    """Human-readable differences between two identity dicts (nested dicts by key path)."""
    if theirs is None:
        return ["no identity recorded (written by an older version)"]
    out = []
    for key in sorted(set(ours) | set(theirs)):
        a, b = ours.get(key, "<absent>"), theirs.get(key, "<absent>")
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += identity_diff(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} now, {b!r} in the file")
    return out


def check_identity(path: str | os.PathLike, ours: Mapping[str, Any],
                   theirs: Mapping[str, Any] | None) -> None:
    """Raise ``ValueError`` naming every key whose value differs from the cached file's."""
    diff = identity_diff(ours, theirs)
    if diff:
        raise ValueError(f"{path} was computed under another configuration ("
                         + "; ".join(diff) + "); delete it or use another output folder")


def repo_root(start: str | os.PathLike | None = None) -> Path:
    """The repository root: the nearest folder at or above ``start`` (default: the working
    directory) that holds the workflow's ``Snakefile``; ``start`` itself when none does.

    The notebooks call it first and change into it, so that the paths they are given
    (``data``, ``results/<profile>/...``, ``figures/quick``) mean the same under papermill,
    which the workflow runs in the root, and under JupyterLab or nbval, whose kernels start
    in ``notebooks/``."""
    here = Path(start if start is not None else os.getcwd()).resolve()
    return next((p for p in (here, *here.parents) if (p / "Snakefile").is_file()), here)
