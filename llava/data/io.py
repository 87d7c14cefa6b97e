"""Shared pieces of the dataset converters and the validator (records are read and written by
llava.records):

- images: decode checks and once-per-id copying / writing into an output folder;
- skip bookkeeping and summary tables shared by every command.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
from collections import Counter
from typing import Callable

from PIL import Image

from llava import errors
from llava.records import AtomicFile

logger = logging.getLogger("llava.data")


# -- images ----------------------------------------------------------------------------------
IMAGE_EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "GIF": ".gif", "WEBP": ".webp", "BMP": ".bmp", "TIFF": ".tif"}


def image_problem(source) -> str | None:
    """None when `source` (a path or bytes) decodes as an image, else a short reason.

    Decodes the whole image (a header check misses truncated files); JPEGs decode at reduced
    scale (`draft`), which still reads every byte but costs a fraction of a full decode.
    """
    try:
        if isinstance(source, (bytes, bytearray, memoryview)):
            if not len(source):
                return "empty image bytes"
            image = Image.open(io.BytesIO(bytes(source)))
        else:
            if not os.path.isfile(source):
                return "file not found"
            if os.path.getsize(source) == 0:
                return "empty file"
            image = Image.open(source)
        with image:
            if image.format == "JPEG":
                image.draft("RGB", (64, 64))
            image.load()
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError, ...
        return f"cannot decode image ({type(exc).__name__}: {exc})"
    return None


def image_format_extension(data: bytes) -> str:
    """File extension for encoded image bytes (".jpg" for JPEG), from their content."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return IMAGE_EXTENSIONS.get(image.format, "." + (image.format or "img").lower())
    except Exception:
        return ".jpg"


def _write_bytes_atomic(path: str, data: bytes) -> None:
    with AtomicFile(path, "wb") as f:
        f.write(data)


def _copy_atomic(src: str, dst: str) -> None:
    with AtomicFile(dst, "wb") as f, open(src, "rb") as source:
        shutil.copyfileobj(source, f, 1 << 20)


class ImageStore:
    """Puts each image into `folder` once per key, checked to decode first.

    `link` chooses how files that already exist on disk arrive: "copy", "symlink" or
    "hardlink". A target already present with the same size is kept (so reruns are cheap).
    Methods return the path relative to `folder`, or raise ValueError with the reason.
    """

    def __init__(self, folder: str, link: str = "copy"):
        if link not in ("copy", "symlink", "hardlink"):
            raise ValueError(f"unknown link mode {link!r}")
        self.folder = folder
        self.link = link
        self.written = 0
        self._done: dict[object, str] = {}
        self._failed: dict[object, str] = {}
        os.makedirs(folder, exist_ok=True)

    def _seen(self, key):
        if key in self._failed:
            raise ValueError(self._failed[key])
        return self._done.get(key)

    def _fail(self, key, reason: str):
        self._failed[key] = reason
        raise ValueError(reason)

    def add_file(self, key, src: str, name: str) -> str:
        done = self._seen(key)
        if done is not None:
            return done
        problem = image_problem(src)
        if problem:
            self._fail(key, f"{src}: {problem}")
        dst = os.path.join(self.folder, name)
        if not (os.path.isfile(dst) and os.path.getsize(dst) == os.path.getsize(src)):
            if os.path.lexists(dst):
                os.remove(dst)
            if self.link == "copy":
                _copy_atomic(src, dst)
            elif self.link == "symlink":
                os.symlink(os.path.abspath(src), dst)
            else:
                os.link(src, dst)
            self.written += 1
        self._done[key] = name
        return name

    def add_bytes(self, key, data: bytes, stem: str) -> str:
        done = self._seen(key)
        if done is not None:
            return done
        problem = image_problem(data)
        if problem:
            self._fail(key, problem)
        name = stem + image_format_extension(data)
        dst = os.path.join(self.folder, name)
        if not (os.path.isfile(dst) and os.path.getsize(dst) == len(data)):
            _write_bytes_atomic(dst, data)
            self.written += 1
        self._done[key] = name
        return name

    @property
    def count(self) -> int:
        return len(self._done)


# -- bookkeeping -----------------------------------------------------------------------------
class SkipLog:
    """Counts skipped records by reason and logs the first few of each reason."""

    def __init__(self, log_first: int = 5, keep_examples: int = 3):
        self.counts: Counter = Counter()
        self.examples: dict[str, list[str]] = {}
        self.log_first = log_first
        self.keep_examples = keep_examples

    def add(self, reason: str, where: str, detail: str = "") -> None:
        self.counts[reason] += 1
        examples = self.examples.setdefault(reason, [])
        if len(examples) < self.keep_examples:
            examples.append(where)
        if self.counts[reason] <= self.log_first:
            logger.warning("skipped %s: %s%s", where, reason, f" ({detail})" if detail else "")
        elif self.counts[reason] == self.log_first + 1:
            logger.warning("more records skipped for %s; counting them silently", reason)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        if not self.counts:
            return "skipped 0"
        parts = ", ".join(f"{reason}={n}" for reason, n in sorted(self.counts.items()))
        return f"skipped {self.total} ({parts})"


def format_table(headers: list[str], rows: list[list]) -> str:
    """A plain-text table with aligned columns."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")


def run_cli(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Run a data tool's main with logging and progress bars set up: its exit status, 2 with one line
    for a clear error (`llava.errors`: bad data, a file that cannot be written), 130 on Ctrl-C."""
    from tqdm.contrib.logging import logging_redirect_tqdm

    setup_logging()
    try:
        with logging_redirect_tqdm():  # log lines print above the progress bar, not through it
            return errors.status(main, argv)
    except KeyboardInterrupt:
        logger.error("interrupted; no partial output was written")
        return 130
