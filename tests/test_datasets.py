"""Train/test data sets: digits split, synthetic geometry, MNIST and CIFAR files.

Synthetic boundary distances are checked against brute-force nearest points on
the boundary; file loaders against tiny IDX files and batch pickles written
here byte by byte, plain and gzip.
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct

import numpy as np
import pytest

from actgeo import data

# Digits ----------------------------------------------------------------------


def _sorted_rows(x: np.ndarray, labels: np.ndarray) -> np.ndarray:
    table = np.concatenate([x.reshape(len(x), -1), labels[:, None]], axis=1)
    return table[np.lexsort(table.T[::-1])]


def test_digits_split_is_a_fixed_stratified_partition_of_the_scaled_digits():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    pixels = bunch.data.astype(np.float64)
    centred = pixels - pixels.mean(axis=0)
    centred /= np.sqrt(np.mean(np.sum(centred**2, axis=1)) / 64)
    split = data.digits_split()

    assert (split.x_train.shape, split.x_test.shape) == ((1347, 64), (450, 64))
    assert split.x_train.dtype == np.float32 and split.y_train.dtype == np.int64
    assert split.classes == 10 and split.boundary_distance_train is None
    assert split.input_shape == (64,)
    # Train and test together are every image exactly once, with its label.
    np.testing.assert_array_equal(
        _sorted_rows(
            np.concatenate([split.x_train, split.x_test]),
            np.concatenate([split.y_train, split.y_test]),
        ),
        _sorted_rows(centred.astype(np.float32), bunch.target),
    )
    # Stratified: each class's test count is its share of 450 to within one.
    share = np.bincount(bunch.target, minlength=10) * 450 / 1797
    assert np.all(np.abs(np.bincount(split.y_test, minlength=10) - share) <= 1)
    # Fixed: the same arguments give the same split; another seed another.
    again = data.digits_split()
    np.testing.assert_array_equal(again.x_test, split.x_test)
    np.testing.assert_array_equal(again.y_train, split.y_train)
    assert not np.array_equal(data.digits_split(seed=1).y_test, split.y_test)
    small = data.digits_split(test_fraction=0.1)
    assert (len(small.y_train), len(small.y_test)) == (1617, 180)


def test_digits_split_images_follow_the_pixel_grid():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    pixels = bunch.data.astype(np.float64)
    centred = pixels - pixels.mean(axis=0)
    centred /= np.sqrt(np.mean(np.sum(centred**2, axis=1)) / 64)
    reference = centred.astype(np.float32)
    images = bunch.images.astype(np.float64)  # (1797, 8, 8), sklearn's own grid
    centred_images = images - images.mean(axis=0)
    centred_images /= np.sqrt(np.mean(np.sum(centred_images**2, axis=(1, 2))) / 64)

    vectors = data.digits_split()
    split = data.digits_split(images=True)
    assert split.x_train.shape == (1347, 8, 8, 1) and split.input_shape == (8, 8, 1)
    np.testing.assert_array_equal(split.y_train, vectors.y_train)
    for row, image in zip(vectors.x_test[:5], split.x_test[:5], strict=True):
        (index,) = np.flatnonzero(np.all(reference == row, axis=1))[:1]
        np.testing.assert_allclose(image[..., 0], centred_images[index], atol=1e-6)
    flat = data.flatten(split)
    np.testing.assert_array_equal(flat.x_train, vectors.x_train)
    np.testing.assert_array_equal(flat.x_test, vectors.x_test)
    assert flat.input_shape == (64,) and flat.y_test is split.y_test


# Synthetic geometry ----------------------------------------------------------


def _nearest_on_circle(point: np.ndarray, radius: float) -> float:
    angle = np.linspace(0.0, 2 * np.pi, 2**20, endpoint=False)
    circle = radius * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    return float(np.min(np.linalg.norm(circle - point, axis=1)))


def _nearest_on_sphere(point: np.ndarray, radius: float) -> float:
    """Brute force over a polar grid, then a finer grid around the best node."""

    def search(polar, azimuth):
        p, a = np.meshgrid(polar, azimuth, indexing="ij")
        grid = radius * np.stack(
            [np.sin(p) * np.cos(a), np.sin(p) * np.sin(a), np.cos(p)], axis=-1
        )
        distance = np.linalg.norm(grid - point, axis=-1)
        i, j = np.unravel_index(np.argmin(distance), distance.shape)
        return distance[i, j], polar[i], azimuth[j]

    _, p0, a0 = search(np.linspace(0, np.pi, 401), np.linspace(0, 2 * np.pi, 801))
    step = np.pi / 400
    best, _, _ = search(
        np.linspace(p0 - 2 * step, p0 + 2 * step, 801),
        np.linspace(a0 - 2 * step, a0 + 2 * step, 801),
    )
    return float(best)


def _check_split(task: data.Dataset, n: int, n_test: int, dim: int):
    assert task.x_train.shape == (n - n_test, dim) and task.x_test.shape == (
        n_test,
        dim,
    )
    assert task.x_train.dtype == np.float32 and task.y_train.dtype == np.int64
    assert task.boundary_distance_train.shape == (n - n_test,)
    assert task.classes == 2 and task.input_shape == (dim,)
    for labels in (task.y_train, task.y_test):
        assert abs(2 * int(labels.sum()) - len(labels)) <= 1


def test_spheres_distances_match_brute_force_nearest_points():
    radii, jitter = (1.0, 2.0), 0.5
    task = data.spheres(40, 2, radii=radii, seed=3)
    _check_split(task, 40, 10, 2)
    boundary = sum(radii) / 2
    x_all = np.concatenate([task.x_train[:4], task.x_test[:2]])
    y_all = np.concatenate([task.y_train[:4], task.y_test[:2]])
    d_all = np.concatenate(
        [task.boundary_distance_train[:4], task.boundary_distance_test[:2]]
    )
    for x, label, distance in zip(x_all, y_all, d_all, strict=True):
        nearest = _nearest_on_circle(x.astype(np.float64), boundary)
        np.testing.assert_allclose(abs(distance), nearest, rtol=1e-5, atol=1e-6)
        assert np.sign(distance) == 2 * label - 1  # class 1 outside
    # Every point lies in its class's shell, clear of the boundary.
    distance = np.concatenate(
        [task.boundary_distance_train, task.boundary_distance_test]
    )
    labels = np.concatenate([task.y_train, task.y_test])
    assert np.all(np.sign(distance) == 2 * labels - 1)
    assert np.abs(distance).min() >= (1 - jitter) * 0.5 - 1e-6
    assert np.abs(distance).max() <= (1 + jitter) * 0.5 + 1e-6


def test_spheres_in_three_dimensions_and_without_jitter():
    task = data.spheres(12, 3, radii=(0.5, 3.0), seed=1, test_fraction=0.5)
    _check_split(task, 12, 6, 3)
    for x, distance in zip(
        task.x_train[:3], task.boundary_distance_train[:3], strict=True
    ):
        nearest = _nearest_on_sphere(x.astype(np.float64), 1.75)
        np.testing.assert_allclose(abs(distance), nearest, rtol=1e-5, atol=1e-5)
    flat = data.spheres(20, 5, radii=(1.0, 3.0), jitter=0.0)
    radius = np.linalg.norm(flat.x_train.astype(np.float64), axis=1)
    np.testing.assert_allclose(radius, np.where(flat.y_train == 1, 3.0, 1.0), rtol=1e-6)
    np.testing.assert_allclose(np.abs(flat.boundary_distance_train), 1.0, rtol=1e-6)


def test_synthetic_tasks_are_fixed_by_their_seed():
    for make in (
        lambda seed: data.spheres(30, 4, seed=seed),
        lambda seed: data.hyperplane(30, 4, 0.2, seed=seed),
    ):
        a, b, c = make(0), make(0), make(1)
        np.testing.assert_array_equal(a.x_train, b.x_train)
        np.testing.assert_array_equal(
            a.boundary_distance_test, b.boundary_distance_test
        )
        assert not np.array_equal(a.x_train, c.x_train)


def test_hyperplane_distance_is_the_signed_distance_to_a_plane():
    margin = 0.3
    task = data.hyperplane(400, 5, margin, seed=2)
    _check_split(task, 400, 100, 5)
    x = np.concatenate([task.x_train, task.x_test]).astype(np.float64)
    distance = np.concatenate(
        [task.boundary_distance_train, task.boundary_distance_test]
    ).astype(np.float64)
    labels = np.concatenate([task.y_train, task.y_test])
    # A signed distance to a hyperplane is affine with a unit gradient: fit it.
    design = np.concatenate([x, np.ones((len(x), 1))], axis=1)
    coef, *_ = np.linalg.lstsq(design, distance, rcond=None)
    normal, offset = coef[:5], coef[5]
    np.testing.assert_allclose(design @ coef, distance, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(normal), 1.0, atol=1e-6)
    assert abs(offset) < 1e-6  # the plane passes through the origin
    # Brute force in the plane: the nearest point over a grid of plane points
    # around the orthogonal projection, found without the distances above.
    basis = np.linalg.svd(np.eye(5) - np.outer(normal, normal))[0][:, :4]
    for point, value in zip(x[:3], distance[:3], strict=True):
        foot = basis.T @ point
        offsets = np.stack(
            np.meshgrid(*[np.linspace(-0.01, 0.01, 11)] * 4, indexing="ij"), -1
        ).reshape(-1, 4)
        nearest = np.min(np.linalg.norm((foot + offsets) @ basis.T - point, axis=1))
        np.testing.assert_allclose(abs(value), nearest, rtol=1e-6)
    assert np.all(np.sign(distance) == 2 * labels - 1)
    assert np.abs(distance).min() >= margin - 1e-6
    assert np.abs(distance).min() < margin + 0.02  # the margin is reached


def test_flatten_keeps_channels_fastest():
    rng = np.random.default_rng(0)
    images = rng.normal(size=(3, 2, 4, 3)).astype(np.float32)
    task = data.Dataset("toy", images, np.arange(3), images[:2], np.arange(2), 3)
    flat = data.flatten(task)
    assert flat.x_train.shape == (3, 24) and flat.x_test.shape == (2, 24)
    for p, i, j, c in [(0, 0, 0, 0), (1, 1, 2, 1), (2, 1, 3, 2), (0, 0, 1, 2)]:
        assert flat.x_train[p, (i * 4 + j) * 3 + c] == images[p, i, j, c]
    assert data.flatten(flat) is flat


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: data.spheres(0, 2), ValueError, "n: expected a positive"),
        (lambda: data.spheres(2.5, 2), TypeError, "n: expected an integer"),
        (lambda: data.spheres(10, 0), ValueError, "dim: expected a positive"),
        (lambda: data.spheres(3, 2), ValueError, "each split needs at least 2"),
        (lambda: data.spheres(10, 2, radii=(2.0, 1.0)), ValueError, "radii"),
        (lambda: data.spheres(10, 2, radii=(0.0, 1.0)), ValueError, "0 < r0 < r1"),
        (lambda: data.spheres(10, 2, radii=(1.0, np.inf)), ValueError, "finite"),
        (lambda: data.spheres(10, 2, radii=(1.0, 2.0, 3.0)), ValueError, "two"),
        (lambda: data.spheres(10, 2, jitter=1.0), ValueError, r"jitter.*\[0, 1\)"),
        (lambda: data.spheres(10, 2, test_fraction=0), ValueError, "test_fraction"),
        (lambda: data.spheres(10, 2, test_fraction=1.0), ValueError, "test_fraction"),
        (lambda: data.spheres(10, 2, test_fraction=np.nan), ValueError, "between"),
        (lambda: data.hyperplane(10, 2, 0.0), ValueError, "margin: expected a finite"),
        (lambda: data.hyperplane(10, 2, -1.0), ValueError, "margin"),
        (lambda: data.hyperplane(10, 2, np.nan), ValueError, "margin"),
        (lambda: data.hyperplane(10, -1, 0.1), ValueError, "dim"),
        (
            lambda: data.hyperplane(10, 2, 0.1, test_fraction=-0.5),
            ValueError,
            "0 and 1",
        ),
        (lambda: data.digits_split(test_fraction=1.5), ValueError, "test_fraction"),
        (lambda: data.digits_split(test_fraction=0.001), ValueError, "at least 10"),
        (lambda: data.flatten(np.zeros(3)), TypeError, "dataset: expected a Dataset"),
    ],
)
def test_bad_arguments_are_named(call, error, message):
    with pytest.raises(error, match=message):
        call()


# MNIST -----------------------------------------------------------------------


def _idx(magic: int, array: np.ndarray) -> bytes:
    return (
        struct.pack(">I", magic)
        + struct.pack(f">{array.ndim}I", *array.shape)
        + array.astype(np.uint8).tobytes()
    )


def _write(path, payload: bytes, compress: bool):
    if compress:
        path = path.with_name(path.name + ".gz")
        payload = gzip.compress(payload)
    path.write_bytes(payload)
    return path


def _mnist(directory, *, compress=False, sizes=(12, 5), shape=(4, 5), seed=0):
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, count in zip(("train", "t10k"), sizes, strict=True):
        images = rng.integers(0, 256, size=(count, *shape), dtype=np.uint8)
        labels = rng.integers(0, 10, size=count, dtype=np.uint8)
        _write(directory / f"{split}-images-idx3-ubyte", _idx(2051, images), compress)
        _write(directory / f"{split}-labels-idx1-ubyte", _idx(2049, labels), compress)
        arrays[split] = images, labels
    return arrays


@pytest.mark.parametrize("compress", [False, True])
def test_mnist_round_trips_exactly(tmp_path, compress):
    arrays = _mnist(tmp_path, compress=compress)
    task = data.load_mnist(tmp_path)
    for x, y, (images, labels) in [
        (task.x_train, task.y_train, arrays["train"]),
        (task.x_test, task.y_test, arrays["t10k"]),
    ]:
        assert x.shape == (*images.shape, 1) and x.dtype == np.float32
        assert y.dtype == np.int64
        np.testing.assert_array_equal(np.rint(x[..., 0] * 255), images)
        np.testing.assert_array_equal(x[..., 0], images.astype(np.float32) / 255)
        np.testing.assert_array_equal(y, labels)
    assert task.classes == 10 and task.boundary_distance_test is None
    assert 0.0 <= task.x_train.min() and task.x_train.max() <= 1.0
    assert data.flatten(task).x_train.shape == (12, 20)


def test_mnist_accepts_dotted_names_and_str_paths(tmp_path):
    arrays = _mnist(tmp_path)
    for stem in ("train-images", "train-labels", "t10k-images", "t10k-labels"):
        (old,) = tmp_path.glob(f"{stem}-idx*")
        old.rename(tmp_path / old.name.replace("-idx", ".idx"))
    task = data.load_mnist(str(tmp_path))
    np.testing.assert_array_equal(task.y_test, arrays["t10k"][1])


def _corrupt(tmp_path, name: str, payload: bytes):
    _mnist(tmp_path)
    (tmp_path / name).write_bytes(payload)


@pytest.mark.parametrize(
    ("setup", "error", "message"),
    [
        (lambda p: None, FileNotFoundError, "does not exist"),
        (
            lambda p: (_mnist(p), (p / "t10k-labels-idx1-ubyte").unlink()),
            FileNotFoundError,
            r"test labels \(looked for t10k-labels-idx1-ubyte, "
            r"t10k-labels.idx1-ubyte, t10k-labels-idx1-ubyte.gz",
        ),
        (
            lambda p: _corrupt(
                p,
                "train-images-idx3-ubyte",
                _idx(2051, np.zeros((12, 4, 5), np.uint8))[:-7],
            ),
            ValueError,
            r"train-images-idx3-ubyte: truncated: .*\(12, 4, 5\), 240 data bytes.* 233",
        ),
        (
            lambda p: _corrupt(
                p, "train-images-idx3-ubyte", _idx(2051, np.zeros((2, 2, 2)))[:10]
            ),
            ValueError,
            "truncated: 10 bytes, shorter than the 16-byte header",
        ),
        (
            lambda p: _corrupt(
                p, "t10k-labels-idx1-ubyte", _idx(2049, np.zeros(5)) + b"\x00"
            ),
            ValueError,
            "t10k-labels-idx1-ubyte: trailing bytes",
        ),
        (
            lambda p: _corrupt(
                p, "train-images-idx3-ubyte", _idx(2049, np.zeros(12, np.uint8))
            ),
            ValueError,
            r"train-images-idx3-ubyte: bad magic number 2049 .*expected 2051",
        ),
        (
            lambda p: _corrupt(
                p,
                "train-labels-idx1-ubyte",
                struct.pack("<I", 2049) + struct.pack(">I", 12) + bytes(12),
            ),
            ValueError,
            "train-labels-idx1-ubyte: bad magic number",
        ),
        (
            lambda p: _corrupt(
                p, "train-labels-idx1-ubyte", _idx(2049, np.zeros(11, np.uint8))
            ),
            ValueError,
            "holds 12 images but .*train-labels-idx1-ubyte holds 11 labels",
        ),
        (
            lambda p: _corrupt(
                p, "t10k-labels-idx1-ubyte", _idx(2049, np.array([1, 2, 10, 3, 12]))
            ),
            ValueError,
            r"t10k-labels-idx1-ubyte: labels out of range: expected 0..9, found 10 "
            r"at index 2 \(2 such",
        ),
        (
            lambda p: _corrupt(
                p, "t10k-images-idx3-ubyte", _idx(2051, np.zeros((5, 5, 4), np.uint8))
            ),
            ValueError,
            "t10k-images-idx3-ubyte: images of",
        ),
        (
            lambda p: (
                _mnist(p, compress=True),
                (p / "train-images-idx3-ubyte.gz").write_bytes(
                    gzip.compress(_idx(2051, np.zeros((12, 4, 5))))[:30]
                ),
            ),
            ValueError,
            "train-images-idx3-ubyte.gz: not a readable gzip file",
        ),
    ],
    ids=[
        "no-directory",
        "missing-file",
        "truncated-data",
        "truncated-header",
        "trailing-bytes",
        "bad-magic",
        "little-endian-magic",
        "count-mismatch",
        "label-range",
        "size-mismatch",
        "bad-gzip",
    ],
)
def test_mnist_errors_name_the_file(tmp_path, setup, error, message):
    directory = tmp_path / "mnist"
    setup(directory)
    with pytest.raises(error, match=message):
        data.load_mnist(directory)


def test_mnist_directory_must_be_a_directory(tmp_path):
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(NotADirectoryError, match="is a file"):
        data.load_mnist(tmp_path / "file")


# CIFAR-10 --------------------------------------------------------------------


def _channel_major(images: np.ndarray) -> np.ndarray:
    """(P, 32, 32, 3) -> (P, 3072): all red pixels row by row, then green, blue."""
    rows = []
    for image in images:
        row = []
        for c in range(3):
            for i in range(32):
                for j in range(32):
                    row.append(image[i, j, c])
        rows.append(row)
    return np.array(rows, dtype=np.uint8)


def _batch(path, batch: dict, compress=False):
    return _write(path, pickle.dumps(batch, protocol=2), compress)


def _cifar(directory, *, compress=False, seed=0):
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for name, count in [
        *((f"data_batch_{i}", 2) for i in range(1, 6)),
        ("test_batch", 3),
    ]:
        images = rng.integers(0, 256, size=(count, 32, 32, 3), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=count)]
        batch = {
            b"batch_label": name.encode(),
            b"labels": labels,
            b"data": _channel_major(images),
            b"filenames": [f"{name}_{i}.png".encode() for i in range(count)],
        }
        _batch(directory / name, batch, compress)
        arrays[name] = images, labels
    return arrays


@pytest.mark.parametrize("compress", [False, True])
def test_cifar10_round_trips_exactly(tmp_path, compress):
    arrays = _cifar(tmp_path, compress=compress)
    task = data.load_cifar10(tmp_path)
    train = [arrays[f"data_batch_{i}"] for i in range(1, 6)]
    images = np.concatenate([i for i, _ in train])
    assert task.x_train.shape == (10, 32, 32, 3) and task.x_test.shape == (3, 32, 32, 3)
    assert task.x_train.dtype == np.float32 and task.y_train.dtype == np.int64
    assert task.x_train.flags.c_contiguous
    np.testing.assert_array_equal(np.rint(task.x_train * 255), images)
    np.testing.assert_array_equal(task.x_train, images.astype(np.float32) / 255)
    np.testing.assert_array_equal(
        task.y_train, [label for _, labels in train for label in labels]
    )
    np.testing.assert_array_equal(np.rint(task.x_test * 255), arrays["test_batch"][0])
    np.testing.assert_array_equal(task.y_test, arrays["test_batch"][1])
    assert task.classes == 10 and task.input_shape == (32, 32, 3)


def test_cifar10_finds_the_unpacked_folder(tmp_path):
    arrays = _cifar(tmp_path / "cifar-10-batches-py")
    task = data.load_cifar10(tmp_path)
    np.testing.assert_array_equal(task.y_test, arrays["test_batch"][1])


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _replace_batch(directory, name, batch):
    _cifar(directory)
    if isinstance(batch, bytes):
        (directory / name).write_bytes(batch)
    else:
        _batch(directory / name, batch)


def _good(count=2, **changes):
    batch = {b"data": np.zeros((count, 3072), np.uint8), b"labels": [0] * count}
    batch.update({key.encode(): value for key, value in changes.items()})
    return batch


@pytest.mark.parametrize(
    ("name", "batch", "message"),
    [
        ("data_batch_2", _good(data=np.zeros((2, 3000), np.uint8)), r"\(P, 3072\)"),
        ("data_batch_2", _good(data=np.zeros((2, 3072), np.int16)), "uint8 array"),
        ("data_batch_2", _good(data=[[0] * 3072] * 2), "got list"),
        ("test_batch", _good(labels=[0, 1, 2]), "2 images but b'labels' holds 3"),
        (
            "test_batch",
            _good(labels=[0, 10]),
            "labels out of range.*found 10 at index 1",
        ),
        ("test_batch", _good(labels=[-1, 0]), "labels out of range.*found -1"),
        ("test_batch", _good(labels=["a", "b"]), "list of integers"),
        ("data_batch_1", {b"data": np.zeros((1, 3072), np.uint8)}, "b'labels'"),
        ("data_batch_1", [1, 2], "expected a pickled dict, got list"),
        ("data_batch_5", pickle.dumps(_good())[:-20], "not a readable CIFAR batch"),
    ],
)
def test_cifar10_errors_name_the_file(tmp_path, name, batch, message):
    _replace_batch(tmp_path, name, batch)
    with pytest.raises(ValueError, match=f"{name}: .*{message}"):
        data.load_cifar10(tmp_path)


def test_cifar10_refuses_pickles_that_name_other_objects(tmp_path):
    marker = tmp_path / "executed"
    _replace_batch(tmp_path, "data_batch_3", {b"data": _Payload(str(marker))})
    with pytest.raises(ValueError, match=r"data_batch_3: .*refusing to load .*mkdir"):
        data.load_cifar10(tmp_path)
    assert not marker.exists()


def test_cifar10_missing_directory_and_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.load_cifar10(tmp_path / "nowhere")
    _cifar(tmp_path)
    (tmp_path / "data_batch_3").unlink()
    (tmp_path / "test_batch").unlink()
    with pytest.raises(
        FileNotFoundError,
        match=r"lacks CIFAR-10 files: train batch 3 \(looked for data_batch_3, "
        r"data_batch_3.gz\); test batch \(looked for test_batch, test_batch.gz\)",
    ):
        data.load_cifar10(tmp_path)
