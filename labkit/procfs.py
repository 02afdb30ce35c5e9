"""/proc/PID/status, parsed one way for every reader (capabilities, doctor, exercise checks)."""
from __future__ import annotations


def status_fields(pid: int | str = "self") -> dict[str, str]:
    """/proc/PID/status as a dict (empty if the process is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
    except OSError:
        return {}
