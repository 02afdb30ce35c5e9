"""Docker's time spellings, with nanoseconds kept as ints (datetime stops at µs).

- `rfc3339_nano`: Go's time.RFC3339Nano, trailing zeros trimmed (inspect, json-file logs)
- `rfc3339_nano_fixed`: always 9 digits (`docker logs -t`, so columns line up)
- unset times print as Go's zero time, "0001-01-01T00:00:00Z", as `docker inspect` does
"""
from __future__ import annotations

import calendar
import re
import time

from labkit.engine.errors import Invalid

ZERO_TIME = "0001-01-01T00:00:00Z"
_NS = 1_000_000_000

_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})(?:[Tt ](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?"
    r"(Z|z|[+-]\d{2}:\d{2})?)?$")
# Go's time.ParseDuration units, largest first so "ms" wins over "m".
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_NS = {"ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000, "s": _NS,
            "m": 60 * _NS, "h": 3600 * _NS}


def now_ns() -> int:
    return time.time_ns()


def _split(ns: int) -> tuple[str, int]:
    secs, frac = divmod(ns, _NS)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)), frac


def rfc3339_nano(ns: int | None) -> str:
    """UTC RFC 3339 with up to 9 fraction digits, trailing zeros trimmed."""
    if ns is None:
        return ZERO_TIME
    base, frac = _split(ns)
    digits = f"{frac:09d}".rstrip("0")
    return f"{base}.{digits}Z" if digits else f"{base}Z"


def rfc3339_nano_fixed(ns: int) -> str:
    """UTC RFC 3339 with exactly 9 fraction digits, as `docker logs -t` prints."""
    base, frac = _split(ns)
    return f"{base}.{frac:09d}Z"


def parse_rfc3339(text: str) -> int | None:
    """Nanoseconds since the epoch; None for Docker's zero time. No zone = UTC."""
    if text in ("", ZERO_TIME):
        return None
    m = _RFC3339.match(text.strip())
    if not m:
        raise Invalid(f"cannot parse {text!r} as an RFC 3339 time",
                      "use e.g. 2024-01-02T15:04:05Z or 2024-01-02T15:04:05.123456789+01:00")
    y, mo, d, hh, mm, ss, frac, zone = m.groups()
    secs = calendar.timegm((int(y), int(mo), int(d), int(hh or 0), int(mm or 0), int(ss or 0)))
    if zone and zone not in ("Z", "z"):
        sign = 1 if zone[0] == "+" else -1
        secs -= sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    return secs * _NS + int((frac or "").ljust(9, "0") or 0)


def parse_duration(text: str) -> int:
    """Go's time.ParseDuration ("1h30m", "500ms", "-2s") in nanoseconds."""
    s = text.strip()
    sign = -1 if s.startswith("-") else 1
    s = s.lstrip("+-")
    if s == "0":
        return 0
    pos, total = 0, 0
    for m in _DURATION_PART.finditer(s):
        if m.start() != pos:
            break
        total += round(float(m.group(1)) * _UNIT_NS[m.group(2)])
        pos = m.end()
    if not s or pos != len(s):
        raise Invalid(f"time: invalid duration {text!r}")
    return sign * total


def parse_time_arg(value: str, now: int | None = None) -> int:
    """A `--since`/`--until` value: a duration ago ("10m"), a Unix time, or RFC 3339."""
    now = now_ns() if now is None else now
    try:
        return now - parse_duration(value)
    except Invalid:
        pass
    if re.fullmatch(r"\d+(\.\d{1,9})?", value):
        secs, _, frac = value.partition(".")
        return int(secs) * _NS + int(frac.ljust(9, "0") or 0)
    ns = parse_rfc3339(value)
    if ns is None:
        raise Invalid(f"invalid time value {value!r}")
    return ns
