"""Restart policies (`--restart`), Docker's restart backoff, and stop defaults.

Decisions match moby's daemon/internal/restartmanager: the delay starts at
100 ms, doubles on every restart up to 1 minute, and goes back to 100 ms
once a run lasted at least 10 s. The timer itself is the monitor's job.
"""
from __future__ import annotations

import signal
from dataclasses import dataclass

from labkit.engine.errors import Invalid

NO, ALWAYS, ON_FAILURE, UNLESS_STOPPED = "no", "always", "on-failure", "unless-stopped"
POLICIES = (NO, ALWAYS, ON_FAILURE, UNLESS_STOPPED)

BACKOFF_START = 0.1        # seconds: moby's defaultTimeout
BACKOFF_MULTIPLIER = 2
BACKOFF_MAX = 60.0         # moby's maxRestartTimeout
BACKOFF_RESET_AFTER = 10.0  # a run at least this long resets the delay

DEFAULT_STOP_SIGNAL = signal.SIGTERM
DEFAULT_STOP_TIMEOUT = 10  # seconds before SIGKILL; -1 waits forever


@dataclass(frozen=True)
class RestartPolicy:
    """Docker's HostConfig.RestartPolicy."""

    name: str = NO
    maximum_retry_count: int = 0

    def __post_init__(self) -> None:
        validate(self)

    def __str__(self) -> str:
        """The `--restart` spelling."""
        if self.name == ON_FAILURE and self.maximum_retry_count:
            return f"{ON_FAILURE}:{self.maximum_retry_count}"
        return self.name

    def to_json(self) -> dict[str, object]:
        return {"Name": self.name, "MaximumRetryCount": self.maximum_retry_count}

    @classmethod
    def from_json(cls, data: dict) -> "RestartPolicy":
        return cls(data.get("Name") or NO, int(data.get("MaximumRetryCount", 0)))


def validate(policy: RestartPolicy) -> None:
    """Docker's ValidateRestartPolicy, with its messages."""
    n, count = policy.name, policy.maximum_retry_count
    if n in (ALWAYS, UNLESS_STOPPED, NO):
        if count != 0:
            msg = "invalid restart policy: maximum retry count can only be used with 'on-failure'"
            raise Invalid(msg + (" and cannot be negative" if count < 0 else ""))
    elif n == ON_FAILURE:
        if count < 0:
            raise Invalid("invalid restart policy: maximum retry count cannot be negative")
    else:
        raise Invalid(f"invalid restart policy: unknown policy '{n}'; use one of "
                      f"'{NO}', '{ALWAYS}', '{ON_FAILURE}', or '{UNLESS_STOPPED}'")


def parse_restart_policy(spec: str) -> RestartPolicy:
    """Parse `--restart` ("no", "always", "on-failure:3", "unless-stopped")."""
    if spec == "":
        return RestartPolicy()
    name, colon, count = spec.partition(":")
    if colon and not name:
        raise Invalid("invalid restart policy format: no policy provided before colon")
    retries = 0
    if count:
        try:
            retries = int(count)
        except ValueError:
            raise Invalid("invalid restart policy format: maximum retry count must be an integer") from None
    return RestartPolicy(name, retries)


def should_restart(policy: RestartPolicy, exit_code: int, restart_count: int,
                   stopped_by_user: bool) -> bool:
    """Whether the monitor restarts a container that just exited.

    A user's `stop` always wins for "unless-stopped"; for "always" Docker
    does not restart it either (the stop cancels the restart manager), so
    the caller passes stopped_by_user=True and gets False for every policy.
    """
    if stopped_by_user or policy.name == NO:
        return False
    if policy.name in (ALWAYS, UNLESS_STOPPED):
        return True
    # on-failure: 0 means no limit on retries.
    limit = policy.maximum_retry_count
    return exit_code != 0 and (limit == 0 or restart_count < limit)


def next_backoff(previous: float, run_seconds: float) -> float:
    """The delay before the next restart, given the last delay (0 if none)."""
    if run_seconds >= BACKOFF_RESET_AFTER:
        previous = 0.0
    if previous <= 0:
        delay = BACKOFF_START
    elif previous < BACKOFF_MAX:
        delay = previous * BACKOFF_MULTIPLIER
    else:
        delay = previous
    return min(delay, BACKOFF_MAX)


def check_auto_remove(policy: RestartPolicy, auto_remove: bool) -> None:
    """`--rm` and a restart policy contradict each other (Docker refuses both)."""
    if auto_remove and policy.name != NO:
        raise Invalid("can't create 'AutoRemove' container with restart policy",
                      "drop --rm or --restart")


def parse_stop_signal(value: str | int | None) -> signal.Signals:
    """`--stop-signal`: "SIGTERM", "term", "15"; default SIGTERM (moby's ParseSignal)."""
    if value is None or value == "":
        return DEFAULT_STOP_SIGNAL
    text = str(value)
    try:
        num = int(text)
    except ValueError:
        name = text.upper()
        name = name if name.startswith("SIG") else "SIG" + name
        sig = getattr(signal.Signals, name, None)
        if sig is None:
            raise Invalid(f"Invalid signal: {text}", "see `kill -l` for signal names") from None
        return sig
    try:
        return signal.Signals(num)
    except ValueError:
        if signal.SIGRTMIN <= num <= signal.SIGRTMAX:
            return num  # type: ignore[return-value]  # real-time signals have no enum member
        raise Invalid(f"Invalid signal: {text}", "see `kill -l` for signal numbers") from None


def parse_stop_timeout(value: str | int | None) -> int:
    """`--stop-timeout` in seconds; default 10; -1 means wait forever."""
    if value is None or value == "":
        return DEFAULT_STOP_TIMEOUT
    try:
        secs = int(value)
    except (TypeError, ValueError):
        raise Invalid(f"invalid stop timeout: {value!r}", "give whole seconds, or -1") from None
    if secs < -1:
        raise Invalid(f"invalid stop timeout: {secs}", "give whole seconds ≥ 0, or -1 to wait forever")
    return secs
