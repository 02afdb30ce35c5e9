"""Progress of pulls and pushes: events, a text bar, and an optional widget bar.

`pull(..., progress=callback)` calls `callback(event)` with a ProgressEvent for
every blob as it moves through its states (exists, downloading, resumed,
verifying, done / uploading, mounted, pushed). Callbacks may come from several
threads at once (`jobs` > 1); the bars below lock.

- TextProgress(stream): one line per state change, like `docker pull`, plus a
  redrawn total bar when the stream is a terminal. Works headless.
- WidgetProgress(): one ipywidgets bar per blob in a notebook.
- progress_bar(): the widget bar when ipywidgets is importable inside a
  notebook kernel, else the text bar on stdout.
"""
from __future__ import annotations

import dataclasses
import sys
import threading
from typing import IO, Any, Callable

# what happened to a blob
EXISTS, WAITING, DOWNLOADING, RESUMED = "exists", "waiting", "downloading", "resumed"
VERIFYING, DONE = "verifying", "done"
UPLOADING, MOUNTED, PUSHED, FAILED = "uploading", "mounted", "pushed", "failed"
_FINAL = {EXISTS, DONE, MOUNTED, PUSHED, FAILED}
_WORDS = {EXISTS: "Already exists", WAITING: "Waiting", DOWNLOADING: "Downloading", RESUMED: "Resuming",
          VERIFYING: "Verifying Checksum", DONE: "Pull complete", UPLOADING: "Pushing", MOUNTED: "Mounted from",
          PUSHED: "Pushed", FAILED: "Failed"}


@dataclasses.dataclass(frozen=True)
class ProgressEvent:
    digest: str
    kind: str        # "layer", "config", "manifest", "index"
    status: str      # one of the states above
    done: int = 0    # bytes so far
    total: int = 0   # bytes in all
    detail: str = ""

    @property
    def short(self) -> str:
        return self.digest.split(":", 1)[-1][:12]

    def __str__(self) -> str:
        words = _WORDS.get(self.status, self.status)
        if self.detail:
            words += f" {self.detail}"
        if self.status in (DOWNLOADING, RESUMED, UPLOADING) and self.total:
            words += f" {human(self.done)}/{human(self.total)}"
        return f"{self.short}: {words}"


ProgressCallback = Callable[[ProgressEvent], None]


def human(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1000
    return f"{n:.1f}GB"


def bar(fraction: float, width: int = 30) -> str:
    fraction = min(max(fraction, 0.0), 1.0)
    filled = int(fraction * width)
    arrow = ">" if filled < width else ""
    return "[" + "=" * filled + arrow + " " * (width - filled - len(arrow)) + "]"


class TextProgress:
    """A docker-like text progress display; deterministic lines when not on a terminal.

    Each blob gets one line per state (so `jobs=1` output is reproducible); on a
    terminal a total bar is redrawn in place with '\\r'.
    """

    def __init__(self, stream: IO[str] | None = None, width: int = 30, verbose: bool = False) -> None:
        self.stream = stream
        self.width = width
        self.verbose = verbose
        self.blobs: dict[str, ProgressEvent] = {}
        self._lock = threading.Lock()
        self._shown: dict[str, str] = {}

    @property
    def _out(self) -> IO[str]:
        return self.stream or sys.stdout

    def _tty(self) -> bool:
        try:
            return self._out.isatty()
        except (AttributeError, ValueError):
            return False

    def __call__(self, event: ProgressEvent) -> None:
        with self._lock:
            self.blobs[event.digest] = event
            out = self._out
            tty = self._tty()
            changed = self._shown.get(event.digest) != event.status
            if changed or self.verbose:
                self._shown[event.digest] = event.status
                if tty:
                    out.write("\r\033[K")
                out.write(f"{event}\n")
            if tty:
                out.write("\r" + self.total_line())
            out.flush()

    def total_line(self) -> str:
        total = sum(e.total for e in self.blobs.values())
        done = sum(e.total if e.status in _FINAL else e.done for e in self.blobs.values())
        finished = sum(1 for e in self.blobs.values() if e.status in _FINAL)
        return f"{bar(done / total if total else 1.0, self.width)} {finished}/{len(self.blobs)} blobs " \
               f"{human(done)}/{human(total)}"

    def close(self) -> None:
        if self._tty():
            self._out.write("\n")
            self._out.flush()


class WidgetProgress:
    """One ipywidgets progress bar per blob, shown in the notebook; text fallback elsewhere."""

    def __init__(self) -> None:
        import ipywidgets as widgets  # optional dependency (labkit[lab])

        self._widgets = widgets
        self.box = widgets.VBox([])
        self.bars: dict[str, Any] = {}
        self._lock = threading.Lock()
        try:
            from IPython.display import display
            display(self.box)
        except ImportError:
            pass

    def __call__(self, event: ProgressEvent) -> None:
        with self._lock:
            w = self.bars.get(event.digest)
            if w is None:
                w = self._widgets.FloatProgress(value=0.0, min=0.0, max=1.0,
                                                description=event.short,
                                                layout=self._widgets.Layout(width="60%"))
                label = self._widgets.Label()
                self.bars[event.digest] = (w, label)
                self.box.children = (*self.box.children, self._widgets.HBox([w, label]))
            w, label = self.bars[event.digest]
            w.value = 1.0 if event.status in _FINAL else (event.done / event.total if event.total else 0.0)
            w.bar_style = {"failed": "danger"}.get(event.status, "success" if event.status in _FINAL else "")
            label.value = str(event).split(": ", 1)[-1]

    def close(self) -> None:
        pass


def _in_kernel() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def progress_bar(kind: str = "auto", stream: IO[str] | None = None) -> TextProgress | WidgetProgress:
    """A progress callback: 'widget', 'text', or 'auto' (widget inside a notebook kernel if possible)."""
    if kind in ("auto", "widget"):
        if kind == "widget" or _in_kernel():
            try:
                return WidgetProgress()
            except ImportError:
                if kind == "widget":
                    raise
    return TextProgress(stream)


class Collect:
    """A progress callback that just records events (for tests and plots)."""

    def __init__(self) -> None:
        self.events: list[ProgressEvent] = []
        self._lock = threading.Lock()

    def __call__(self, event: ProgressEvent) -> None:
        with self._lock:
            self.events.append(event)

    def statuses(self, digest: str) -> list[str]:
        return [e.status for e in self.events if e.digest == digest]
