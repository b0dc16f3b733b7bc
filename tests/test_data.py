import gzip

import numpy as np
import pytest
import torch

from learndyn.backend import make_generator
from learndyn.data import load_digits, load_idx_dataset, read_idx, train_test_split, write_idx

CPU = torch.device("cpu")  # the split is tested on the CPU


def write_small_mnist(folder, n=7, gz=True):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    suffix = ".gz" if gz else ""
    for prefix in ("train", "t10k"):
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels)
    return images, labels


@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip(tmp_path, gz):
    images, labels = write_small_mnist(tmp_path, gz=gz)
    suffix = ".gz" if gz else ""
    assert np.array_equal(read_idx(tmp_path / f"train-images-idx3-ubyte{suffix}"), images)
    x, y = load_idx_dataset(tmp_path, "test", device="cpu")
    assert x.shape == (7, 784) and x.dtype == torch.float64
    assert torch.allclose(x, torch.as_tensor(images.reshape(7, -1) / 255.0))
    assert y.tolist() == labels.tolist()


def test_idx_header_written_by_hand_is_read(tmp_path):
    """A file written byte by byte in the published IDX layout, independent of write_idx."""
    payload = bytes([0, 0, 0x08, 2]) + (2).to_bytes(4, "big") + (3).to_bytes(4, "big") + bytes(range(6))
    path = tmp_path / "tiny-idx2-ubyte.gz"
    path.write_bytes(gzip.compress(payload))
    assert read_idx(path).tolist() == [[0, 1, 2], [3, 4, 5]]


def test_idx_checksums(tmp_path):
    write_small_mnist(tmp_path)
    import hashlib

    sums = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in tmp_path.iterdir()}
    load_idx_dataset(tmp_path, "train", sha256=sums)
    sums["train-labels-idx1-ubyte.gz"] = "0" * 64
    with pytest.raises(ValueError, match="SHA-256"):
        load_idx_dataset(tmp_path, "train", sha256=sums)


def test_idx_bad_input(tmp_path):
    with pytest.raises(ValueError, match="split="):
        load_idx_dataset(tmp_path, "validation")
    with pytest.raises(ValueError, match="has no train-images"):
        load_idx_dataset(tmp_path, "train")
    bad = tmp_path / "bad.idx"
    bad.write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(bad)
    truncated = tmp_path / "short.idx"
    truncated.write_bytes(bytes([0, 0, 8, 1]) + (10).to_bytes(4, "big") + bytes(3))
    with pytest.raises(ValueError, match="header says shape"):
        read_idx(truncated)


def test_digits_offline_and_filtered():
    x, y = load_digits([0, 1], device="cpu")
    assert x.shape[1] == 64 and set(y.tolist()) == {0, 1}
    assert 0.0 <= x.min() and x.max() <= 1.0
    with pytest.raises(ValueError, match="classes="):
        load_digits([11])


def test_train_test_split_is_seeded_and_disjoint():
    x = torch.arange(40, dtype=torch.float64).reshape(20, 2)
    y = torch.arange(20)
    a = train_test_split(x, y, 0.25, generator=make_generator(0, device=CPU))
    b = train_test_split(x, y, 0.25, generator=make_generator(0, device=CPU))
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    assert len(a[3]) == 5 and not set(a[1].tolist()) & set(a[3].tolist())
    with pytest.raises(ValueError, match="test_fraction"):
        train_test_split(x, y, 1.5)
