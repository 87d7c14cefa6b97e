"""LLaVA records: the one reader, the one per-record check and the one atomic writer.

Training, the validator, model_vqa, the benchmarks and the converters all read, check and write
records through this module, so they accept and refuse the same records.

Reading streams a file without loading it whole (ijson does the parsing). What a file holds is
decided by its content, never by its name: '[' first is a list of records, '{' first is JSON
Lines (one record per line), or, given `key`, one object whose `key` list holds the records
(COCO / VQA files). Errors name the file, the line and the record.
"""

from __future__ import annotations

import codecs
import dataclasses
import gc
import json
import os
import tempfile
from typing import Callable, Iterator

import ijson

from llava.constants import DEFAULT_IMAGE_TOKEN
from llava.errors import DataError

HUMAN_ROLES = ("human", "user")
ASSISTANT_ROLES = ("gpt", "assistant")
# More undecodable bytes than this and the file is in another encoding, not damaged here and there.
MAX_BAD_BYTES = 100
_CHUNK = 1 << 16
_RESAVE = "re-save the file as UTF-8"


class UnreadableRecord(DataError):
    """A record the file itself garbles (bytes that are not UTF-8, a JSON Lines line that is not JSON).

    The rest of the file still reads: a caller may skip it (and count `kind`) instead of stopping.
    """

    def __init__(self, message: str, kind: str):
        super().__init__(message)
        self.kind = kind


class InvalidRecord(ValueError):
    """A record that cannot become a training sample; the message names it and says what to fix."""

    def __init__(self, record_id, reason: str, kind: str = "malformed_record"):
        super().__init__(f"record {record_id!r}: {reason}")
        self.record_id = record_id
        self.reason = reason
        self.kind = kind  # short category for the end-of-run summary


# -- reading ---------------------------------------------------------------------------------
def iter_records(
    path: str,
    key: str | None = None,
    on_bytes: Callable[[int], object] | None = None,
    on_error: Callable[[UnreadableRecord], object] | None = None,
) -> Iterator:
    """Stream the records of `path` (see the module docstring for what it may hold).

    `on_bytes(n)` is called as bytes are read (a progress bar). A record the file garbles raises
    `UnreadableRecord`, or, given `on_error`, is handed to it and left out. A file that stops
    parsing raises `DataError` naming the line, column and record.
    """
    if not os.path.isfile(path):
        raise DataError(f"{path}: file not found; check the path")
    with open(path, "rb") as f:
        first = _first_char(f)
        if first is None and key is None:  # JSON Lines without a line: no records
            return
        if key is not None:
            if first != "{":
                found = "an empty file" if first is None else repr(first)
                raise DataError(f'{path}: expected a JSON object with a "{key}" list, found {found}')
            yield from _iter_array(path, f, f"{key}.item", on_bytes, key=key)
        elif first == "[":
            yield from _iter_array(path, f, "item", on_bytes, on_error=on_error)
        elif first == "{":
            yield from _iter_lines(path, f, on_bytes, on_error)
        else:
            raise DataError(
                f"{path}: expected a JSON list of records ('[' first) or JSON Lines (one '{{...}}' record "
                f"per line), found {first!r}"
            )


def read_records(path: str, key: str | None = None, on_error=None) -> list:
    """`iter_records` as a list."""
    # Building millions of small dicts triggers the cycle collector again and again, for nothing:
    # records hold no cycles. Pausing it makes loading a large file about a third faster.
    enabled = gc.isenabled()
    gc.disable()
    try:
        return list(iter_records(path, key, on_error=on_error))
    finally:
        if enabled:
            gc.enable()


def load_json(path: str):
    """A whole JSON document (a benchmark's dict of questions, a config), errors naming file and line."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: file not found; check the path")
    with open(path, "rb") as f:
        data = f.read()
    try:
        return json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        line, column = _line_column(data, exc.start)
        raise DataError(f"{path} line {line} column {column}: byte {data[exc.start]:#04x} is not UTF-8; {_RESAVE}") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: malformed JSON at line {exc.lineno} column {exc.colno} ({exc.msg}); "
                        "is the file complete?") from None


def _first_char(f) -> str | None:
    """The first non-whitespace character after an optional BOM (the file is left at its start)."""
    head = f.read(4096)
    f.seek(0)
    stripped = head.removeprefix(codecs.BOM_UTF8).lstrip(b" \t\r\n")
    while not stripped and len(head) == 4096:  # a long run of blank space
        head = f.read(1 << 20)
        stripped = head.lstrip(b" \t\r\n")
    f.seek(0)
    return chr(stripped[0]) if stripped else None


def _line_column(data: bytes, offset: int) -> tuple[int, int]:
    return data.count(b"\n", 0, offset) + 1, offset - (data.rfind(b"\n", 0, offset) + 1) + 1


def _iter_lines(path, f, on_bytes, on_error) -> Iterator:
    unreported = 0  # bytes not yet passed to on_bytes: a progress bar is updated per megabyte, not per line
    for n, raw in enumerate(f, 1):
        unreported += len(raw)
        if on_bytes is not None and unreported >= _PROGRESS_STEP:
            on_bytes(unreported)
            unreported = 0
        try:
            record = _parse_line(path, n, raw)
        except UnreadableRecord as error:
            if on_error is None:
                raise
            on_error(error)
            continue
        if record is not _BLANK:
            yield record
    if on_bytes is not None and unreported:
        on_bytes(unreported)


_BLANK = object()
_PROGRESS_STEP = 1 << 20
_raw_decode = json.JSONDecoder().raw_decode


def _parse_line(path: str, n: int, raw: bytes):
    try:
        line = raw.decode("utf-8-sig" if n == 1 else "utf-8")
    except UnicodeDecodeError as exc:
        raise UnreadableRecord(
            f"{path} line {n}: byte {raw[exc.start]:#04x} at column {exc.start + 1} is not UTF-8; {_RESAVE}",
            "not_utf8") from None
    try:  # the common case, a bare record, parsed without json.loads' extra layers
        record, end = _raw_decode(line)
        if end == len(line) or line[end:].isspace():
            return record
    except json.JSONDecodeError:
        pass
    if not line.strip():
        return _BLANK
    try:
        return json.loads(line)  # leading spaces are fine; anything else gets json's own message
    except json.JSONDecodeError as exc:
        raise UnreadableRecord(
            f"{path} line {n} is not valid JSON: {exc}; a JSON Lines file holds one whole record per line",
            "malformed_json") from None


class _Utf8Source:
    """The file's bytes for ijson, BOM dropped; reading stops just before the first byte that is not UTF-8.

    ijson then reports the cut-off record, and `bad` says where the byte was.
    """

    def __init__(self, f, on_bytes):
        self.f, self.on_bytes = f, on_bytes
        self.decoder = codecs.getincrementaldecoder("utf-8")()
        self.fed = 0  # bytes handed to the parser (BOM included)
        self.bad: int | None = None  # file offset of the first byte that is not UTF-8

    def read(self, size: int = -1) -> bytes:
        if self.bad is not None:
            return b""
        data = self.f.read(size)
        if self.on_bytes is not None and data:
            self.on_bytes(len(data))
        if self.fed == 0 and data.startswith(codecs.BOM_UTF8):
            self.fed, data = len(codecs.BOM_UTF8), data[len(codecs.BOM_UTF8):]
        try:
            self.decoder.decode(data, final=not data)
        except UnicodeDecodeError as exc:
            # the decoder may hold up to 3 bytes of an unfinished character from the previous chunk
            start = max(exc.start - len(exc.object) + len(data), 0)
            self.bad = self.fed + start
            data = data[:start]
        self.fed += len(data)
        return data


def _iter_array(path, f, prefix, on_bytes, on_error=None, key=None) -> Iterator:
    source = _Utf8Source(f, on_bytes)
    index = 0
    try:
        for record in ijson.items(source, prefix, use_float=True, buf_size=_CHUNK):
            yield record
            index += 1
    except ijson.JSONError as exc:
        if source.bad is None:
            raise _malformed(path, f, source.fed, index, exc) from None
    if source.bad is not None:
        if key is not None:
            f.seek(0)
            line, column = _line_column(f.read(source.bad + 1), source.bad)
            raise DataError(f"{path} line {line} column {column}, in record {index} of \"{key}\": byte "
                            f"{_byte_at(f, source.bad):#04x} is not UTF-8; {_RESAVE}")
        yield from _damaged_records(path, f, index, on_error)
    elif key is not None and index == 0:
        _require_list(path, f, key)


def _byte_at(f, offset: int) -> int:
    f.seek(offset)
    return f.read(1)[0]


def _malformed(path, f, fed: int, index: int, exc) -> DataError:
    """Where the parse failed: json re-reads what ijson had read (this error path only) for line and column."""
    f.seek(0)
    data = f.read(fed)  # may end inside a character: replaced, the place of the error is before it
    where, reason = "", (str(exc).strip() or type(exc).__name__).splitlines()[0]
    try:
        json.loads(data.decode("utf-8-sig", errors="replace"))
    except json.JSONDecodeError as error:
        where, reason = f" at line {error.lineno} column {error.colno}", error.msg
    else:  # what Python's json reads and JSON does not allow
        reason += "; NaN and Infinity are not JSON, write null"
    return DataError(f"{path}: malformed JSON in record {index}{where} ({reason}); fix that spot or re-export the file")


def _require_list(path, f, key) -> None:
    """No record came from "key": an empty list is fine, a missing one is the wrong file."""
    f.seek(0)
    for prefix, event, _ in ijson.parse(f):
        if prefix == key and event != "map_key":
            if event != "start_array":
                raise DataError(f'{path}: "{key}" is not a list; is it the right file?')
            return
    raise DataError(f'{path}: no "{key}" list in this file; is it the right file?')


def _damaged_records(path, f, start: int, on_error) -> Iterator:
    """Records from `start` on of a list holding bytes that are not UTF-8: each record holding one is
    unreadable, the others load. Reads the whole file (only files that need it)."""
    f.seek(0)
    data = f.read()
    text, bad = _decode_marking(path, data)
    try:
        records = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: malformed JSON at line {exc.lineno} column {exc.colno} ({exc.msg}); "
                        "fix that spot or re-export the file") from None
    spans = _item_spans(text)
    garbled = {}
    for char, offset in bad:
        index = next((i for i, (begin, end) in enumerate(spans) if begin <= char < end), None)
        garbled.setdefault(index, offset)
    for index, record in enumerate(records):
        if index >= start and index not in garbled:
            yield record
        elif index in garbled:
            line, column = _line_column(data, garbled[index])
            error = UnreadableRecord(
                f"{path} line {line} column {column}, in {describe(index, record)}: byte {data[garbled[index]]:#04x} "
                f"is not UTF-8; {_RESAVE}", "not_utf8")
            if on_error is None:
                raise error
            on_error(error)
    if None in garbled:  # between records: the file's structure itself is damaged
        line, column = _line_column(data, garbled[None])
        raise DataError(f"{path} line {line} column {column}: byte {data[garbled[None]]:#04x} is not UTF-8; {_RESAVE}")


def _decode_marking(path: str, data: bytes) -> tuple[str, list]:
    """UTF-8 text of `data`, each undecodable byte as U+FFFD, with (character offset, byte offset) of each."""
    pieces, bad, start, chars = [], [], 0, 0
    while True:
        try:
            pieces.append(data[start:].decode("utf-8"))
            break
        except UnicodeDecodeError as exc:
            good = data[start:start + exc.start].decode("utf-8")
            pieces += [good, "\ufffd"]
            chars += len(good)
            bad.append((chars, start + exc.start))
            chars += 1
            start += exc.end
            if len(bad) > MAX_BAD_BYTES:
                line, column = _line_column(data, bad[0][1])
                raise DataError(
                    f"{path} has more than {MAX_BAD_BYTES} bytes that are not UTF-8 (the first at line {line} column "
                    f"{column}); is it in another encoding? Re-save it as UTF-8") from None
    text = "".join(pieces)
    if text.startswith("\ufeff"):
        text, bad = text[1:], [(char - 1, offset) for char, offset in bad]
    return text, bad


def _item_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) character offsets of each item of the JSON list in `text` (already known to parse)."""
    decoder, spans = json.JSONDecoder(), []
    pos = text.index("[") + 1
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(text) or text[pos] == "]":
            return spans
        _, end = decoder.raw_decode(text, pos)
        spans.append((pos, end))
        pos = end


def describe(index: int, record=None, id_key: str = "id") -> str:
    """'record 12 (id 'abc')': how messages point at a record."""
    where = f"record {index}"
    if isinstance(record, dict) and record.get(id_key) is not None:
        where += f" ({id_key} {record[id_key]!r})"
    return where


# -- checking --------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Problem:
    kind: str  # short category, e.g. "bad_roles"
    message: str  # what is wrong and what to do
    warning: bool = False  # trains as it is, but worth a look


def image_paths(record) -> list:
    """The record's image paths: [] for a text-only record, one or several otherwise."""
    image = record.get("image")
    if image is None:
        return []
    return list(image) if isinstance(image, (list, tuple)) else [image]


def video_path(record) -> str | None:
    """The record's video path (`"video": "clips/x.mp4"`), or None."""
    return record.get("video")


def num_visuals(record) -> int:
    """How many <image> markers the record needs: one per image, one for its video."""
    return len(image_paths(record)) + (record.get("video") is not None)


def visual_problems(record) -> list[Problem]:
    """The checks on a record's (or question's) 'image' and 'video' fields."""
    image, video = record.get("image"), record.get("video")
    if not (image is None or _is_path(image) or (isinstance(image, list) and all(map(_is_path, image)))):
        return [Problem("malformed_record", f"'image' is {image!r}; give a relative path or a list of them")]
    if not (video is None or _is_path(video)):
        return [Problem("malformed_record", f"'video' is {video!r}; give one relative path to a video file")]
    if image is not None and video is not None:
        return [Problem("malformed_record", "has both 'image' and 'video'; a record shows images or one video, not "
                                            "both: split it into two records")]
    return []


def record_problems(record) -> list[Problem]:
    """Everything wrong with a training record, errors before warnings of the same part.

    An error means training refuses the record (or skips it with --skip_invalid); the validator
    reports the same errors.
    """
    if not isinstance(record, dict):
        return [Problem("malformed_record", f"is a {type(record).__name__}, not a JSON object")]
    problems = visual_problems(record)
    if problems:
        return problems
    problems = conversation_problems(record.get("conversations"), num_visuals(record))
    if record.get("id") is None:
        problems.append(Problem("missing_id", "the record has no id", warning=True))
    return problems


def _is_path(value) -> bool:
    return isinstance(value, str) and bool(value)


def conversation_problems(turns, num_images: int) -> list[Problem]:
    """The checks on a record's turns and its <image> markers (no tokenizer needed).

    `num_images`: the images (a video counts as one) the markers stand for. A single image goes in the
    first human turn; several may sit in any turn, each marker taking the next image in order.
    """
    if not isinstance(turns, list) or not turns:
        return [Problem("malformed_record", "'conversations' must be a non-empty list of {'from', 'value'} turns")]
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str) or not isinstance(turn.get("from"), str):
            return [Problem("malformed_record", f"turn {i} is not a {{'from': str, 'value': str}} object")]
    if turns[0]["from"] == "system":  # a leading system message (ShareGPT style) replaces the template's system prompt
        return conversation_problems(turns[1:], num_images)
    problems = []
    for i, turn in enumerate(turns):
        expected = HUMAN_ROLES if i % 2 == 0 else ASSISTANT_ROLES
        if turn["from"] not in expected:
            problems.append(Problem("bad_roles", f"turn {i} is from {turn['from']!r} but turns must alternate human, "
                                                 "gpt, human, gpt, ... (or user, assistant, ...) starting with the human"))
            break
    else:
        if len(turns) < 2:
            problems.append(Problem("bad_roles", "the conversation has no assistant ('gpt') turn to learn from"))
        elif len(turns) % 2:
            problems.append(Problem("unanswered_turn", "the last human turn has no answer; it is shown but not "
                                                       "trained on", warning=True))
    empty = [i for i in range(1, len(turns), 2) if not turns[i]["value"].strip()]
    if empty:
        problems.append(Problem("empty_answer", f"turn {empty[0]} is an empty assistant answer; no answer token to "
                                                "learn from"))
    markers = sum(turn["value"].count(DEFAULT_IMAGE_TOKEN) for turn in turns)
    if markers > num_images or 0 < markers < num_images:
        problems.append(Problem("image_token_count", f"{markers} {DEFAULT_IMAGE_TOKEN} markers but {num_images} "
                                                     "image(s)/video; give one image per marker, one marker for a "
                                                     "video (or no marker at all)"))
    elif num_images == 1 and any(DEFAULT_IMAGE_TOKEN in turn["value"] for turn in turns[1:]):
        problems.append(Problem("image_token_count", f"the {DEFAULT_IMAGE_TOKEN} marker must be in the first human "
                                                     "turn"))
    elif markers and not turns[0]["value"].startswith(DEFAULT_IMAGE_TOKEN):
        problems.append(Problem("image_token_position", f"{DEFAULT_IMAGE_TOKEN} is not at the start of the first "
                                                        "human turn", warning=True))
    return problems


def question_problems(record) -> list[Problem]:
    """What is wrong with a model_vqa question record (`question_id`, `text`, optional `image` (a path or a list
    of them, placed at the <image> markers in `text` when it has them) or `video`, `category`)."""
    if not isinstance(record, dict):
        return [Problem("malformed_record", f"is a {type(record).__name__}, not a JSON object")]
    missing = [key for key in ("question_id", "text") if key not in record]
    if missing:
        return [Problem("malformed_record", f"lacks {missing}; each question needs question_id, image, text")]
    if not isinstance(record["text"], str):
        return [Problem("malformed_record", f"'text' is {record['text']!r}, not a string")]
    problems = visual_problems(record)
    if problems:
        return problems
    markers = record["text"].count(DEFAULT_IMAGE_TOKEN)
    if markers and markers != num_visuals(record):
        return [Problem("image_token_count", f"{markers} {DEFAULT_IMAGE_TOKEN} markers in 'text' but "
                                             f"{num_visuals(record)} image(s)/video; give one image per marker, or "
                                             "no marker (the images then go before the text)")]
    return []


def raise_first_error(record_id, problems: list[Problem]) -> None:
    """Training's verdict: the first error becomes InvalidRecord; warnings pass."""
    for problem in problems:
        if not problem.warning:
            raise InvalidRecord(record_id, problem.message, problem.kind)


# -- writing ---------------------------------------------------------------------------------
class AtomicFile:
    """A file written under a temporary name in the target folder and renamed into place on success.

    On an exception (KeyboardInterrupt included) the temporary file is removed and the target
    is left as it was: an interrupted run never leaves a half-written file behind.
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
    """The one JSON serialisation of a record in outputs (stable bytes for identical input)."""
    return json.dumps(obj, ensure_ascii=False)


def write_json(path: str, obj, **json_kwargs) -> str:
    """One JSON document, atomically (`json_kwargs`: indent, sort_keys, ...)."""
    with AtomicFile(path) as f:
        json.dump(obj, f, **{"ensure_ascii": False, **json_kwargs})
    return path


def write_jsonl(path: str, records) -> str:
    """JSON Lines, atomically."""
    with JsonLinesWriter(path) as out:
        for record in records:
            out.write(record)
    return path


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
    """Writes JSON Lines atomically (one record per line)."""

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


def repeated_ids(ids) -> tuple[int, str] | None:
    """(how many ids occur more than once, "'a' x3, 'b' x2[ and N more]"), or None when none repeats; None ids
    are left out. Training and model_vqa warn with it: a repeat may be meant, but it is never silent."""
    from collections import Counter

    repeated = [(key, n) for key, n in Counter(i for i in ids if i is not None).items() if n > 1]
    if not repeated:
        return None
    shown = ", ".join(f"{key!r} x{n}" for key, n in repeated[:10])
    return len(repeated), shown + (f" and {len(repeated) - 10} more" if len(repeated) > 10 else "")
