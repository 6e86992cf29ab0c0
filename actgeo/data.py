"""Built-in inputs, synthetic tasks of known geometry, and local data sets.

Inputs for the geometry kernels (:class:`Inputs`):

* :func:`digits`: the 1797 8x8 handwritten digits that ship with
  scikit-learn (no download), as 64-dimensional vectors.
* :func:`sphere`: points around a sphere of radius ``R`` in ``R^D``, whose
  signed distance to that sphere, ``|x| - R``, is known exactly.

These are scaled so that ``|x|^2 / D`` is about 1 on average (``q^0 = 1`` in
the mean-field convention), which puts every activation in the regime its
customary initialisation was designed for.

Train/test tasks for training (:class:`Dataset`):

* :func:`digits_split`: a fixed stratified split of the same digits.
* :func:`spheres`, :func:`hyperplane`: two-class tasks whose decision
  boundary is known, with every point's exact signed distance to it.
* :func:`load_mnist`, :func:`load_cifar10`: readers for the MNIST IDX files
  and the CIFAR-10 python batches a user already has on disk (nothing is
  downloaded).
* :func:`flatten`: images ``(P, H, W, C)`` to vectors ``(P, H*W*C)`` for MLPs.

Everything here is NumPy; nothing imports JAX.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import importlib
import io
import math
import pathlib
import pickle
import zlib

import numpy as np

__all__ = [
    "Dataset",
    "Inputs",
    "digits",
    "digits_split",
    "flatten",
    "hyperplane",
    "load",
    "load_cifar10",
    "load_mnist",
    "sphere",
    "spheres",
]

DATASETS = ("digits", "sphere")


@dataclasses.dataclass(frozen=True)
class Inputs:
    """A set of inputs and, where the geometry is known, a target distance.

    Attributes:
      name: data set name.
      x: ``(P, D)`` float32 inputs.
      target: ``(P,)`` signed distance to a surface of known geometry, or
        ``None``.
      labels: ``(P,)`` class labels, or ``None``.
      description: one line on what the inputs are.
    """

    name: str
    x: np.ndarray
    target: np.ndarray | None
    labels: np.ndarray | None
    description: str


@functools.cache
def _digits_arrays():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.data.astype(np.float64), bunch.target.astype(np.int64)


@functools.cache
def _digits_scaled() -> np.ndarray:
    """All digits ``(1797, 64)``, centred per pixel, one global scale, float64."""
    data, _ = _digits_arrays()
    centred = data - data.mean(axis=0, keepdims=True)
    centred /= np.sqrt(np.mean(np.sum(centred**2, axis=1)) / data.shape[1])
    centred.setflags(write=False)
    return centred


def digits(n: int, *, seed: int = 0) -> Inputs:
    """``n`` distinct digit images, drawn without replacement, as ``(n, 64)``.

    Pixels (0..16) are centred per pixel over the whole data set and scaled
    by one global factor so that ``mean |x|^2 / 64 = 1``.
    """
    data, labels = _digits_arrays()
    if not 1 <= n <= data.shape[0]:
        raise ValueError(f"n: expected 1..{data.shape[0]} digit images, got {n}")
    centred = _digits_scaled()
    pick = np.random.default_rng(seed).permutation(data.shape[0])[:n]
    return Inputs(
        name="digits",
        x=centred[pick].astype(np.float32),
        target=None,
        labels=labels[pick],
        description="scikit-learn digits, 8x8 pixels, centred, q0 = 1",
    )


def sphere(
    n: int, dim: int, *, seed: int = 0, spread: tuple[float, float] = (0.2, 3.0)
) -> Inputs:
    """``n`` points at radii ``U(spread) * R`` in uniform directions.

    ``R`` is chosen so that ``E|x|^2 / dim = 1``: ``R^2 = dim / E[U^2]``. The
    target is the signed distance to the sphere of radius ``R``, ``|x| - R``,
    exact by construction.
    """
    if n < 1:
        raise ValueError(f"n: expected a positive number of points, got {n}")
    if dim < 1:
        raise ValueError(f"dim: expected a positive dimension, got {dim}")
    lo, hi = spread
    if not 0 < lo < hi:
        raise ValueError(f"spread: expected 0 < lo < hi, got {spread}")
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=(n, dim))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    mean_square = (hi**3 - lo**3) / (3.0 * (hi - lo))
    big_r = np.sqrt(dim / mean_square)
    radius = big_r * rng.uniform(lo, hi, size=n)
    x = direction * radius[:, None]
    return Inputs(
        name="sphere",
        x=x.astype(np.float32),
        target=(radius - big_r).astype(np.float32),
        labels=None,
        description=(
            f"points in R^{dim} at radii {lo}-{hi} x R around a sphere of radius "
            f"R = {big_r:.3g}; target: signed distance to it"
        ),
    )


def load(name: str, n: int, *, dim: int = 16, seed: int = 0) -> Inputs:
    """Built-in inputs by name: ``"digits"`` or ``"sphere"`` (of dimension ``dim``)."""
    if name == "digits":
        return digits(n, seed=seed)
    if name == "sphere":
        return sphere(n, dim, seed=seed)
    raise ValueError(f"dataset: unknown name {name!r}; valid names are {DATASETS}")


# Train/test tasks ------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A train/test task.

    ``P`` below is the number of training inputs and ``P'`` the number of
    test inputs. The class is a plain container: the functions that build one
    check their inputs, and so does the training code that consumes one.

    Attributes:
      name: data set name.
      x_train: ``(P, D)`` or ``(P, H, W, C)`` float32 training inputs.
      y_train: ``(P,)`` int64 class labels in ``0..classes-1`` (float32
        targets for regression).
      x_test: ``(P', D)`` or ``(P', H, W, C)`` test inputs, with the same
        trailing shape as ``x_train``.
      y_test: ``(P',)`` test labels or targets.
      classes: the number of classes ``K``, or ``None`` for regression.
      boundary_distance_train: ``(P,)`` the exact signed distance from each
        training input to the task's decision boundary, positive on the side
        of class 1, or ``None`` where the boundary is unknown.
      boundary_distance_test: ``(P',)`` the same for the test inputs.
      description: one line on what the task is.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: int | None
    boundary_distance_train: np.ndarray | None = None
    boundary_distance_test: np.ndarray | None = None
    description: str = ""

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of one input: ``(D,)`` or ``(H, W, C)``."""
        return tuple(self.x_train.shape[1:])


def _count(name: str, value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name}: expected an integer {what}, got {value!r}")
    if value < 1:
        raise ValueError(f"{name}: expected a positive {what}, got {value}")
    return int(value)


def _split_sizes(n: int, test_fraction, per_split: int) -> tuple[int, int]:
    """``(n_train, n_test)`` as scikit-learn's ``train_test_split`` counts them."""
    if (
        isinstance(test_fraction, bool)
        or not isinstance(test_fraction, int | float | np.floating)
        or not math.isfinite(test_fraction)
        or not 0 < test_fraction < 1
    ):
        raise ValueError(
            f"test_fraction: expected a number strictly between 0 and 1, "
            f"got {test_fraction!r}"
        )
    n_test = math.ceil(test_fraction * n)
    n_train = n - n_test
    if min(n_train, n_test) < per_split:
        raise ValueError(
            f"test_fraction: {test_fraction} splits {n} points into {n_train} "
            f"train and {n_test} test; each split needs at least {per_split} "
            f"(one per class)"
        )
    return n_train, n_test


def digits_split(
    test_fraction: float = 0.25, seed: int = 0, *, images: bool = False
) -> Dataset:
    """Scikit-learn's digits with a fixed stratified train/test split.

    The split is scikit-learn's ``train_test_split`` stratified on the labels
    with ``random_state=seed``, so a given ``(test_fraction, seed)`` gives the
    same split on every call (for a given scikit-learn version). The test set
    holds ``ceil(test_fraction * 1797)`` images and the training set the rest:
    1347 train and 450 test at the default ``test_fraction=0.25``; every
    class's share of each split is its share of the data to within one image.

    Pixels are scaled as in :func:`digits`: centred per pixel and divided by
    one global factor so that ``mean |x|^2 / 64 = 1``, both computed over all
    1797 images. This is a fixed transform that uses no labels, so the same
    image has the same values in every split and in :func:`digits`.

    Args:
      test_fraction: the test set's share of the 1797 images, in ``(0, 1)``,
        leaving at least 10 images (one per class) in each split.
      seed: the split's ``random_state``.
      images: ``False`` for inputs ``(P, 64)``; ``True`` for images
        ``(P, 8, 8, 1)`` (pixel ``(i, j)`` is entry ``8 i + j`` of the vector).

    Returns:
      A :class:`Dataset` with 10 classes and no boundary distances.
    """
    from sklearn.model_selection import train_test_split

    x, labels = _digits_scaled(), _digits_arrays()[1]
    _split_sizes(x.shape[0], test_fraction, per_split=10)
    train, test = train_test_split(
        np.arange(x.shape[0]),
        test_size=test_fraction,
        random_state=seed,
        shuffle=True,
        stratify=labels,
    )
    shape = (8, 8, 1) if images else (64,)
    return Dataset(
        name="digits",
        x_train=x[train].astype(np.float32).reshape(-1, *shape),
        y_train=labels[train],
        x_test=x[test].astype(np.float32).reshape(-1, *shape),
        y_test=labels[test],
        classes=10,
        description=(
            f"scikit-learn digits, 8x8 pixels, centred, q0 = 1; stratified split "
            f"{len(train)} train / {len(test)} test (seed {seed})"
        ),
    )


def _balanced_labels(rng: np.random.Generator, n_train: int, n_test: int):
    """Labels 0 and 1 in equal numbers (to within one) in each split, shuffled."""
    return np.concatenate(
        [rng.permutation(np.arange(m, dtype=np.int64) % 2) for m in (n_train, n_test)]
    )


def _task(name, x, labels, distance, n_train, description) -> Dataset:
    return Dataset(
        name=name,
        x_train=x[:n_train],
        y_train=labels[:n_train],
        x_test=x[n_train:],
        y_test=labels[n_train:],
        classes=2,
        boundary_distance_train=distance[:n_train],
        boundary_distance_test=distance[n_train:],
        description=description,
    )


def spheres(
    n: int,
    dim: int,
    radii: tuple[float, float] = (1.0, 2.0),
    seed: int = 0,
    test_fraction: float = 0.25,
    *,
    jitter: float = 0.5,
) -> Dataset:
    """Two concentric spheres in ``R^dim``, class ``k`` near radius ``r_k``.

    Directions are uniform on the sphere. A point of class ``k`` has radius
    uniform in ``[r_k - h, r_k + h]`` (the lower end clipped at 0), with
    ``h = jitter (r1 - r0) / 2``. The decision boundary is the sphere of
    radius ``r_b = (r0 + r1) / 2``; the boundary distance is ``|x| - r_b``,
    computed in float64 from the stored float32 points, so it is exact for
    them up to one float32 rounding. No point comes closer to the boundary
    than ``(1 - jitter) (r1 - r0) / 2``. Radii are used as given (no
    ``q^0 = 1`` scaling).

    The ``n`` points are split as :func:`digits_split` counts
    (``ceil(test_fraction * n)`` test points), each split with the two classes
    in equal numbers to within one.

    Args:
      n: the number of points, train and test together.
      dim: the dimension ``D`` of the space.
      radii: ``(r0, r1)``, finite, with ``0 < r0 < r1``.
      seed: seeds NumPy's generator.
      test_fraction: the test set's share of ``n``, in ``(0, 1)``.
      jitter: the half-width of each class's shell as a fraction of half the
        gap between the radii, in ``[0, 1)``.

    Returns:
      A two-class :class:`Dataset` with inputs ``(P, D)`` and signed boundary
      distances (positive outside, on the side of class 1).
    """
    n = _count("n", n, "number of points")
    dim = _count("dim", dim, "dimension")
    radii = tuple(radii)
    if (
        len(radii) != 2
        or not all(isinstance(r, int | float | np.floating) for r in radii)
        or not all(math.isfinite(r) for r in radii)
        or not 0 < radii[0] < radii[1]
    ):
        raise ValueError(
            f"radii: expected two finite radii with 0 < r0 < r1, got {radii!r}"
        )
    if isinstance(jitter, bool) or not (
        isinstance(jitter, int | float | np.floating) and 0 <= jitter < 1
    ):
        raise ValueError(f"jitter: expected a number in [0, 1), got {jitter!r}")
    n_train, n_test = _split_sizes(n, test_fraction, per_split=2)
    r0, r1 = (float(r) for r in radii)
    half = jitter * (r1 - r0) / 2
    boundary = (r0 + r1) / 2

    rng = np.random.default_rng(seed)
    labels = _balanced_labels(rng, n_train, n_test)
    direction = rng.normal(size=(n, dim))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    centre = np.where(labels == 1, r1, r0)
    radius = rng.uniform(np.maximum(centre - half, 0.0), centre + half)
    x = (direction * radius[:, None]).astype(np.float32)
    distance = np.linalg.norm(x.astype(np.float64), axis=1) - boundary
    return _task(
        "spheres",
        x,
        labels,
        distance.astype(np.float32),
        n_train,
        f"two spheres in R^{dim}, radii {r0:g} and {r1:g} (jitter {jitter:g}); "
        f"boundary: sphere of radius {boundary:g}",
    )


def hyperplane(
    n: int,
    dim: int,
    margin: float,
    seed: int = 0,
    test_fraction: float = 0.25,
) -> Dataset:
    """Two classes on either side of a hyperplane through the origin, with a margin.

    The plane's unit normal ``u`` is drawn uniformly from the sphere (from
    ``seed``). A point is ``s (margin + |g|) u + (v - (v . u) u)`` with
    ``g ~ N(0, 1)``, ``v ~ N(0, I_D)`` and ``s = +1`` for class 1, ``-1`` for
    class 0: its signed distance to the plane is ``s (margin + |g|)``, and
    along the plane it is a standard Gaussian. The stored boundary distance is
    ``x . u``, computed in float64 from the stored float32 points, so it is
    exact for them up to one float32 rounding. The split is counted as in
    :func:`spheres`.

    Args:
      n: the number of points, train and test together.
      dim: the dimension ``D`` of the space.
      margin: the smallest distance from any point to the plane, finite and
        positive.
      seed: seeds NumPy's generator.
      test_fraction: the test set's share of ``n``, in ``(0, 1)``.

    Returns:
      A two-class :class:`Dataset` with inputs ``(P, D)`` and signed boundary
      distances (positive on the side of class 1).
    """
    n = _count("n", n, "number of points")
    dim = _count("dim", dim, "dimension")
    if (
        isinstance(margin, bool)
        or not isinstance(margin, int | float | np.floating)
        or not math.isfinite(margin)
        or margin <= 0
    ):
        raise ValueError(f"margin: expected a finite positive number, got {margin!r}")
    n_train, n_test = _split_sizes(n, test_fraction, per_split=2)

    rng = np.random.default_rng(seed)
    normal = rng.normal(size=dim)
    normal /= np.linalg.norm(normal)
    labels = _balanced_labels(rng, n_train, n_test)
    offset = (2 * labels - 1) * (margin + np.abs(rng.normal(size=n)))
    along = rng.normal(size=(n, dim))
    along -= np.outer(along @ normal, normal)
    x = (offset[:, None] * normal + along).astype(np.float32)
    distance = x.astype(np.float64) @ normal
    return _task(
        "hyperplane",
        x,
        labels,
        distance.astype(np.float32),
        n_train,
        f"two classes in R^{dim} either side of a hyperplane through the origin, "
        f"margin {float(margin):g}",
    )


def flatten(dataset: Dataset) -> Dataset:
    """The same data set with every input flattened: ``(P, H, W, C) -> (P, H*W*C)``.

    Entries keep NumPy's C order (channel fastest). Inputs that are already
    ``(P, D)`` are returned unchanged.
    """
    if not isinstance(dataset, Dataset):
        raise TypeError(f"dataset: expected a Dataset, got {type(dataset).__name__}")
    if dataset.x_train.ndim < 2 or dataset.x_test.ndim < 2:
        raise ValueError(
            f"dataset: expected inputs with a leading example axis, got x_train "
            f"{dataset.x_train.shape} and x_test {dataset.x_test.shape}"
        )
    if dataset.x_train.ndim == 2 and dataset.x_test.ndim == 2:
        return dataset
    return dataclasses.replace(
        dataset,
        x_train=dataset.x_train.reshape(dataset.x_train.shape[0], -1),
        x_test=dataset.x_test.reshape(dataset.x_test.shape[0], -1),
        description=f"{dataset.description} (flattened)",
    )


# Local files -----------------------------------------------------------------


def _directory(directory) -> pathlib.Path:
    path = pathlib.Path(directory).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"directory: {str(path)!r} does not exist")
    if not path.is_dir():
        raise NotADirectoryError(
            f"directory: {str(path)!r} is a file; expected the directory holding "
            f"the data set's files"
        )
    return path


def _find_files(
    directory: pathlib.Path, wanted: dict[str, tuple[str, ...]], data_set: str
) -> dict[str, pathlib.Path]:
    """The first existing candidate for every wanted file; one error lists all gaps."""
    found, missing = {}, []
    for role, candidates in wanted.items():
        hits = [directory / name for name in candidates if (directory / name).is_file()]
        if hits:
            found[role] = hits[0]
        else:
            missing.append(f"{role} (looked for {', '.join(candidates)})")
    if missing:
        raise FileNotFoundError(
            f"directory: {str(directory)!r} lacks {data_set} files: "
            + "; ".join(missing)
        )
    return found


def _read_bytes(path: pathlib.Path) -> bytes:
    """The file's bytes, decompressed if it is gzip (recognised by its content)."""
    raw = path.read_bytes()
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as exc:
        raise ValueError(f"{path}: not a readable gzip file ({exc})") from exc


_IDX_KIND = {2051: "image file (unsigned bytes, 3 dimensions)", 2049: "label file"}


def _read_idx(path: pathlib.Path, magic: int) -> np.ndarray:
    """An IDX file of unsigned bytes: magic number, big-endian sizes, data."""
    raw = _read_bytes(path)
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    kind = _IDX_KIND[magic]
    if len(raw) < 4:
        raise ValueError(
            f"{path}: truncated: {len(raw)} bytes, too short for the IDX magic number"
        )
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise ValueError(
            f"{path}: bad magic number {found} (0x{found:08x}); expected {magic} "
            f"(0x{magic:08x}) for an IDX {kind}"
        )
    if len(raw) < header:
        raise ValueError(
            f"{path}: truncated: {len(raw)} bytes, shorter than the {header}-byte "
            f"header of an IDX {kind}"
        )
    shape = tuple(
        int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)
    )
    if 0 in shape:
        raise ValueError(f"{path}: header gives shape {shape}; expected no empty axis")
    expected, present = math.prod(shape), len(raw) - header
    if present != expected:
        problem = "truncated" if present < expected else "trailing bytes"
        raise ValueError(
            f"{path}: {problem}: the header gives shape {shape}, {expected} data "
            f"bytes, but the file holds {present} after its {header}-byte header"
        )
    return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


def _check_labels(path, labels: np.ndarray, classes: int) -> np.ndarray:
    bad = np.flatnonzero((labels < 0) | (labels >= classes))
    if bad.size:
        raise ValueError(
            f"{path}: labels out of range: expected 0..{classes - 1}, found "
            f"{labels[bad[0]]} at index {bad[0]} ({bad.size} such labels)"
        )
    return labels.astype(np.int64)


_MNIST_FILES = {
    "train images": "train-images-idx3-ubyte",
    "train labels": "train-labels-idx1-ubyte",
    "test images": "t10k-images-idx3-ubyte",
    "test labels": "t10k-labels-idx1-ubyte",
}


def _mnist_candidates(stem: str) -> tuple[str, ...]:
    dotted = stem.replace("-idx", ".idx")
    return (stem, dotted, f"{stem}.gz", f"{dotted}.gz")


def load_mnist(directory) -> Dataset:
    """MNIST from its four IDX files in ``directory`` (nothing is downloaded).

    Looks for ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
    ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``, each also as
    ``train-images.idx3-ubyte`` (a common renaming) and with ``.gz``
    appended; gzip is recognised by content. Image files carry the magic
    number 2051 and the big-endian sizes ``(P, H, W)``, label files 2049 and
    ``(P,)``; any ``H, W`` in the header is read (MNIST's is 28 x 28), so
    Fashion-MNIST, which uses the same files, loads too.

    Args:
      directory: the directory holding the files.

    Returns:
      A :class:`Dataset` with images ``(P, H, W, 1)`` as float32 pixel / 255
      in ``[0, 1]``, int64 labels in ``0..9``, and 10 classes.

    Raises:
      FileNotFoundError: the directory or a file is missing (every missing
        file is listed with the names looked for).
      ValueError: a file is not valid gzip, has a bad magic number, is
        truncated or has trailing bytes, image and label counts differ,
        train and test images differ in size, or a label is outside 0..9.
    """
    root = _directory(directory)
    wanted = {role: _mnist_candidates(stem) for role, stem in _MNIST_FILES.items()}
    paths = _find_files(root, wanted, "MNIST")
    arrays = {}
    for split in ("train", "test"):
        images = _read_idx(paths[f"{split} images"], 2051)
        labels = _read_idx(paths[f"{split} labels"], 2049)
        if images.shape[0] != labels.shape[0]:
            raise ValueError(
                f"{paths[f'{split} images']} holds {images.shape[0]} images but "
                f"{paths[f'{split} labels']} holds {labels.shape[0]} labels; "
                f"expected one label per image"
            )
        labels = _check_labels(paths[f"{split} labels"], labels, 10)
        arrays[split] = (images.astype(np.float32)[..., None] / 255, labels)
    (x_train, y_train), (x_test, y_test) = arrays["train"], arrays["test"]
    if x_train.shape[1:] != x_test.shape[1:]:
        raise ValueError(
            f"{paths['test images']}: images of {x_test.shape[1:3]} pixels; expected "
            f"the size of the training images, {x_train.shape[1:3]}"
        )
    return Dataset(
        name="mnist",
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        classes=10,
        description=(
            f"MNIST IDX files from {root}: {len(y_train)} train / {len(y_test)} test "
            f"images of {x_train.shape[1]}x{x_train.shape[2]} pixels, pixel / 255"
        ),
    )


@functools.cache
def _pickle_globals() -> dict[tuple[str, str], object]:
    """The only globals a CIFAR batch pickle may name: NumPy's array rebuilders."""
    import codecs

    try:
        multiarray = importlib.import_module("numpy._core.multiarray")
        numeric = importlib.import_module("numpy._core.numeric")
    except ImportError:  # NumPy 1
        multiarray = importlib.import_module("numpy.core.multiarray")
        numeric = importlib.import_module("numpy.core.numeric")
    table: dict[tuple[str, str], object] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,
    }
    for package in ("numpy.core", "numpy._core"):
        table[(f"{package}.multiarray", "_reconstruct")] = multiarray._reconstruct
        if hasattr(numeric, "_frombuffer"):
            table[(f"{package}.numeric", "_frombuffer")] = numeric._frombuffer
    return table


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, bytes and NumPy arrays, and refuses anything else."""

    def find_class(self, module, name):
        found = _pickle_globals().get((module, name))
        if found is None:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}: a CIFAR batch holds only "
                f"dicts, lists, bytes and NumPy arrays"
            )
        return found


def _read_cifar_batch(path: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
    """``(data (P, 3072) uint8, labels (P,) int64)`` from one batch pickle."""
    raw = _read_bytes(path)
    try:
        batch = _BatchUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as exc:
        raise ValueError(
            f"{path}: not a readable CIFAR batch pickle ({type(exc).__name__}: {exc})"
        ) from exc
    if not isinstance(batch, dict):
        raise ValueError(f"{path}: expected a pickled dict, got {type(batch).__name__}")
    entries = {}
    for key in ("data", "labels"):
        for candidate in (key.encode(), key):
            if candidate in batch:
                entries[key] = batch[candidate]
                break
        else:
            raise ValueError(
                f"{path}: expected a dict with keys b'data' and b'labels', got keys "
                f"{sorted(batch, key=repr)}"
            )
    data = entries["data"]
    if (
        not isinstance(data, np.ndarray)
        or data.dtype != np.uint8
        or data.ndim != 2
        or data.shape[1] != 3072
    ):
        described = (
            f"{data.dtype} array of shape {data.shape}"
            if isinstance(data, np.ndarray)
            else type(data).__name__
        )
        raise ValueError(
            f"{path}: b'data': expected a uint8 array (P, 3072), got {described}"
        )
    labels = np.asarray(entries["labels"])
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"{path}: b'labels': expected a list of integers, got {labels.dtype} "
            f"of shape {labels.shape}"
        )
    if labels.shape[0] != data.shape[0]:
        raise ValueError(
            f"{path}: b'data' holds {data.shape[0]} images but b'labels' holds "
            f"{labels.shape[0]} labels; expected one label per image"
        )
    return data, _check_labels(path, labels, 10)


_CIFAR_FILES = {
    **{f"train batch {i}": f"data_batch_{i}" for i in range(1, 6)},
    "test batch": "test_batch",
}


def load_cifar10(directory) -> Dataset:
    """CIFAR-10 from its python batch files in ``directory`` (nothing is downloaded).

    Reads ``data_batch_1`` .. ``data_batch_5`` (training, in that order) and
    ``test_batch``, each also with ``.gz`` appended; ``directory`` may also be
    the folder that holds the unpacked ``cifar-10-batches-py``. Each file is a
    pickled dict with ``b"data"``, a uint8 array ``(P, 3072)`` holding each
    image's red, green and blue 32 x 32 planes in turn (rows first), and
    ``b"labels"``, ``P`` integers in ``0..9``. Pickles are read by an
    unpickler that accepts only dicts, lists, bytes and NumPy arrays, so a
    file that names any other Python object is refused rather than run.

    Args:
      directory: the directory holding the batch files.

    Returns:
      A :class:`Dataset` with images ``(P, 32, 32, 3)`` as float32 pixel / 255
      in ``[0, 1]``, int64 labels, and 10 classes.

    Raises:
      FileNotFoundError: the directory or a batch file is missing (every
        missing file is listed with the names looked for).
      ValueError: a file is not a readable pickle of the expected dict, its
        data is not uint8 ``(P, 3072)``, its image and label counts differ,
        or a label is outside 0..9.
    """
    root = _directory(directory)
    nested = root / "cifar-10-batches-py"
    if not (root / "test_batch").is_file() and nested.is_dir():
        root = nested
    wanted = {role: (name, f"{name}.gz") for role, name in _CIFAR_FILES.items()}
    paths = _find_files(root, wanted, "CIFAR-10")
    batches = {role: _read_cifar_batch(path) for role, path in paths.items()}

    def images(data: np.ndarray) -> np.ndarray:
        planes = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        return np.ascontiguousarray(planes, dtype=np.float32) / np.float32(255)

    train = [batches[f"train batch {i}"] for i in range(1, 6)]
    x_train = images(np.concatenate([data for data, _ in train]))
    y_train = np.concatenate([labels for _, labels in train])
    x_test, y_test = images(batches["test batch"][0]), batches["test batch"][1]
    return Dataset(
        name="cifar10",
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        classes=10,
        description=(
            f"CIFAR-10 batches from {root}: {len(y_train)} train / {len(y_test)} "
            f"test images of 32x32x3 pixels, pixel / 255"
        ),
    )
