"""Bad input to the data readers and to read_image: one DataError naming the problem, never a wrong answer."""

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from datafiles import write_cifar_like, write_mnist_like, write_svhn_like
from mondeq.data import DATASETS, ImageDataset, load_dataset, read_idx, read_image, write_idx
from mondeq.errors import DataError

RECONSTRUCT = np.zeros(1).__reduce__()[0]  # numpy's _reconstruct, under whichever module this numpy has


# -- where load_dataset looks --------------------------------------------------------------
def test_explicit_data_dir_must_exist(tmp_path):
    with pytest.raises(DataError, match=f"data folder {tmp_path / 'nowhere'} does not exist"):
        load_dataset("mnist", "train", tmp_path / "nowhere")
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match=f"data folder {tmp_path / 'file'} is not a folder"):
        load_dataset("fashion-mnist", "train", tmp_path / "file")


def test_explicit_data_dir_does_not_fall_back_to_system_folder(tmp_path, monkeypatch):
    import mondeq.data as data

    write_mnist_like(tmp_path / "system")
    monkeypatch.setattr(type(data.READERS["fashion-mnist"]), "system_dirs", (tmp_path / "system",))
    (tmp_path / "empty").mkdir()
    with pytest.raises(
        DataError,
        match="t10k-images-idx3-ubyte.gz or .* or t10k-images.idx3-ubyte not found",
    ) as caught:
        load_dataset("fashion-mnist", "test", tmp_path / "empty")
    assert str(tmp_path / "system") not in str(caught.value)
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("fashion-mnist", "test", tmp_path / "missing")
    monkeypatch.setenv("MONDEQ_DATA", str(tmp_path / "missing"))  # the default folder may be absent
    assert len(load_dataset("fashion-mnist", "test")) == 32


def test_missing_files_list_every_path_tried(tmp_path):
    with pytest.raises(DataError) as caught:
        load_dataset("mnist", "test", tmp_path)
    message = str(caught.value)
    assert "\n" not in message
    for folder in (tmp_path, tmp_path / "mnist", tmp_path / "mnist" / "raw", tmp_path / "MNIST" / "raw"):
        for name in ("t10k-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte"):
            assert str(folder / name) in message
    with pytest.raises(DataError, match=str(tmp_path / "cifar10" / "cifar-10-batches-py" / "test_batch")):
        load_dataset("cifar10", "test", tmp_path)


def test_empty_and_wrong_size_idx_files(tmp_path):
    write_mnist_like(tmp_path)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.zeros((0, 28, 28), np.uint8))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(0, np.uint8))
    with pytest.raises(DataError, match="mnist test: the files hold no examples"):
        load_dataset("mnist", "test", tmp_path)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.zeros((4, 32, 32), np.uint8))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(4, np.uint8))
    with pytest.raises(DataError, match=r"images have shape \(1, 32, 32\), expected \(1, 28, 28\)"):
        load_dataset("mnist", "test", tmp_path)


def test_labels_out_of_range_named(tmp_path):
    write_mnist_like(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.full(32, 12, np.uint8))
    with pytest.raises(DataError, match=r"labels span 12\.\.12, outside 0\.\.9"):
        load_dataset("mnist", "test", tmp_path)
    assert read_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", 1).max() == 12


# -- subset --------------------------------------------------------------------------------
@pytest.mark.parametrize("count", [0, -1, -100])
def test_subset_refuses_counts_below_one(count):
    dataset = ImageDataset(torch.zeros(5, 1, 28, 28, dtype=torch.uint8), torch.zeros(5, dtype=torch.int64), DATASETS["mnist"])
    with pytest.raises(ValueError, match=f"count must be a positive integer, got {count}"):
        dataset.subset(count)
    assert len(dataset.subset(None)) == 5 and len(dataset.subset(2)) == 2 and len(dataset.subset(9)) == 5


# -- SVHN ----------------------------------------------------------------------------------
def test_svhn_matlab_v73_file(tmp_path):
    text = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 ."
    header = text.ljust(116, b" ") + bytes(8) + b"\x00\x02IM"  # version 0x0200 = 7.3, little-endian
    (tmp_path / "test_32x32.mat").write_bytes(header.ljust(512, b"\0") + b"\x89HDF\r\n\x1a\n" + bytes(256))
    with pytest.raises(DataError, match=r"test_32x32.mat is a MATLAB v7.3 \(HDF5\) file.*official test_32x32.mat.*-v7"):
        load_dataset("svhn", "test", tmp_path)


def test_svhn_tiny_file(tmp_path):
    (tmp_path / "train_32x32.mat").write_bytes(b"MATLAB 5.0 MAT-file")
    with pytest.raises(DataError, match="cannot read SVHN file .*train_32x32.mat"):
        load_dataset("svhn", "train", tmp_path)


def test_svhn_bad_labels_and_images(tmp_path):
    from scipy.io import savemat

    write_svhn_like(tmp_path, n=4)
    X = np.zeros((32, 32, 3, 4), np.uint8)
    savemat(tmp_path / "test_32x32.mat", {"X": X, "y": np.array([[1], [2], [12], [10]], np.uint8)})
    with pytest.raises(DataError, match=r"SVHN labels y span 1\.\.12, expected digits 1\.\.10"):
        load_dataset("svhn", "test", tmp_path)
    savemat(tmp_path / "test_32x32.mat", {"X": X.astype(np.float64) + 300, "y": np.ones((4, 1), np.uint8)})
    with pytest.raises(DataError, match=r"SVHN images X are a float64 array.*expected uint8"):
        load_dataset("svhn", "test", tmp_path)
    savemat(tmp_path / "test_32x32.mat", {"X": X[..., 0], "y": np.ones((4, 1), np.uint8)})
    with pytest.raises(DataError, match=r"SVHN images X are a uint8 array of shape \(32, 32, 3\)"):
        load_dataset("svhn", "test", tmp_path)


# -- CIFAR-10 pickles ----------------------------------------------------------------------
def _cifar_test_batch(tmp_path, content) -> None:
    write_cifar_like(tmp_path, per_batch=4)
    raw = content if isinstance(content, bytes) else pickle.dumps(content, protocol=2)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(raw)


def _py2_string(value: bytes) -> bytes:
    """A Python 2 ``str`` in a protocol-2 pickle (read back as bytes with encoding="bytes")."""
    return (b"U" + bytes([len(value)]) if len(value) < 256 else b"T" + len(value).to_bytes(4, "little")) + value


def _py2_cifar_batch(data: np.ndarray, labels: list[int]) -> bytes:
    """A CIFAR-10 batch as the official files hold it: pickled by Python 2's cPickle with numpy 1.x."""
    n = len(labels).to_bytes(4, "little", signed=True)
    array = (
        b"cnumpy.core.multiarray\n_reconstruct\nq\x01cnumpy\nndarray\nq\x02K\x00\x85" + _py2_string(b"b") + b"\x87R"
        b"(K\x01J" + n + b"J\x00\x0c\x00\x00\x86cnumpy\ndtype\n" + _py2_string(b"u1") + b"K\x00K\x01\x87R"
        b"(K\x03" + _py2_string(b"|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89" + _py2_string(data.tobytes()) + b"tb"
    )
    label_ops = b"](" + b"".join(b"K" + bytes([v]) for v in labels) + b"e"
    return b"\x80\x02}(" + _py2_string(b"data") + array + _py2_string(b"labels") + label_ops + b"u."


def test_cifar_python2_batch(tmp_path):
    data = np.random.default_rng(0).integers(0, 256, (4, 3072)).astype(np.uint8)
    _cifar_test_batch(tmp_path, _py2_cifar_batch(data, [3, 0, 9, 1]))
    test = load_dataset("cifar10", "test", tmp_path)
    assert torch.equal(test.images.reshape(4, -1), torch.from_numpy(data)) and test.labels.tolist() == [3, 0, 9, 1]


class _Reduce:
    """Pickles as ``function(*args)``, then ``__setstate__(state)`` when ``state`` is given."""

    def __init__(self, function, args, state=None):
        self.value = (function, args) if state is None else (function, args, state)

    def __reduce__(self):
        return self.value


def test_cifar_huge_array_is_refused_without_allocating(tmp_path):
    huge = _Reduce(RECONSTRUCT, (np.ndarray, (10**13,), b"b"))
    _cifar_test_batch(tmp_path, {b"data": huge, b"labels": []})
    with pytest.raises(DataError, match=r"test_batch: refusing a 10000000000000-byte array: more than a \d+-byte file can hold"):
        load_dataset("cifar10", "test", tmp_path)


def test_cifar_shared_data_counts_against_the_file_size(tmp_path):
    shared = bytes(1 << 20)  # stored once in the pickle, referred to by every array
    arrays = [_Reduce(RECONSTRUCT, (np.ndarray, (0,), b"b"), (1, (1 << 20,), np.dtype("u1"), False, shared)) for _ in range(50)]
    _cifar_test_batch(tmp_path, {b"data": arrays, b"labels": []})
    assert (tmp_path / "cifar-10-batches-py" / "test_batch").stat().st_size < 2 << 20
    with pytest.raises(DataError, match="more than a .*-byte file can hold"):
        load_dataset("cifar10", "test", tmp_path)


def test_cifar_object_arrays_and_codecs_refused(tmp_path):
    data = np.arange(3072, dtype=np.int64).reshape(1, 3072) % 256
    _cifar_test_batch(tmp_path, {b"data": data.astype(object), b"labels": [1]})
    with pytest.raises(DataError, match="refusing numpy dtype"):
        load_dataset("cifar10", "test", tmp_path)
    import codecs

    _cifar_test_batch(tmp_path, {b"data": _Reduce(codecs.encode, (b"\x00" * 1536, "hex")), b"labels": [1]})
    with pytest.raises(DataError, match="refusing _codecs.encode with encoding 'hex'"):
        load_dataset("cifar10", "test", tmp_path)


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b"\x80\x02}K\x01a.", "no attribute 'append'"),  # AttributeError
        (b"\x80\x02]K\x01K\x02s.", "index out of range"),  # IndexError
        (b"\x80\x02K\x01r\xff\xff\xff\x7f.", "refusing memo index 2147483647"),  # MemoryError in the C unpickler
        (b"\x80\x02\x82\x01.", "unregistered extension code"),  # ValueError
        (b"\x80\x02cnumpy\nndarray\nK\x05\x85R.", "not callable"),  # numpy.ndarray(shape) directly
    ],
)
def test_cifar_garbage_pickles(tmp_path, raw, problem):
    _cifar_test_batch(tmp_path, raw)
    with pytest.raises(DataError, match=f"cannot read CIFAR-10 batch .*test_batch: .*{problem}"):
        load_dataset("cifar10", "test", tmp_path)


def test_cifar_wrong_contents(tmp_path):
    _cifar_test_batch(tmp_path, {b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]})
    with pytest.raises(DataError, match=r"CIFAR-10 data is a float32 array of shape \(2, 3072\), expected a uint8"):
        load_dataset("cifar10", "test", tmp_path)
    _cifar_test_batch(tmp_path, {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, b"1"]})
    with pytest.raises(DataError, match="labels are not a list of non-negative integers"):
        load_dataset("cifar10", "test", tmp_path)
    _cifar_test_batch(tmp_path, {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 2**70]})
    with pytest.raises(DataError, match="labels are not a list of non-negative integers"):
        load_dataset("cifar10", "test", tmp_path)


# -- read_image ----------------------------------------------------------------------------
def test_read_image_8bit(tmp_path):
    grey = np.arange(28 * 28, dtype=np.uint16).reshape(28, 28) % 256
    Image.fromarray(grey.astype(np.uint8)).save(tmp_path / "grey.png")
    out = read_image(tmp_path / "grey.png", 1, 28)
    assert out.dtype == np.uint8 and out.shape == (1, 28, 28) and np.array_equal(out[0], grey)
    assert np.array_equal(read_image(tmp_path / "grey.png", 3, 28), np.stack([grey] * 3))
    rgb = np.random.default_rng(0).integers(0, 256, (32, 32, 3)).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    assert np.array_equal(read_image(tmp_path / "rgb.png", 3, 32), rgb.transpose(2, 0, 1))
    assert np.array_equal(read_image(tmp_path / "rgb.png", 1, 32)[0], np.asarray(Image.fromarray(rgb).convert("L")))
    assert read_image(tmp_path / "rgb.png", 1, 28).shape == (1, 28, 28)


def test_read_image_16bit_scaled(tmp_path):
    values = np.array([[0, 257 * 100, 65535, 257 * 3]] * 4, dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode == "I;16"
    assert read_image(tmp_path / "deep.png", 1, 4)[0, 0].tolist() == [0, 100, 255, 3]
    Image.fromarray(values.astype(np.int32)).save(tmp_path / "deep.tif")  # mode I
    assert read_image(tmp_path / "deep.tif", 3, 4)[:, 0].tolist() == [[0, 100, 255, 3]] * 3
    Image.fromarray(np.array([[0, 70000]], np.int32)).save(tmp_path / "wide.tif")
    with pytest.raises(DataError, match=r"wide.tif: I pixel values span 0\.\.70000, expected values within 0\.\.65535"):
        read_image(tmp_path / "wide.tif", 1, 2)


def test_read_image_float(tmp_path):
    unit = np.array([[0.0, 0.5, 1.0, 0.2]] * 4, dtype=np.float32)
    Image.fromarray(unit).save(tmp_path / "unit.tif")
    assert Image.open(tmp_path / "unit.tif").mode == "F"
    assert read_image(tmp_path / "unit.tif", 1, 4)[0, 0].tolist() == [0, 128, 255, 51]
    Image.fromarray(unit * 200).save(tmp_path / "bytes.tif")
    assert read_image(tmp_path / "bytes.tif", 1, 4)[0, 0].tolist() == [0, 100, 200, 40]
    for name, bad, found in [("neg", -1.0, r"span -1\.\.1"), ("big", 300.0, r"span 0\.\.300"), ("nan", np.nan, "include NaN")]:
        image = unit.copy()
        image[1, 1] = bad
        Image.fromarray(image).save(tmp_path / f"{name}.tif")
        with pytest.raises(DataError, match=rf"{name}.tif: F pixel values {found}, expected values within 0\.\.1 or 0\.\.255"):
            read_image(tmp_path / f"{name}.tif", 1, 4)


def test_read_image_alpha_and_palette(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3] = (10, 20, 30)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")  # fully transparent: the colour is still read
    assert read_image(tmp_path / "rgba.png", 3, 4)[:, 0, 0].tolist() == [10, 20, 30]
    Image.new("LA", (4, 4), (100, 7)).save(tmp_path / "la.png")
    assert np.all(read_image(tmp_path / "la.png", 1, 4) == 100)
    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 40, 50, 60] + [0] * 762)
    palette.info["transparency"] = 0
    palette.save(tmp_path / "p.png")
    assert read_image(tmp_path / "p.png", 3, 4)[:, 2, 2].tolist() == [40, 50, 60]
    Image.new("1", (4, 4), 1).save(tmp_path / "bits.png")
    assert np.all(read_image(tmp_path / "bits.png", 1, 4) == 255)


def test_read_image_bad_files(tmp_path):
    with pytest.raises(DataError, match=f"image {tmp_path / 'none.png'} not found"):
        read_image(tmp_path / "none.png", 1, 28)
    with pytest.raises(DataError, match="is not a file"):
        read_image(tmp_path, 1, 28)
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(DataError, match="cannot read image .*text.png: not an image file PIL can read"):
        read_image(tmp_path / "text.png", 1, 28)
    Image.fromarray(np.zeros((64, 64, 3), np.uint8) + 9).save(tmp_path / "cut.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "cut.png").read_bytes()[:80])
    with pytest.raises(DataError, match="cannot read image .*cut.png") as caught:
        read_image(tmp_path / "cut.png", 3, 32)
    assert "\n" not in str(caught.value)
    with pytest.raises(ValueError, match="channels must be 1 or 3, got 2"):
        read_image(tmp_path / "cut.png", 2, 32)


@pytest.mark.parametrize("side", [12, 30])  # over the limit (PIL warns), over twice the limit (PIL raises)
def test_read_image_decompression_bomb(tmp_path, monkeypatch, side):
    Image.new("L", (side, side)).save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(DataError, match=rf"image .*bomb.png refused: Image size \({side * side} pixels\) exceeds limit"):
        read_image(tmp_path / "bomb.png", 1, 28)


@pytest.mark.parametrize("dotted", [False, True])
@pytest.mark.parametrize("gzipped", [False, True])
@pytest.mark.parametrize("subfolder", ["", "fashion-mnist", "fashion-mnist/raw", "FashionMNIST/raw"])
def test_idx_files_under_every_common_name_and_folder(tmp_path, dotted, gzipped, subfolder):
    from mondeq.data import write_synthetic_mnist

    source = write_synthetic_mnist(tmp_path / "source", train=12, test=6)
    folder = tmp_path / "data" / subfolder
    folder.mkdir(parents=True)
    for prefix, kind, ndim in [("train", "images", 3), ("train", "labels", 1), ("t10k", "images", 3), ("t10k", "labels", 1)]:
        array = read_idx(source / f"{prefix}-{kind}-idx{ndim}-ubyte.gz", ndim)
        name = f"{prefix}-{kind}{'.' if dotted else '-'}idx{ndim}-ubyte" + (".gz" if gzipped else "")
        write_idx(folder / name, array)
    train = load_dataset("fashion-mnist", "train", tmp_path / "data")
    assert len(train) == 12 and train.images.shape == (12, 1, 28, 28)
    assert len(load_dataset("fashion-mnist", "test", tmp_path / "data")) == 6


def test_missing_idx_files_list_every_name_tried(tmp_path):
    with pytest.raises(DataError) as error:
        load_dataset("mnist", "train", tmp_path)
    for name in (
        "train-images-idx3-ubyte.gz",
        "train-images-idx3-ubyte",
        "train-images.idx3-ubyte.gz",
        "train-images.idx3-ubyte",
    ):
        assert str(tmp_path / name) in str(error.value)


def write_image_folder(root, train: int = 40, test: int = 20):
    """DIR/{train,test}/CLASS/*.png from synthetic MNIST-format images (class names from Fashion-MNIST)."""
    from mondeq.data import write_synthetic_mnist

    source = write_synthetic_mnist(root / "source", train=train, test=test)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = read_idx(source / f"{prefix}-images-idx3-ubyte.gz", 3)
        labels = read_idx(source / f"{prefix}-labels-idx1-ubyte.gz", 1)
        for k, (image, label) in enumerate(zip(images, labels)):
            folder = root / "images" / split / DATASETS["fashion-mnist"].classes[label].replace("/", "-")
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{k}.png")
    return root / "images", images, labels


def test_image_folder_data_set(tmp_path):
    from mondeq.data import folder_info

    root, test_images, test_labels = write_image_folder(tmp_path)
    train, test = load_dataset("folder", "train", root), load_dataset("folder", "test", root)
    info = folder_info(root)
    assert (info.channels, info.image_size) == (1, 28) and info.classes == sorted(info.classes)
    assert len(train) == 40 and len(test) == 20 and train.images.shape[1:] == (1, 28, 28)
    # every test image comes back with its class, whatever the order of the files
    by_class = {name: i for i, name in enumerate(info.classes)}
    expected = sorted(
        (DATASETS["fashion-mnist"].classes[y].replace("/", "-"), img.tobytes()) for img, y in zip(test_images, test_labels)
    )
    got = sorted((info.classes[y], img[0].numpy().tobytes()) for img, y in zip(test.images, test.labels))
    assert got == expected and set(by_class) >= {name for name, _ in got}
    assert abs(float(train.normalize(train.images).mean())) < 1e-5  # normalised with the train split's mean


def test_image_folder_errors(tmp_path):
    with pytest.raises(DataError, match="expected DIR/train/CLASS"):
        load_dataset("folder", "train", tmp_path)
    (tmp_path / "train" / "cat").mkdir(parents=True)
    with pytest.raises(DataError, match="no class sub-folders with images"):
        load_dataset("folder", "train", tmp_path)


def test_train_and_predict_on_an_image_folder(tmp_path, capsys):
    from mondeq.cli import main

    root, _, _ = write_image_folder(tmp_path)
    out = tmp_path / "run"
    args = ["--dataset", "folder", "--data-dir", str(root), "--model", "fc", "--width", "8", "--out", str(out)]
    assert main(["train", *args, "--no-progress", "--batch-size", "8"]) == 0
    image = next((root / "test").glob("*/*.png"))
    assert main(["predict", str(out), str(image)]) == 0
    predicted = capsys.readouterr().out.strip().splitlines()[-1]
    assert predicted.startswith(f"{image}: ") and predicted.split(": ")[1].split(" (p=")[0] in folder_classes(root)


def folder_classes(root):
    return {d.name for d in (root / "train").iterdir()}
