"""Part packages of a built-in GGUF split over several pip packages, as tiny folders:
the assembly tests (test_assemble.py, test_dtype.py) share them."""

from __future__ import annotations

from pathlib import Path


def install_parts(root: Path, whole: bytes, count: int = 3) -> dict[str, Path]:
    """`whole` cut into `count` byte ranges, one package folder each under `root` (one
    venv's site-packages), as `_module_dir` finds them: module -> folder."""
    cut = [i * len(whole) // count for i in range(count)] + [len(whole)]
    folders = {}
    for i in range(count):
        folder = root / f"fake_part{i + 1}"
        (folder / "data").mkdir(parents=True)
        (folder / "data" / f"part{i + 1:02d}.bin").write_bytes(whole[cut[i] : cut[i + 1]])
        folders[f"fake_part{i + 1}"] = folder
    return folders
