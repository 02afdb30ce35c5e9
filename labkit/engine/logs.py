"""Docker's json-file log driver: format, rotating writer, filtering reader.

One JSON object per line, as Docker writes <id>-json.log:
    {"log":"hello\\n","stream":"stdout","time":"2024-01-02T15:04:05.123456789Z"}
Rotation renames <id>-json.log → .1 → .2 … up to max-file files in all.
The writer never raises on a failed write: a container must not die because
its log disk is full, so the line is dropped and counted (Docker logs an error
and carries on the same way).
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import IO, Callable, Iterable, Iterator, Mapping

from labkit.engine.errors import Invalid
from labkit.engine.timefmt import now_ns, parse_rfc3339, rfc3339_nano, rfc3339_nano_fixed

STREAMS = ("stdout", "stderr")
_SIZE = re.compile(r"^(\d+(?:\.\d+)?) ?([kKmMgGtTpP])?[iI]?[bB]?$")
_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12, "p": 10**15}


def log_path(container_dir: str, cid: str) -> str:
    """Where Docker keeps a container's log: <dir>/<id>-json.log."""
    return os.path.join(container_dir, f"{cid}-json.log")


@dataclass(frozen=True)
class LogEntry:
    stream: str   # "stdout" | "stderr"
    log: str      # the line, with its "\n" if it had one
    time: int     # ns since the epoch

    def to_json_line(self) -> bytes:
        obj = {"log": self.log, "stream": self.stream, "time": rfc3339_nano(self.time)}
        return (json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n").encode()

    @classmethod
    def from_json_line(cls, line: bytes | str) -> "LogEntry":
        obj = json.loads(line)
        return cls(obj["stream"], obj["log"], parse_rfc3339(obj["time"]) or 0)


def parse_size(text: str) -> int:
    """go-units FromHumanSize, which json-file's max-size uses: decimal, "10m" = 10**7."""
    m = _SIZE.match(text.strip())
    if not m:
        raise Invalid(f"invalid size: '{text}'", "use e.g. 10m, 512k or 1g")
    return int(float(m.group(1)) * _UNITS[(m.group(2) or "").lower()])


@dataclass(frozen=True)
class LogOptions:
    max_size: int | None = None  # bytes per file; None = never rotate
    max_file: int = 1


def parse_log_opts(opts: Mapping[str, str]) -> LogOptions:
    """`--log-opt max-size=10m --log-opt max-file=3`, with Docker's checks."""
    for key in opts:
        if key not in ("max-size", "max-file", "compress", "labels", "env", "env-regex", "tag"):
            raise Invalid(f"unknown log opt '{key}' for json-file log driver")
    size = None
    if "max-size" in opts:
        size = parse_size(opts["max-size"])
        if size <= 0:
            raise Invalid("max-size must be a positive number")
    files = 1
    if "max-file" in opts:
        try:
            files = int(opts["max-file"])
        except ValueError:
            raise Invalid(f"invalid max-file: {opts['max-file']!r}") from None
        if files < 1:
            raise Invalid("max-file cannot be less than 1")
    return LogOptions(size, files)


class JsonFileWriter:
    """Appends entries to a json-file log, rotating by size; never raises on write."""

    def __init__(self, path: str, options: LogOptions = LogOptions(),
                 opener: Callable[[str], IO[bytes]] | None = None) -> None:
        self.path = path
        self.options = options
        self._open = opener or (lambda p: open(p, "ab"))
        self.dropped = 0                     # lines lost to write errors
        self.last_error: OSError | None = None
        self._file: IO[bytes] | None = None
        self._size = 0

    def __repr__(self) -> str:
        return f"<JsonFileWriter {self.path} dropped={self.dropped}>"

    def write(self, stream: str, line: str | bytes, time_ns: int | None = None) -> bool:
        """Log one line; False (and counted) if it could not be written."""
        if stream not in STREAMS:
            raise ValueError(f"stream must be stdout or stderr, not {stream!r}")
        text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
        data = LogEntry(stream, text, now_ns() if time_ns is None else time_ns).to_json_line()
        try:
            if self._file is None:
                self._file = self._open(self.path)
                self._size = os.path.getsize(self.path) if os.path.exists(self.path) else 0
            limit = self.options.max_size
            if limit is not None and self._size > 0 and self._size + len(data) > limit:
                self._rotate()
            self._file.write(data)
            self._file.flush()
            self._size += len(data)
            return True
        except OSError as e:  # ENOSPC, EDQUOT, EIO…: drop the line, keep the container
            self.dropped += 1
            self.last_error = e
            return False

    def write_lines(self, stream: str, lines: list[bytes], time_ns: int) -> bytes:
        """Log the lines of one read (one timestamp for all: they arrived together) with one
        write and one flush, rotating between lines as `write` would; the encoded entries
        (for `logs -f` followers). Lines that cannot be written are dropped and counted."""
        if stream not in STREAMS:
            raise ValueError(f"stream must be stdout or stderr, not {stream!r}")
        tail = f',"stream":"{stream}","time":"{rfc3339_nano(time_ns)}"}}\n'
        encoded = [('{"log":' + json.dumps(line.decode("utf-8", "replace"), ensure_ascii=False) + tail).encode()
                   for line in lines]
        try:
            if self._file is None:
                self._file = self._open(self.path)
                self._size = os.path.getsize(self.path) if os.path.exists(self.path) else 0
            limit, pending = self.options.max_size, []
            for data in encoded:
                if limit is not None and self._size > 0 and self._size + len(data) > limit:
                    self._file.write(b"".join(pending))
                    pending = []
                    self._rotate()
                pending.append(data)
                self._size += len(data)
            self._file.write(b"".join(pending))
            self._file.flush()
        except OSError as e:  # ENOSPC, EDQUOT, EIO…: drop the lines, keep the container
            self.dropped += len(encoded)
            self.last_error = e
        return b"".join(encoded)

    def _rotate(self) -> None:
        assert self._file is not None
        self._file.close()
        self._file = None
        n = self.options.max_file
        if n > 1:
            for i in range(n - 1, 1, -1):  # .1→.2 … oldest falls off the end
                if os.path.exists(f"{self.path}.{i - 1}"):
                    os.replace(f"{self.path}.{i - 1}", f"{self.path}.{i}")
            os.replace(self.path, f"{self.path}.1")
        else:
            open(self.path, "wb").close()  # one file: start it again
        self._file = self._open(self.path)
        self._size = 0

    def close(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError as e:
                self.last_error = e
            self._file = None

    def __enter__(self) -> "JsonFileWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def log_files(path: str) -> list[str]:
    """The log and its rotated files, oldest first (…, .2, .1, current)."""
    rotated = []
    d, base = os.path.split(path)
    for e in os.listdir(d or ".") if os.path.isdir(d or ".") else ():
        suffix = e[len(base) + 1:]
        if e.startswith(base + ".") and suffix.isdigit():
            rotated.append((int(suffix), os.path.join(d, e)))
    files = [p for _, p in sorted(rotated, reverse=True)]
    return files + ([path] if os.path.exists(path) else [])


def entries_in(file: str) -> Iterator[LogEntry]:
    """The entries of one file; a torn line (crash, full disk) is skipped."""
    try:
        fh = open(file, "rb")
    except FileNotFoundError:  # rotated away while we listed
        return
    with fh:
        for raw in fh:
            if raw.strip():
                try:
                    yield LogEntry.from_json_line(raw)
                except (ValueError, KeyError):
                    continue


def _entries(path: str) -> Iterator[LogEntry]:
    for f in log_files(path):
        yield from entries_in(f)


def read_logs(path: str, *, tail: int | None = None, since: int | None = None,
              until: int | None = None, stdout: bool = True, stderr: bool = True) -> list[LogEntry]:
    """Entries as `docker logs` selects them.

    As in Docker, `tail` takes the last N lines of the file first; `since`
    (inclusive) / `until` (exclusive) and stream selection filter those.
    tail=None or a negative tail means all lines ("--tail all").
    """
    entries: Iterable[LogEntry] = list(_entries(path))
    if tail is not None and tail >= 0:
        entries = entries[-tail:] if tail else []  # type: ignore[index]
    wanted = {s for s, on in (("stdout", stdout), ("stderr", stderr)) if on}
    return [e for e in entries
            if e.stream in wanted
            and (since is None or e.time >= since)
            and (until is None or e.time < until)]


def parse_tail(value: str | int | None) -> int | None:
    """`--tail`: a number or "all"."""
    if value is None or value == "all":
        return None
    try:
        return int(value)
    except ValueError:
        raise Invalid(f"invalid value for tail: {value!r}", 'give a number or "all"') from None


def format_entry(entry: LogEntry, timestamps: bool = False) -> str:
    """One line as `docker logs` prints it; `-t` prefixes a fixed-width time."""
    return f"{rfc3339_nano_fixed(entry.time)} {entry.log}" if timestamps else entry.log
