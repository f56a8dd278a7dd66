"""Reading an MTA's records for ``convert`` and ``ingest``: the units a converter is fed.

- Log formats (sparkpost, kumomta, pmta, postfix): one unit per line, blank lines left out.
  A file that starts with the zstd magic (KumoMTA's log segments) or the gzip magic (a
  rotated syslog) is decompressed as it is read. ``--from kumomta`` also reads a
  directory: every segment file in name order. A SparkPost or KumoMTA file holding one
  JSON array over several lines (a saved webhook body) is one unit.
- ``dsn``: one unit per message, from a Maildir (a directory with cur/ and new/), an mbox
  file, a directory of .eml files (name order) or a single message file. On stdin: an
  mbox when it starts with a "From " line, else one message.

Message bytes are decoded with ``surrogateescape`` so that the adapter gets them back
unchanged; log lines as UTF-8 with replacement characters.
"""

from __future__ import annotations

import gzip
import io
import json
import mailbox
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import zstandard

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
GZIP_MAGIC = b"\x1f\x8b"
# Formats whose file may be one JSON array over many lines (a saved webhook body).
WHOLE_DOCUMENT_FORMATS = ("sparkpost", "kumomta")
# A longer line is not a record of any of these formats; it is reported, not fed.
MAX_LINE = 32 * 1024 * 1024


class InputError(Exception):
    """The input cannot be read: missing, unreadable, not a mailbox, corrupt compression."""


@dataclass(frozen=True, slots=True)
class Unit:
    number: int  # the line or message number (its place in the input)
    label: str  # where it is, for messages on stderr: "line 12", "message 3 (new/17...)"
    text: str | None  # None: a line over MAX_LINE, not read


def units(fmt: str, path: str) -> Iterator[Unit]:
    """Every unit of ``path`` (``-``: stdin) for format ``fmt``; raises InputError."""
    try:
        if fmt == "dsn":
            yield from _messages(path)
        elif path == "-":
            yield from _lines(sys.stdin.buffer, fmt, "")
        elif Path(path).is_dir():
            if fmt != "kumomta":
                raise InputError(
                    f"{path} is a directory: only --from kumomta (log segments) and --from dsn "
                    "(a Maildir or .eml files) read one"
                )
            for segment in sorted(p for p in Path(path).iterdir() if p.is_file()):
                with segment.open("rb") as fh:
                    yield from _lines(fh, fmt, f"{segment.name} ")
        else:
            with open(path, "rb") as fh:
                yield from _lines(fh, fmt, "")
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (EOFError, gzip.BadGzipFile) as exc:
        raise InputError(f"cannot read {path}: damaged gzip data ({exc})") from None
    except zstandard.ZstdError as exc:
        raise InputError(f"cannot read {path}: damaged zstd data ({exc})") from None
    except mailbox.Error as exc:
        raise InputError(f"cannot read {path} as a mailbox: {exc}") from None


def decompressed(fh: io.BufferedReader) -> BinaryIO:
    """``fh`` itself, or a reader of its decompressed bytes when it starts with a magic."""
    head = fh.peek(4)[:4]
    if head == ZSTD_MAGIC:
        reader = zstandard.ZstdDecompressor().stream_reader(fh, read_across_frames=True)
        return io.BufferedReader(reader)
    if head[:2] == GZIP_MAGIC:
        return gzip.GzipFile(fileobj=fh)
    return fh


def read_line(fh: BinaryIO) -> bytes | None:
    """The next line (with its newline, b"" at the end); None for a line over MAX_LINE,
    whose rest is skipped."""
    line = fh.readline(MAX_LINE + 1)
    if len(line) <= MAX_LINE or line.endswith(b"\n"):
        return line
    while (rest := fh.readline(MAX_LINE)) and not rest.endswith(b"\n"):
        pass
    return None


def _lines(raw: io.BufferedReader, fmt: str, where: str) -> Iterator[Unit]:
    fh = decompressed(raw)
    number = 0
    while True:
        line = read_line(fh)
        number += 1
        if line is None:
            yield Unit(number, f"{where}line {number}", None)
            continue
        if not line:
            return
        text = line.decode("utf-8", "replace").rstrip("\r\n")
        if not text.strip():
            continue
        if number == 1 and fmt in WHOLE_DOCUMENT_FORMATS and _opens_json_document(text):
            # One array over many lines: the whole file is one webhook body.
            rest = fh.read().decode("utf-8", "replace")
            yield Unit(number, f"{where}line {number}", f"{text}\n{rest}")
            return
        yield Unit(number, f"{where}line {number}", text)


def _opens_json_document(first_line: str) -> bool:
    """A first line that starts a JSON value but is not one by itself."""
    if first_line.lstrip()[:1] not in ("[", "{"):
        return False
    try:
        json.loads(first_line)
    except ValueError:
        return True
    return False


def _messages(path: str) -> Iterator[Unit]:
    if path == "-":
        yield from _stdin_messages()
        return
    p = Path(path)
    if p.is_dir():
        if (p / "cur").is_dir() and (p / "new").is_dir():
            yield from _maildir(p, set())
        else:
            yield from _eml_dir(p, set())
        return
    with p.open("rb") as fh:
        head = fh.read(5)
        if head == b"From ":
            yield from _mbox(p, 0)
            return
        fh.seek(0)
        yield Unit(1, f"message 1 ({p.name})", _text(fh.read()))


_USEC = re.compile(r"M(\d+)")
_COUNT = re.compile(r"Q(\d+)")


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def delivery_order(name: str) -> tuple[int, int, int, str]:
    """A Maildir name's place in delivery order: its seconds, then the microseconds (``M``)
    and the counter (``Q``) of its unique part, as numbers: the names are not zero-padded,
    so ``M99`` sorts after ``M100`` as text."""
    seconds, _, rest = name.partition(".")
    unique = rest.partition(".")[0]
    usec, count = _USEC.search(unique), _COUNT.search(unique)
    return (
        int(seconds) if seconds.isdigit() else -1,
        int(usec.group(1)) if usec else -1,
        int(count.group(1)) if count else -1,
        name,
    )


def _maildir(path: Path, seen: set[str], start: int = 0) -> Iterator[Unit]:
    """The messages of a Maildir not in ``seen`` (which this fills), in delivery order
    (Maildir names start with the delivery time)."""
    box = mailbox.Maildir(path, factory=None, create=False)
    number = start
    for key in sorted(set(box.keys()) - seen, key=delivery_order):
        seen.add(key)
        try:
            raw = box.get_bytes(key)
        except (KeyError, FileNotFoundError):
            continue  # moved or deleted by a mail reader since it was listed
        number += 1
        yield Unit(number, f"message {number} ({key})", _text(raw))


def _eml_dir(path: Path, seen: set[str], start: int = 0) -> Iterator[Unit]:
    number = start
    for file in sorted(path.iterdir()):
        if file.suffix.lower() != ".eml" or not file.is_file() or file.name in seen:
            continue
        seen.add(file.name)
        number += 1
        yield Unit(number, f"message {number} ({file.name})", _text(file.read_bytes()))


def _mbox(path: Path, skip: int) -> Iterator[Unit]:
    """The messages of an mbox after the first ``skip`` ones."""
    box = mailbox.mbox(path, factory=None, create=False)
    try:
        for number, key in enumerate(box.iterkeys(), 1):
            if number > skip:
                yield Unit(number, f"message {number}", _text(box.get_bytes(key)))
    finally:
        box.close()


def _stdin_messages() -> Iterator[Unit]:
    data = sys.stdin.buffer.read()
    if not data.startswith(b"From "):
        if data.strip():
            yield Unit(1, "message 1", _text(data))
        return
    # The mailbox module reads mbox files only: give it one.
    with tempfile.TemporaryDirectory() as tmp:
        spool = Path(tmp) / "stdin.mbox"
        spool.write_bytes(data)
        yield from _mbox(spool, 0)


class MailboxPoller:
    """``--follow`` for ``dsn``: the messages that arrived since the last call, from a
    Maildir or a directory of .eml files (by name), or an mbox (those past the ones already
    read, once its size has held still for one call, so that a message being appended is
    not read half-written; an mbox emptied by another reader starts again from its first
    message)."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise InputError(f"cannot read {path}: No such file or directory")
        self._seen: set[str] = set()
        self._count = 0
        self._size_seen = -1
        self._size_read = -1

    def new_units(self) -> Iterator[Unit]:
        try:
            if self.path.is_dir():
                maildir = (self.path / "cur").is_dir() and (self.path / "new").is_dir()
                read = _maildir if maildir else _eml_dir
                for unit in read(self.path, self._seen, self._count):
                    self._count = unit.number
                    yield unit
                return
            size = os.stat(self.path).st_size
            if size != self._size_seen:
                self._size_seen = size  # changed since the last call: wait until it holds
                return
            if size == self._size_read:
                return
            if size < self._size_read:
                self._count = 0
            self._size_read = size
            for unit in _mbox(self.path, self._count):
                self._count = unit.number
                yield unit
        except OSError as exc:
            raise InputError(f"cannot read {self.path}: {exc.strerror or exc}") from None
        except mailbox.Error as exc:
            raise InputError(f"cannot read {self.path} as a mailbox: {exc}") from None


class LineFollower:
    """``tail -F`` for ``--follow``: the complete lines written to a log since the last
    call. A partial last line is held until its newline arrives. When the path names a new
    file (the log was rotated: renamed, and a new file created), the old file is read to
    its end first, then the new one from its start; a file truncated in place
    (copytruncate) is read again from its start."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.rotations = 0
        self._fh = self._open()
        self._id = self._file_id(os.fstat(self._fh.fileno()))
        self._number = 0
        self._pending = b""
        self._skipping = False  # inside a line over MAX_LINE, already reported

    def _open(self) -> BinaryIO:
        try:
            fh = open(self.path, "rb")  # noqa: SIM115 - kept open across calls, closed on rotation
        except OSError as exc:
            raise InputError(f"cannot read {self.path}: {exc.strerror or exc}") from None
        if fh.read(4)[:2] in (ZSTD_MAGIC[:2], GZIP_MAGIC):
            fh.close()
            raise InputError(
                f"cannot follow {self.path}: it is compressed (read it without --follow)"
            )
        fh.seek(0)
        return fh

    @staticmethod
    def _file_id(st: os.stat_result) -> tuple[int, int]:
        return st.st_dev, st.st_ino

    def close(self) -> None:
        self._fh.close()

    def new_units(self) -> Iterator[Unit]:
        yield from self._drain()
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return  # renamed away, its successor not created yet: keep reading the old one
        except OSError as exc:
            raise InputError(f"cannot read {self.path}: {exc.strerror or exc}") from None
        if self._file_id(st) != self._id:
            yield from self._drain()  # what was written to the old file before the switch
            if self._pending and not self._skipping:
                # The old file will not grow any more: its last line is complete.
                yield self._unit(self._pending)
            try:
                fh = self._open()
            except InputError:
                return  # gone again between stat and open: the next call looks again
            self._fh.close()
            self._fh, self._id = fh, self._file_id(os.fstat(fh.fileno()))
            self._number, self._pending, self._skipping = 0, b"", False
            self.rotations += 1
            yield from self._drain()
        elif st.st_size < self._fh.tell():
            self._fh.seek(0)
            self._number, self._pending, self._skipping = 0, b"", False
            yield from self._drain()

    def _drain(self) -> Iterator[Unit]:
        while chunk := self._fh.readline(MAX_LINE + 1):
            complete = chunk.endswith(b"\n")
            if self._skipping:
                self._skipping = not complete
                continue
            self._pending += chunk
            if len(self._pending) > MAX_LINE:
                self._number += 1
                yield Unit(self._number, f"line {self._number}", None)
                self._pending, self._skipping = b"", not complete
                continue
            if complete:
                line, self._pending = self._pending, b""
                if line.strip():
                    yield self._unit(line)
                else:
                    self._number += 1

    def _unit(self, line: bytes) -> Unit:
        self._number += 1
        text = line.decode("utf-8", "replace").rstrip("\r\n")
        return Unit(self._number, f"line {self._number}", text)
