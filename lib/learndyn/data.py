"""Data sets: synthetic tasks, scikit-learn's digits (shipped with the package, offline), and a
reader for the MNIST / Fashion-MNIST IDX files for readers who have them.

Nothing here downloads anything at run time: :func:`load_idx_dataset` reads files the reader put in a
folder, and checks them against the known SHA-256 sums when asked to.
"""

from __future__ import annotations

import gzip
import hashlib
import struct
from pathlib import Path

import numpy as np
import torch

from .backend import as_tensor, placement, resolve_device

_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
              0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (gzipped or not) into a numpy array of its stored shape and type."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"path={str(path)!r} is not a file")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] not in _IDX_TYPES:
        raise ValueError(f"path={str(path)!r} is not an IDX file (bad magic number {raw[:4]!r})")
    kind, ndim = _IDX_TYPES[raw[2]], raw[3]
    shape = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=kind, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"path={str(path)!r}: header says shape {shape}, file holds {data.size} values")
    return data.reshape(shape)


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write ``array`` (uint8) as an IDX file; gzipped when the name ends in ``.gz``."""
    array = np.asarray(array)
    if array.dtype != np.uint8:
        raise ValueError(f"array has dtype {array.dtype}; write_idx writes uint8 data")
    payload = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload += array.tobytes()
    path = Path(path)
    path.write_bytes(gzip.compress(payload) if path.suffix == ".gz" else payload)


def load_idx_dataset(folder: str | Path, split: str = "train", *,
                     sha256: dict[str, str] | None = None, device=None,
                     dtype=None) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST or Fashion-MNIST from the four standard IDX files in ``folder``.

    ``split`` is ``"train"`` or ``"test"`` (``t10k`` files). Returns images scaled to [0, 1] and
    flattened, shape (n, 784), and integer labels. ``sha256`` maps file names to the SHA-256 sums
    published with the data set; a file whose sum differs is rejected.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split={split!r} must be 'train' or 'test'")
    prefix = "train" if split == "train" else "t10k"
    folder = Path(folder)
    arrays = []
    for part in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        candidates = [folder / f"{prefix}-{part}.gz", folder / f"{prefix}-{part}"]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            raise ValueError(f"folder={str(folder)!r} has no {prefix}-{part}[.gz]")
        if sha256 is not None:
            _verify(path, sha256)
        arrays.append(read_idx(path))
    images, labels = arrays
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels in {folder}")
    device, dtype = placement(device, dtype, folder, split)
    x = torch.as_tensor(images.reshape(images.shape[0], -1) / 255.0, device=device, dtype=dtype)
    return x, torch.as_tensor(labels.astype(np.int64), device=device)


def _verify(path: Path, sha256: dict[str, str]) -> None:
    expected = sha256.get(path.name)
    if expected is None:
        raise ValueError(f"sha256 has no checksum for {path.name}; it names {sorted(sha256)}")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != expected.lower():
        raise ValueError(f"{path} has SHA-256 {digest}, expected {expected}")


def load_digits(classes=None, *, scale: bool = True, device=None,
                dtype=None) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 8x8 digits (1797 images, shipped with scikit-learn, no download).

    ``classes`` keeps only those digits (in the given order); ``scale`` maps pixels from 0..16 to
    [0, 1]. Returns inputs of shape (n, 64) and integer labels.
    """
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    x, y = bunch.data, bunch.target
    if classes is not None:
        classes = list(classes)
        unknown = [c for c in classes if c not in range(10)]
        if unknown or not classes:
            raise ValueError(f"classes={classes!r} must be digits 0..9")
        keep = np.isin(y, classes)
        x, y = x[keep], y[keep]
    if scale:
        x = x / 16.0
    device = resolve_device(device)
    return (as_tensor(x, "digits", device=device, dtype=dtype),
            torch.as_tensor(y, dtype=torch.long, device=device))


def train_test_split(x: torch.Tensor, y: torch.Tensor, test_fraction: float = 0.25, *,
                     generator: torch.Generator | None = None):
    """A seeded random split into ``(x_train, y_train, x_test, y_test)``, on the device of ``x``.

    The split depends on the generator's stream: the same seed on the CPU and on CUDA gives different
    splits (their generators differ), each reproducible on its own device.
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction={test_fraction!r} must lie in (0, 1)")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x has {x.shape[0]} rows but y has {y.shape[0]}")
    # the permutation is drawn on the generator's device (a CUDA generator draws on CUDA)
    device = generator.device if generator is not None else x.device
    order = torch.randperm(x.shape[0], generator=generator, device=device).to(x.device)
    n_test = max(1, int(round(test_fraction * x.shape[0])))
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


__all__ = [
    "read_idx", "write_idx", "load_idx_dataset", "load_digits", "train_test_split"
]
