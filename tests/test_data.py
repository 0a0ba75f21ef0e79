"""Loaders on small files in each real format, including broken files."""

import gzip
import pickle

import numpy as np
import pytest
import torch

from datafiles import write_cifar_like, write_mnist_like, write_svhn_like
from mondeq.data import Batches, augment_batch, load_dataset, read_idx, write_idx
from mondeq.errors import DataError


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_idx_loader(tmp_path, name):
    write_mnist_like(tmp_path, train=40, test=16)
    train = load_dataset(name, "train", tmp_path)
    test = load_dataset(name, "test", tmp_path)
    assert train.images.shape == (40, 1, 28, 28) and train.images.dtype == torch.uint8
    assert test.labels.shape == (16,) and test.labels.dtype == torch.int64
    raw = np.frombuffer(gzip.decompress((tmp_path / "train-images-idx3-ubyte.gz").read_bytes())[16:], np.uint8)
    assert torch.equal(train.images.flatten(), torch.from_numpy(raw.copy()))


def test_idx_uncompressed_and_subfolder(tmp_path):
    folder = tmp_path / "mnist"
    write_mnist_like(folder)
    for f in folder.glob("*.gz"):
        f.with_suffix("").write_bytes(gzip.decompress(f.read_bytes()))
        f.unlink()
    assert len(load_dataset("mnist", "test", tmp_path)) == 32


def test_idx_truncated(tmp_path):
    write_mnist_like(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:-100]))
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz is truncated"):
        load_dataset("mnist", "train", tmp_path)


def test_idx_truncated_gzip_stream(tmp_path):
    write_mnist_like(tmp_path)
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.gz.*truncated or corrupt"):
        load_dataset("mnist", "test", tmp_path)


def test_idx_wrong_magic(tmp_path):
    path = tmp_path / "x.idx"
    path.write_bytes(b"\x12\x34\x08\x03" + bytes(20))
    with pytest.raises(DataError, match="bad magic number 12340803"):
        read_idx(path, 3)
    write_idx(path, np.zeros((2, 3), np.uint8))
    with pytest.raises(DataError, match="2 dimensions, expected 3"):
        read_idx(path, 3)


def test_missing_files_say_where_they_looked(tmp_path):
    with pytest.raises(
        DataError,
        match=rf"t10k-images-idx3-ubyte.gz or .* or t10k-images.idx3-ubyte not found; looked for {tmp_path}",
    ):
        load_dataset("mnist", "test", tmp_path)


def test_fashion_mnist_found_in_system_folder_without_data_dir(tmp_path, monkeypatch):
    import mondeq.data as data

    write_mnist_like(tmp_path / "system")
    monkeypatch.setattr(type(data.READERS["fashion-mnist"]), "system_dirs", (tmp_path / "system",))
    monkeypatch.setenv("MONDEQ_DATA", str(tmp_path / "empty"))
    assert len(load_dataset("fashion-mnist", "test")) == 32


def test_cifar_loader(tmp_path):
    write_cifar_like(tmp_path, per_batch=10)
    train = load_dataset("cifar10", "train", tmp_path)
    test = load_dataset("cifar10", "test", tmp_path)
    assert train.images.shape == (50, 3, 32, 32) and len(test) == 10
    raw = pickle.loads((tmp_path / "cifar-10-batches-py" / "test_batch").read_bytes())
    assert torch.equal(test.images[3].flatten(), torch.from_numpy(raw[b"data"][3]))
    assert test.labels.tolist() == raw[b"labels"]


def test_cifar_truncated_and_malicious(tmp_path):
    write_cifar_like(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(DataError, match="test_batch.*truncated"):
        load_dataset("cifar10", "test", tmp_path)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path.write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
    with pytest.raises(DataError, match="refusing to load builtins.print"):
        load_dataset("cifar10", "test", tmp_path)


def test_cifar_missing_batch(tmp_path):
    write_cifar_like(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data_batch_3"):
        load_dataset("cifar10", "train", tmp_path)


def test_svhn_loader(tmp_path):
    from scipy.io import loadmat

    write_svhn_like(tmp_path, n=9)
    test = load_dataset("svhn", "test", tmp_path)
    mat = loadmat(tmp_path / "test_32x32.mat")
    assert test.images.shape == (9, 3, 32, 32)
    assert torch.equal(test.images[2, 1], torch.from_numpy(mat["X"][:, :, 1, 2]))
    assert test.labels.tolist() == [int(v) % 10 for v in mat["y"].ravel()]


def test_svhn_truncated(tmp_path):
    write_svhn_like(tmp_path)
    path = tmp_path / "train_32x32.mat"
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(DataError, match="train_32x32.mat"):
        load_dataset("svhn", "train", tmp_path)


def test_unknown_dataset():
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'"):
        load_dataset("imagenet")


def test_normalisation_and_batches(tmp_path):
    write_mnist_like(tmp_path, train=50)
    train = load_dataset("fashion-mnist", "train", tmp_path)
    batches = list(Batches(train, 16, shuffle=True, seed=1, epoch=2))
    assert [len(y) for _, y in batches] == [16, 16, 16, 2]
    again = list(Batches(train, 16, shuffle=True, seed=1, epoch=2))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again))
    x0, y0 = batches[0]
    assert x0.dtype == torch.float32
    expected = (train.images[Batches(train, 16, shuffle=True, seed=1, epoch=2).order[:16]].float() / 255 - 0.2860) / 0.3530
    assert torch.allclose(x0, expected)


def test_distributed_shards_cover_the_data(tmp_path):
    write_mnist_like(tmp_path, train=50)
    train = load_dataset("mnist", "train", tmp_path)
    shards = [Batches(train, 8, shuffle=True, rank=r, world_size=3, seed=0).order for r in range(3)]
    assert {len(s) for s in shards} == {17}
    assert set(torch.cat(shards).tolist()) == set(range(50))
    exact = [Batches(train, 8, rank=r, world_size=3, pad=False).order for r in range(3)]
    assert sorted(torch.cat(exact).tolist()) == list(range(50))


def test_augmentation_crops_and_flips():
    images = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).reshape(2, 3, 32, 32)
    out = augment_batch(images, torch.Generator().manual_seed(0))
    assert out.shape == images.shape
    # every output row is a (possibly flipped, shifted, zero-padded) piece of an input row
    for n in range(2):
        row = out[n, 0, 10]
        nonzero = row[row != 0]
        assert torch.all(nonzero.diff().abs() == 1)
    flips = [bool(augment_batch(images[:1], torch.Generator().manual_seed(s))[0, 0, 16].diff()[5] < 0) for s in range(20)]
    assert any(flips) and not all(flips)
