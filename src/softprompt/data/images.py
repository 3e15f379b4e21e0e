"""Image datasets: built-in Fashion-MNIST (IDX files) and the user's folders or CSV files.

An image example is an `Example` whose `text` is a reference to the image: a file path,
or ``idx:<images file>#<row>`` for a row of an IDX file. Keeping references (not pixels)
in examples lets image data go through the same splits, training loop and evaluation as
text; the image task (`softprompt.tasks.image`) opens them batch by batch.

Every problem a user can fix (a missing folder, a file that is not an image, a class
folder with no images, a CSV row naming a missing file) raises `DataError` naming the file.
"""

from __future__ import annotations

import csv
import functools
import gzip
import os
from pathlib import Path
from typing import Any

import numpy as np

from softprompt.data.records import Dataset, Example
from softprompt.data.splits import BUILTIN_SEED, allocate, label_counts, split_by_quotas
from softprompt.errors import DataError

IDX_PREFIX = "idx:"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")
FASHION_MNIST_LABELS = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
FASHION_MNIST_VALIDATION_PER_LABEL = 100  # 1,000 rows cut from train, seed 0, stratified
FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)
FASHION_MNIST_INSTALL = "apt-get install dataset-fashion-mnist"  # Debian, as root
SPLIT_FOLDERS = {"train": ("train",), "validation": ("validation", "val"), "test": ("test",)}


# ---------------------------------------------------------------------------
# IDX files (Fashion-MNIST)


def _open_maybe_gz(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


@functools.lru_cache(maxsize=8)
def read_idx(path: str) -> np.ndarray:
    """An IDX file (ubyte, optionally gzipped) as a uint8 array: (N,) labels or (N, H, W) images."""
    file = Path(path)
    try:
        with _open_maybe_gz(file) as handle:
            raw = handle.read()
    except (OSError, EOFError) as e:
        raise DataError(f"{file}: cannot read this IDX file ({e}); reinstall it") from e
    if len(raw) < 8 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{file}: not an unsigned-byte IDX file (bad magic number)")
    dims = raw[3]
    header = 4 + 4 * dims
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    if len(raw) != header + int(np.prod(shape)):
        raise DataError(f"{file}: IDX header says {shape} but the file has another size")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def fashion_mnist_dirs() -> list[Path]:
    """Where Fashion-MNIST may be: Debian's folder, or a copy unpacked from the .deb
    without root (``apt-get download dataset-fashion-mnist && dpkg -x ...``, as
    scripts/setup.sh does) under ``$SOFTPROMPT_HOME/datasets``."""
    from softprompt.data._paths import softprompt_home

    unpacked = softprompt_home() / "datasets" / "deb" / "usr/share/datasets/fashion-mnist"
    env = os.environ.get("SOFTPROMPT_FASHION_MNIST")
    return (
        [Path(p) for p in ([env] if env else [])]
        + [Path(p) for p in FASHION_MNIST_DIRS]
        + [unpacked]
    )


def locate_fashion_mnist() -> Path | None:
    for folder in fashion_mnist_dirs():
        if (folder / "train-images-idx3-ubyte.gz").is_file():
            return folder
    return None


def read_fashion_mnist(folder: Path) -> tuple[list[Example], list[Example], list[Example]]:
    """Train 59,000 / validation 1,000 (100 per class, seeded, from train) / test 10,000."""

    def split(images: str, labels: str) -> list[Example]:
        image_file, label_file = folder / images, folder / labels
        ys = read_idx(str(label_file))
        n = read_idx(str(image_file)).shape[0]
        if n != ys.shape[0]:
            raise DataError(f"{image_file}: {n} images but {label_file} has {ys.shape[0]} labels")
        return [
            Example(text=f"{IDX_PREFIX}{image_file}#{i}", label=FASHION_MNIST_LABELS[int(y)])
            for i, y in enumerate(ys)
        ]

    train = split("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz")
    test = split("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
    quota = {label: FASHION_MNIST_VALIDATION_PER_LABEL for label in FASHION_MNIST_LABELS}
    validation, train = split_by_quotas(train, [quota], BUILTIN_SEED)
    return train, validation, test


# ---------------------------------------------------------------------------
# opening one image reference


def open_image(ref: str) -> Any:
    """A PIL image for an example's reference (a path or an ``idx:`` row)."""
    from PIL import Image, UnidentifiedImageError

    if ref.startswith(IDX_PREFIX):
        file, _, row = ref[len(IDX_PREFIX) :].rpartition("#")
        return Image.fromarray(read_idx(file)[int(row)])
    path = Path(ref).expanduser()
    if not path.is_file():
        raise DataError(f"{ref}: no such image file; give the path of a PNG/JPEG image")
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DataError(f"{path}: not a readable image ({e}); replace or remove it") from e


def check_image(path: Path) -> None:
    """Fail on a file that is not a decodable image (header and data both checked)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.verify()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise DataError(
            f"{path}: not a readable image ({type(e).__name__}: {e}); "
            "replace it or move it out of the dataset"
        ) from e


# ---------------------------------------------------------------------------
# user data: class folders or a CSV of path,label


def _class_folder(folder: Path) -> list[Example]:
    """One sub-folder per class, as torchvision's ImageFolder reads it."""
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(
            f"{folder}: no class folders; put each class's images in a sub-folder named "
            "after the class (folder/cat/1.png, folder/dog/2.png)"
        )
    examples = []
    for cls in classes:
        files = sorted(p for p in cls.rglob("*") if p.is_file() and not p.name.startswith("."))
        if not files:
            raise DataError(f"{cls}: the class {cls.name!r} has no images; add some or remove it")
        for file in files:
            check_image(file)
            examples.append(Example(text=str(file), label=cls.name))
    return examples


def _split_folders(folder: Path) -> dict[str, Path]:
    found = {}
    for split, names in SPLIT_FOLDERS.items():
        for name in names:
            if (folder / name).is_dir():
                found[split] = folder / name
    return found


def is_image_csv(path: Path, column: str) -> bool:
    """A CSV whose image column (the given one, else `path` or `image`) names image files."""
    if path.suffix.lower() != ".csv" or not path.is_file():
        return False
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            row = next(reader, None)
    except (OSError, UnicodeDecodeError, csv.Error):
        return False
    if row is None:
        return False
    key = _image_column(list(row), column)
    return key is not None and str(row[key]).lower().endswith(IMAGE_EXTENSIONS)


def _image_column(header: list[str], column: str) -> str | None:
    for key in (column, "path", "image"):
        if key in header:
            return key
    return None


def _csv_examples(path: Path, column: str, label_column: str) -> list[Example]:
    """Rows path,label; relative paths are relative to the CSV's folder."""
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        header = list(reader.fieldnames or [])
        key = _image_column(header, column)
        if key is None or label_column not in header:
            raise DataError(
                f"{path}: an image CSV needs a path column (path or image, or --text-column) "
                f"and a label column ({label_column!r}, or --label-column); it has {header}"
            )
        examples = []
        for line, row in enumerate(reader, start=2):
            file = Path(row[key] or "")
            file = file if file.is_absolute() else path.parent / file
            if not row[key] or not file.is_file():
                raise DataError(f"{path}, line {line}: image file {str(file)!r} does not exist")
            if not (row[label_column] or "").strip():
                raise DataError(f"{path}, line {line}: empty label in column {label_column!r}")
            check_image(file)
            examples.append(Example(text=str(file), label=row[label_column].strip()))
    if not examples:
        raise DataError(f"{path}: no rows; add one path,label row per image")
    return examples


def _read_source(path: Path, column: str, label_column: str) -> list[Example]:
    if path.is_dir():
        return _class_folder(path)
    return _csv_examples(path, column, label_column)


def load_images(
    source: Path,
    *,
    column: str = "path",
    label_column: str = "label",
    seed: int = 0,
    validation_fraction: float = 0.1,
    test_fraction: float = 0.1,
) -> Dataset:
    """An image folder (class sub-folders, or train/ val/ test/ each holding class
    sub-folders) or a CSV of path,label; splits not given are cut seeded and stratified."""
    if not source.exists():
        raise DataError(
            f"{source}: no such image folder or CSV file; give a folder with one sub-folder "
            "per class, or a CSV of path,label"
        )
    given = _split_folders(source) if source.is_dir() else {}
    if given and "train" not in given:
        raise DataError(f"{source}: has {sorted(given)} folders but no train/ folder")
    if given:
        parts = {split: _class_folder(folder) for split, folder in given.items()}
        train = parts["train"]
        rest: list[list[Example]] = []
        wanted = [s for s in ("test", "validation") if s not in parts]
        fractions = {"test": test_fraction, "validation": validation_fraction}
        quotas = [allocate(round(len(train) * fractions[s]), label_counts(train)) for s in wanted]
        *rest, train = split_by_quotas(train, quotas, seed) if wanted else [train]
        parts.update(dict(zip(wanted, rest, strict=True)), train=train)
    else:
        examples = _read_source(source, column, label_column)
        counts = label_counts(examples)
        quotas = [
            allocate(round(len(examples) * f), counts) for f in (test_fraction, validation_fraction)
        ]
        test, validation, train = split_by_quotas(examples, quotas, seed)
        parts = {"train": train, "validation": validation, "test": test}
    labels = sorted({e.label for e in parts["train"]})
    for split, rows in parts.items():
        unknown = sorted({e.label for e in rows} - set(labels))
        if unknown:
            raise DataError(f"{source}: {split} has classes {unknown} that train does not have")
    if len(labels) < 2:
        raise DataError(f"{source}: found {len(labels)} class(es) {labels}; need at least 2")
    return Dataset(
        name=str(source),
        task="classification",
        labels=labels,
        train=parts["train"],
        validation=parts["validation"],
        test=parts["test"],
        description=f"images from {source}",
    )
