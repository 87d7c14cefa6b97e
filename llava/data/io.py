"""Shared I/O for the dataset converters and the validator.

- streaming JSON reading: records of a top-level array (or JSON Lines), or of one array
  inside a top-level object (COCO / VQA files), without loading the file;
- atomic output: JSON arrays and JSONL written record by record to a temporary file in the
  target folder and renamed into place only on success, so an interrupt never leaves a
  half-written file behind;
- images: decode checks and once-per-id copying / writing into an output folder;
- skip bookkeeping and summary tables shared by every command.
"""

from __future__ import annotations

import codecs
import io
import json
import logging
import os
import re
import shutil
import tempfile
from collections import Counter
from typing import Callable, Iterator

from PIL import Image

logger = logging.getLogger("llava.data")

CHUNK_BYTES = 1 << 20
# A single record this large is almost surely an unterminated string, not data.
MAX_RECORD_CHARS = 256 << 20


class DataError(Exception):
    """A problem with the user's data: the message says which file, which record, and what to do."""


def describe_record(index: int, record=None, id_key: str = "id") -> str:
    """'record 12 (id "abc")' — how errors point at a record."""
    where = f"record {index}"
    if isinstance(record, dict) and record.get(id_key) is not None:
        where += f" ({id_key} {record[id_key]!r})"
    return where


# -- streaming JSON reading ------------------------------------------------------------------
_WHITESPACE = re.compile(r"[ \t\n\r]*")
_NUMBER_TAIL = re.compile(r"[0-9.eE+\-]*")
_DECODER = json.JSONDecoder()


class _JsonStream:
    """A UTF-8 text buffer over a binary file, refilled on demand, that knows where it is.

    Values are decoded with `json.JSONDecoder.raw_decode` (the C scanner) straight from the
    buffer; a value cut off by the end of the buffer is retried after reading more.
    """

    def __init__(self, path: str, on_bytes: Callable[[int], object] | None = None):
        self.path = path
        self.file = open(path, "rb")
        self.decoder = codecs.getincrementaldecoder("utf-8-sig")()
        self.on_bytes = on_bytes
        self.buf = ""
        self.pos = 0
        self.eof = False
        self.line_at_buf_start = 1
        self.buf_start = 0  # absolute character offset of buf[0]
        self.last_newline = -1  # absolute offset of the last newline before buf[0]

    def close(self) -> None:
        self.file.close()

    def _fill(self) -> bool:
        """Append more text (at least as much as is pending, so retries stay linear). False at EOF."""
        if self.eof:
            return False
        if self.pos:
            newlines = self.buf.count("\n", 0, self.pos)
            if newlines:
                self.line_at_buf_start += newlines
                self.last_newline = self.buf_start + self.buf.rfind("\n", 0, self.pos)
            self.buf_start += self.pos
            self.buf = self.buf[self.pos :]
            self.pos = 0
        want = max(CHUNK_BYTES, len(self.buf))
        data = self.file.read(want)
        if self.on_bytes is not None and data:
            self.on_bytes(len(data))
        try:
            text = self.decoder.decode(data, final=not data)
        except UnicodeDecodeError as exc:
            raise DataError(
                f"{self.path}: not valid UTF-8 near line {self.line_at_buf_start + self.buf.count(chr(10))} "
                f"({exc.reason}); re-save the file as UTF-8 JSON"
            ) from None
        if not data:
            self.eof = True
        self.buf += text
        return bool(data) or bool(text)

    def location(self, pos: int | None = None) -> str:
        pos = self.pos if pos is None else pos
        line = self.line_at_buf_start + self.buf.count("\n", 0, pos)
        newline = self.buf.rfind("\n", 0, pos)
        column = pos - newline if newline >= 0 else self.buf_start + pos - self.last_newline
        return f"line {line} column {column}"

    def peek(self) -> str | None:
        """The next non-whitespace character (not consumed), or None at end of file."""
        while True:
            self.pos = _WHITESPACE.match(self.buf, self.pos).end()
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self._fill():
                return None

    def expect(self, chars: str, what: str) -> str:
        char = self.peek()
        if char is None or char not in chars:
            found = "end of file" if char is None else repr(char)
            raise DataError(f"{self.path}: expected {what} at {self.location()}, found {found}")
        self.pos += 1
        return char

    def value(self, what: str):
        """Decode the next JSON value; `what` names it in errors (e.g. 'record 12')."""
        self.peek()
        while True:
            try:
                obj, end = _DECODER.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as exc:
                if not self.eof and _maybe_cut_off(exc, len(self.buf)):
                    if len(self.buf) - self.pos > MAX_RECORD_CHARS:
                        raise DataError(
                            f"{self.path}: {what} at {self.location()} is larger than "
                            f"{MAX_RECORD_CHARS >> 20} MB or never ends (unterminated string?)"
                        ) from None
                    self._fill()
                    continue
                reason = exc.msg.replace(" starting at", "")
                raise DataError(
                    f"{self.path}: malformed JSON in {what} at {self.location(exc.pos)} ({reason}); "
                    "fix that spot or re-export the file"
                ) from None
            # A number at the end of the buffer ("12", "1.", "1e-") may continue in the next chunk.
            if (
                not self.eof
                and isinstance(obj, (int, float))
                and not isinstance(obj, bool)
                and _NUMBER_TAIL.fullmatch(self.buf, end)
                and self._fill()
            ):
                continue
            self.pos = end
            return obj


def _maybe_cut_off(exc: json.JSONDecodeError, buffer_len: int) -> bool:
    """Whether a decode error may just mean the value continues past the buffer."""
    return exc.pos >= buffer_len - 16 or exc.msg.startswith("Unterminated string")


def _iter_array_items(stream: _JsonStream, first_index: int = 0) -> Iterator:
    """Items of the array whose '[' was just consumed."""
    index = first_index
    if stream.peek() == "]":
        stream.pos += 1
        return
    while True:
        yield stream.value(f"record {index}")
        index += 1
        if stream.expect(",]", f"',' or ']' after record {index - 1}") == "]":
            return


def iter_json_records(path: str, key: str | None = None, on_bytes: Callable[[int], object] | None = None) -> Iterator:
    """Stream the records of a JSON file without loading it whole.

    key=None: the file is a top-level array `[...]` or JSON Lines (one value per line).
    key="annotations": the file is an object and records come from its "annotations" array.
    `on_bytes(n)` is called as bytes are read (drive a progress bar with it).
    """
    if not os.path.isfile(path):
        raise DataError(f"{path}: file not found; check the path")
    stream = _JsonStream(path, on_bytes)
    try:
        first = stream.peek()
        if first is None:
            raise DataError(f"{path}: file is empty; expected JSON")
        if key is None:
            if first == "[":
                stream.pos += 1
                yield from _iter_array_items(stream)
            elif first == "{":  # JSON Lines / concatenated objects
                index = 0
                while stream.peek() is not None:
                    yield stream.value(f"record {index} (line-delimited)")
                    index += 1
            else:
                raise DataError(f"{path}: expected a JSON list of records ('[' first), found {first!r}")
            if stream.peek() is not None:
                raise DataError(f"{path}: unexpected data after the records at {stream.location()}")
            return
        yield from _iter_member_array(stream, key)
    finally:
        stream.close()


def _iter_member_array(stream: _JsonStream, key: str) -> Iterator:
    stream.expect("{", f'a JSON object with a "{key}" list')
    if stream.peek() == "}":
        raise DataError(f'{stream.path}: no "{key}" list in this file; is it the right file?')
    while True:
        name = stream.value("an object key")
        if not isinstance(name, str):
            raise DataError(f"{stream.path}: malformed JSON object at {stream.location()}")
        stream.expect(":", f"':' after key \"{name}\"")
        if name == key:
            stream.expect("[", f'a list for "{key}"')
            yield from _iter_array_items(stream)
            return  # the rest of the file is not needed
        if stream.peek() == "[":  # skip big sibling lists item by item, in constant memory
            stream.pos += 1
            for _ in _iter_array_items(stream):
                pass
        else:
            stream.value(f'the value of "{name}"')
        if stream.expect(",}", "',' or '}'") == "}":
            raise DataError(f'{stream.path}: no "{key}" list in this file; is it the right file?')


# -- atomic output ---------------------------------------------------------------------------
class AtomicFile:
    """A text file written under a temporary name in the target folder, renamed on success.

    On an exception (including KeyboardInterrupt) the temporary file is removed and the
    target is left as it was.
    """

    def __init__(self, path: str, mode: str = "w"):
        self.path = path
        self.mode = mode
        self.file = None
        self.tmp_path = None

    def __enter__(self):
        folder = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(folder, exist_ok=True)
        fd, self.tmp_path = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(self.path)}.", suffix=".tmp")
        if "b" in self.mode:
            self.file = os.fdopen(fd, self.mode)
        else:
            self.file = os.fdopen(fd, self.mode, encoding="utf-8", newline="\n")
        return self.file

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None:
                self.file.flush()
                os.fsync(self.file.fileno())
            self.file.close()
            if exc_type is None:
                os.chmod(self.tmp_path, 0o644)
                os.replace(self.tmp_path, self.path)
        finally:
            if os.path.exists(self.tmp_path):
                os.remove(self.tmp_path)
        return False


def dumps(obj) -> str:
    """The one JSON serialisation used for outputs (stable bytes for identical input)."""
    return json.dumps(obj, ensure_ascii=False)


class JsonArrayWriter:
    """Writes a JSON array one record per line, optionally as a member of a top-level object.

    `envelope={"info": ..., "data_subtype": "val2014"}, key="annotations"` writes
    `{"info": ..., "data_subtype": "val2014", "annotations": [ ...records... ]}`.
    Use as a context manager; the file appears only when the block succeeds.
    """

    def __init__(self, path: str, envelope: dict | None = None, key: str | None = None):
        self.path = path
        self._atomic = AtomicFile(path)
        self._file = None
        self.count = 0
        if key is None:
            self._open, self._close = "[", "]\n"
        else:
            fields = "".join(f"{dumps(k)}: {dumps(v)}, " for k, v in (envelope or {}).items())
            self._open, self._close = "{" + fields + dumps(key) + ": [", "]}\n"

    def __enter__(self) -> "JsonArrayWriter":
        self._file = self._atomic.__enter__()
        self._file.write(self._open)
        return self

    def write(self, record) -> None:
        self.write_serialised(dumps(record))

    def write_serialised(self, text: str) -> None:
        """Append a record already serialised with `dumps`."""
        self._file.write(("\n" if self.count == 0 else ",\n") + text)
        self.count += 1

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self._file.write(("\n" if self.count else "") + self._close)
        return self._atomic.__exit__(exc_type, exc, tb)


class JsonLinesWriter:
    """Writes JSON Lines atomically (one object per line)."""

    def __init__(self, path: str):
        self.path = path
        self._atomic = AtomicFile(path)
        self._file = None
        self.count = 0

    def __enter__(self) -> "JsonLinesWriter":
        self._file = self._atomic.__enter__()
        return self

    def write(self, record) -> None:
        self._file.write(dumps(record) + "\n")
        self.count += 1

    def __exit__(self, exc_type, exc, tb):
        return self._atomic.__exit__(exc_type, exc, tb)


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
    """Run a converter's main: bad data or I/O errors become one-line messages (exit 2), Ctrl-C exit 130."""
    from tqdm.contrib.logging import logging_redirect_tqdm

    from llava.errors import debug

    setup_logging()
    try:
        with logging_redirect_tqdm():  # log lines print above the progress bar, not through it
            return main(argv)
    except (DataError, OSError) if debug() else ():  # LLAVA_DEBUG=1: the traceback instead of one line
        raise
    except DataError as exc:
        logger.error("%s", exc)
        return 2
    except OSError as exc:  # disk full, permissions, ...: say which file, not where in the code
        logger.error("%s: %s", exc.filename or "I/O error", exc.strerror or exc)
        return 2
    except KeyboardInterrupt:
        logger.error("interrupted; no partial output was written")
        return 130
