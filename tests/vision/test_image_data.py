"""Image data: IDX files, class folders, CSV of path,label, and one clear error per bad input."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from softprompt.api import build_model
from softprompt.backbones.tiny_vision import tiny_dinov2, write_class_images
from softprompt.data import load_dataset
from softprompt.data.images import locate_fashion_mnist, open_image, read_idx
from softprompt.errors import DataError


def _write_idx(path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(n.to_bytes(4, "big") for n in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_idx_round_trip_and_bad_magic(tmp_path):
    images = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    _write_idx(tmp_path / "x-idx3-ubyte.gz", images)
    read = read_idx(str(tmp_path / "x-idx3-ubyte.gz"))
    assert read.shape == (2, 3, 4) and np.array_equal(read, images)
    assert np.array_equal(np.asarray(open_image(f"idx:{tmp_path}/x-idx3-ubyte.gz#1")), images[1])
    (tmp_path / "bad.gz").write_bytes(gzip.compress(b"\x01\x02\x03\x04" + b"\0" * 8))
    with pytest.raises(DataError, match="bad.gz: not an unsigned-byte IDX file"):
        read_idx(str(tmp_path / "bad.gz"))


def test_fashion_mnist_builtin_from_a_copy(tmp_path, monkeypatch):
    """The built-in's splits, on a small IDX copy laid out like Debian's folder."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 110)  # 1,100 train rows, 110 per class
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", rng.integers(0, 255, (1100, 28, 28)))
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", labels)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", rng.integers(0, 255, (20, 28, 28)))
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.arange(20) % 10)
    monkeypatch.setenv("SOFTPROMPT_FASHION_MNIST", str(tmp_path))
    data = load_dataset("fashion-mnist")
    assert (len(data.train), len(data.validation), len(data.test)) == (100, 1000, 20)
    assert {e.label for e in data.validation} == set(data.labels) and len(data.labels) == 10
    assert not {e.text for e in data.train} & {e.text for e in data.validation}
    assert open_image(data.test[0].text).size == (28, 28)


def test_fashion_mnist_missing_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr("softprompt.data.images.FASHION_MNIST_DIRS", (str(tmp_path / "none"),))
    monkeypatch.setenv("SOFTPROMPT_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SOFTPROMPT_FASHION_MNIST", raising=False)
    assert locate_fashion_mnist() is None
    with pytest.raises(DataError, match="not installed.*apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist")


def test_real_fashion_mnist_splits():
    if locate_fashion_mnist() is None:
        pytest.skip("fashion-mnist not installed (scripts/setup.sh installs dataset-fashion-mnist)")
    data = load_dataset("fashion-mnist")
    assert (len(data.train), len(data.validation), len(data.test)) == (59_000, 1_000, 10_000)
    assert data.validation[0] == load_dataset("fashion-mnist").validation[0]  # fixed split


def test_class_folder_and_split_folders(tmp_path):
    write_class_images(tmp_path / "flat", per_class=10)
    data = load_dataset(str(tmp_path / "flat"))
    assert data.labels == ["left", "right"]
    assert (len(data.train), len(data.validation), len(data.test)) == (16, 2, 2)
    for split in ("train", "val", "test"):
        write_class_images(tmp_path / "split" / split, per_class=3)
    data = load_dataset(str(tmp_path / "split"))
    assert (len(data.train), len(data.validation), len(data.test)) == (6, 6, 6)


def test_csv_of_paths_relative_to_the_csv(tmp_path):
    write_class_images(tmp_path / "imgs", per_class=10)
    rows = ["path,label"] + [f"imgs/{c}/{i}.png,{c}" for c in ("left", "right") for i in range(10)]
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    data = load_dataset(str(tmp_path / "labels.csv"))
    assert data.labels == ["left", "right"] and len(data.train) == 16
    assert open_image(data.train[0].text).size == (16, 16)


# -- every bad input gets its own error, naming the file -----------------------------


def test_missing_folder(tmp_path):
    with pytest.raises(DataError, match=f"{tmp_path}/nowhere.*neither a built-in.*image folder"):
        load_dataset(str(tmp_path / "nowhere"))


def test_folder_without_class_folders(tmp_path):
    (tmp_path / "flat").mkdir()
    with pytest.raises(DataError, match="flat: no class folders"):
        load_dataset(str(tmp_path / "flat"))


def test_class_with_no_images(tmp_path):
    write_class_images(tmp_path / "d", per_class=3)
    (tmp_path / "d" / "empty").mkdir()
    with pytest.raises(DataError, match="d/empty: the class 'empty' has no images"):
        load_dataset(str(tmp_path / "d"))


def test_non_image_file(tmp_path):
    write_class_images(tmp_path / "d", per_class=3)
    (tmp_path / "d" / "left" / "notes.txt").write_text("not a picture")
    with pytest.raises(DataError, match="left/notes.txt: not a readable image"):
        load_dataset(str(tmp_path / "d"))


def test_truncated_image(tmp_path):
    write_class_images(tmp_path / "d", per_class=3)
    good = (tmp_path / "d" / "right" / "0.png").read_bytes()
    (tmp_path / "d" / "right" / "0.png").write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match="right/0.png: not a readable image"):
        load_dataset(str(tmp_path / "d"))


def test_csv_row_naming_a_missing_file(tmp_path):
    write_class_images(tmp_path / "imgs", per_class=2)
    (tmp_path / "l.csv").write_text("path,label\nimgs/left/0.png,left\nimgs/left/9.png,left\n")
    with pytest.raises(DataError, match=r"l.csv, line 3: image file .*imgs/left/9.png.* not exist"):
        load_dataset(str(tmp_path / "l.csv"))


def test_csv_without_a_label_column(tmp_path):
    write_class_images(tmp_path / "imgs", per_class=2)
    (tmp_path / "l.csv").write_text("path,kind\nimgs/left/0.png,left\n")
    with pytest.raises(DataError, match=r"l.csv: an image CSV needs .* label column \('label'"):
        load_dataset(str(tmp_path / "l.csv"))


def test_predict_on_a_missing_or_broken_image(tmp_path):
    write_class_images(tmp_path / "d", per_class=3)
    data = load_dataset(str(tmp_path / "d"))
    model = build_model(tiny_dinov2(), data, {"name": "vpt-deep"}, {"image_size": 16})
    with pytest.raises(DataError, match="nope.png: no such image file"):
        model.predict([str(tmp_path / "nope.png")])
    (tmp_path / "text.png").write_text("hello")
    with pytest.raises(DataError, match="text.png: not a readable image"):
        model.predict([str(tmp_path / "text.png")])
    out = model.predict([str(tmp_path / "d" / "left" / "0.png")])
    assert out[0]["label"] in ("left", "right") and abs(sum(out[0]["scores"].values()) - 1) < 1e-6
