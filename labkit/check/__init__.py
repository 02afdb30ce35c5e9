"""Exercise checks: each validates real kernel state and says what to fix.

A chapter's checks live in labkit/check/chNN.py. Every check returns a
Verdict, which prints as a ✓ line, or as a ✗ line with a specific hint, and
can be asserted on (`assert verdict`) so nbval fails on a wrong answer.
"""
from __future__ import annotations

import collections
import dataclasses
from typing import Any


@dataclasses.dataclass
class Verdict:
    ok: bool
    message: str
    hint: str = ""

    def __bool__(self) -> bool:
        return self.ok

    def __repr__(self) -> str:
        if self.ok:
            return f"✓ {self.message}"
        return f"✗ {self.message}" + (f"\n  hint: {self.hint}" if self.hint else "")

    def _repr_html_(self) -> str:
        import html
        color = "green" if self.ok else "#b00"
        text = html.escape(repr(self)).replace("\n", "<br>")
        return f'<pre style="color:{color}">{text}</pre>'


def passed(message: str) -> Verdict:
    return Verdict(True, message)


def failed(message: str, hint: str) -> Verdict:
    return Verdict(False, message, hint)


def all_of(*verdicts: Verdict) -> Verdict:
    """The first failing verdict, or one success that lists every check."""
    for verdict in verdicts:
        if not verdict:
            return verdict
    return passed("; ".join(v.message for v in verdicts))


TIERS = ("nudge", "pointer", "answer")


class Hints:
    """Hints in tiers: each failure of the same kind gets the next tier (nudge, pointer, answer).

    A check keeps one Hints per chapter; nothing is hinted before a first attempt, and
    `reset()` starts every exercise over (tests, or an instructor's demo).
    """

    def __init__(self) -> None:
        self.seen: collections.Counter[tuple[str, str]] = collections.Counter()

    def failed(self, exercise: str, kind: str, message: str, tiers: tuple[str, str, str]) -> Verdict:
        tier = min(self.seen[(exercise, kind)], len(tiers) - 1)
        self.seen[(exercise, kind)] += 1
        more = " (check again for a more specific hint)" if tier < len(tiers) - 1 else ""
        return failed(message, f"[{TIERS[tier]}] {tiers[tier]}{more}")

    def reset(self) -> None:
        self.seen.clear()


# --- the engine chapters' checks drive labkit as a user does: through its command line --------------
def labkit_cli(*args: str, timeout: float = 120) -> Any:
    """`labkit ARGS` in a subprocess (containers are started by separate processes, never by a
    notebook kernel), with this environment's `labkit` (a kernel's PATH may lack the venv's bin)."""
    import os
    import subprocess
    import sys

    here = os.path.join(os.path.dirname(sys.executable), "labkit")
    binary = here if os.access(here, os.X_OK) else "labkit"
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def engine():
    """The engine over this process's data root (a chapter's Workspace sets it)."""
    from .. import settings
    from ..engine.containers import Engine

    return Engine(settings.data_root())
