"""Outputs that are not banks: an image (``png``, ``svg``, ``pdf``, ...; drawn by matplotlib when
written), an HTML page (a report), a recipe lock (YAML) and a copy of files into a folder (a bank
pulled from the Hub)."""

from __future__ import annotations

import shutil
from pathlib import Path

from ._registry import Format

#: what an image output may be (what matplotlib's Agg, SVG, PDF and PS backends write)
IMAGE_SUFFIXES = (".png", ".svg", ".pdf", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".eps", ".ps", ".svgz")


def write_image(image, f, target: Path) -> None:
    f.write(image.render(target.suffix.lstrip(".").lower()))


def write_page(report, f, target: Path) -> None:
    f.write(report.page)


def write_lock(lock, f, target: Path) -> None:
    f.write(lock.text.encode("utf-8"))


def lock_replaceable(target: Path, folder: bool) -> str | None:
    """``--lock`` replaces a lock mptkit wrote (its first line says so), nothing else."""
    from .._recipefile import LOCK_HEADER

    try:
        with open(target, encoding="utf-8", errors="replace") as f:
            first = f.readline(200).rstrip("\n")
    except OSError as e:
        return f"cannot be read ({e.strerror or e})"
    return None if first == LOCK_HEADER else "is not a lock mptkit wrote (its first line is not the lock header)"


def write_copy(copy, folder: Path, target: Path) -> None:
    for src in copy.files:
        shutil.copyfile(src, folder / Path(src).name)


IMAGE = Format(
    name="image",
    description="a picture (.png, .svg, .pdf, ...)",
    label="a picture",
    writes="image",
    suffixes=IMAGE_SUFFIXES,
    write=write_image,
)
HTML = Format(
    name="html",
    description="a self-contained HTML page (a report)",
    label="a web page",
    writes="report",
    suffixes=(".html", ".htm"),
    write=write_page,
)
LOCK = Format(
    name="recipe-lock",
    description="a recipe with every source pinned (mptkit build --lock)",
    label="a recipe lock",
    writes="lock",
    suffixes=(".yaml", ".yml"),
    write=write_lock,
    replaceable=lock_replaceable,
)
COPY = Format(
    name="copy",
    description="files copied as they are into a folder",
    label="a copy of the files",
    writes="files",
    folder=True,
    write=write_copy,
)
