"""Chapter 08 exercises: `docker stop` by hand, and a restart policy for a flaky service.

1. `stop(name, grace)` does what `docker stop` does, without `labkit stop`: the stop
   signal (SIGTERM), up to `grace` seconds for the container to exit, then SIGKILL;
   it returns once the container has exited. The check runs two containers and times
   the learner's function on each:
   - a polite one (`--init`: tini forwards SIGTERM to `sleep`, which dies of it):
     it must end by SIGTERM (exit 143), and well before its grace is over;
   - a stubborn one (a shell as PID 1, with no handler for SIGTERM: the kernel drops
     the signal): it must get its whole grace, then die of SIGKILL (exit 137).

2. `flags` is the list of `labkit run` options for a flaky service: it crashes
   (exit 1) three times, then stays up as `sleep 300` (PID 1, no handler for SIGTERM).
   With those flags, the check
   - runs the service and waits: it must come back after each crash and end up
     running, with RestartCount 3;
   - stops it with `labkit stop`: that must take under STOP_LIMIT seconds (the
     default grace is 10 s, so a PID 1 that ignores SIGTERM cannot pass), and it
     must stay stopped;
   - runs a job that finishes (exit 0) with the same flags: it must stay exited.

Every check starts what it needs itself (`labkit run -d` in a subprocess, never in
the calling process), under random names, and removes it afterwards. Hints come in
tiers: the first failure of a kind gets a nudge, the next a pointer, the third the
answer (`HINTS.reset()` starts over).
"""
from __future__ import annotations

import contextlib
import secrets
import time
from typing import Callable, Iterator

from ..errors import LabkitError
from ..runtime.store import proc_start_time
from . import Hints, Verdict, all_of, engine, failed, labkit_cli, passed

HINTS = Hints()

STUBBORN = "while :; do sleep 1; done"  # a shell as PID 1 with no TERM handler: the kernel drops TERM
GRACE, POLITE_GRACE = 2, 10
BLIND_WAIT = 6.0     # seconds: a polite container stopped in more than this was waited for blindly
SETTLE = 10.0        # seconds the engine's record may lag behind a process that is gone

FLAKY = ('echo x >> /tries; n=$(wc -l < /tries); echo "try $n"; '
         '[ "$n" -gt 3 ] && exec sleep 300; exit 1')  # crashes 3 times, then stays up (the writable layer counts)
JOB = "echo done; exit 0"
CRASHES = 3
STOP_LIMIT = 6.0     # seconds `labkit stop` may take (its default grace is 10 s)
RESTART_DEADLINE = 120.0


# --- running labkit ------------------------------------------------------------------------------
_labkit = labkit_cli
_engine = engine


def _record(name: str):
    """The engine's record of container `name`, or None if there is none."""
    try:
        return _engine().get(name)
    except LabkitError:
        return None


def _status(name: str) -> str:
    rec = _record(name)
    return str(rec.state.status) if rec else "removed"


def _settled(name: str, pid: int) -> str:
    """The status once the record has caught up with the kernel: while PID 1 still lives, "running"
    at once; once it is gone, the record must follow within SETTLE seconds."""
    deadline = time.monotonic() + SETTLE
    while True:
        status = _status(name)
        if status != "running" or proc_start_time(pid) is not None or time.monotonic() > deadline:
            return status
        time.sleep(0.02)


@contextlib.contextmanager
def _containers() -> Iterator[list[str]]:
    """A list the check appends its container names to; all of them are removed afterwards."""
    names: list[str] = []
    try:
        yield names
    finally:
        if names:
            _labkit("rm", "-f", *names)


def _name(kind: str) -> str:
    return f"ch08-{kind}-{secrets.token_hex(4)}"


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


# --- exercise 1: docker stop by hand -------------------------------------------------------------
STOP_ANSWER = ("def stop(name, grace):\n"
               "    subprocess.run(['labkit', 'kill', '--signal', 'TERM', name])\n"
               "    deadline = time.monotonic() + grace\n"
               "    while time.monotonic() < deadline and ws.engine().get(name).state.status == 'running':\n"
               "        time.sleep(0.05)\n"
               "    if ws.engine().get(name).state.status == 'running':\n"
               "        subprocess.run(['labkit', 'kill', name])  # SIGKILL, kill's default")

STOP_HINTS = {
    "raised": ("Your function gets a container name and a grace period in seconds; it may run `labkit` "
               "commands with subprocess and read the record with ws.engine().get(name).",
               "Read the traceback above: the error is in your function, not in the container.",
               STOP_ANSWER),
    "nothing": ("`docker stop` starts by asking: it sends the container's stop signal, SIGTERM, which a "
                "program may handle to shut down cleanly.",
                "`labkit kill --signal TERM NAME` sends it; then poll ws.engine().get(NAME).state.status "
                "until it is no longer 'running', for at most `grace` seconds.",
                STOP_ANSWER),
    "killed-first": ("SIGKILL is the last resort: it gives the program no chance to finish its work.",
                     "Send SIGTERM first (`labkit kill --signal TERM NAME`), and SIGKILL only if the "
                     "container still runs once `grace` seconds have passed.",
                     STOP_ANSWER),
    "blind-wait": ("`docker stop` returns as soon as the container has exited, not after the whole grace "
                   "period.",
                   "Instead of time.sleep(grace), poll the status in a loop that ends when it is no longer "
                   "'running' or when the deadline has passed.",
                   STOP_ANSWER),
    "no-kill": ("After the grace period, `docker stop` sends the one signal that even PID 1 cannot "
                "ignore when it comes from outside the container.",
                "`labkit kill NAME` sends SIGKILL (its default signal) once the deadline has passed.",
                STOP_ANSWER),
    "early-kill": ("The grace period is a promise: the program gets that long to exit on its own.",
                   "Wait until the deadline (time.monotonic() + grace) before you send SIGKILL.",
                   STOP_ANSWER),
    "not-137": ("The stubborn container ignores SIGTERM: only SIGKILL can end it, and that exit code "
                "is 128 + 9.",
                "After the grace period send SIGKILL: `labkit kill NAME` (not another SIGTERM).",
                STOP_ANSWER),
}


def _stop_failed(kind: str, message: str) -> Verdict:
    return HINTS.failed("stop", kind, message, STOP_HINTS[kind])


def _call_stop(stop: Callable[[str, int], object], name: str, grace: int) -> float | Verdict:
    t0 = time.monotonic()
    try:
        stop(name, grace)
    except Exception as err:  # the learner's code: report, don't crash the notebook
        return _stop_failed("raised", f"your function raised {type(err).__name__}: {err}")
    return time.monotonic() - t0


def stop_by_hand(stop: Callable[[str, int], object]) -> Verdict:
    """Time `stop(name, grace)` on a container that exits on SIGTERM and on one that ignores it."""
    with _containers() as names:
        polite, stubborn = _name("polite"), _name("stubborn")
        names += [polite, stubborn]
        for name, args in ((polite, ["--init", "busybox", "sleep", "300"]),
                           (stubborn, ["busybox", "sh", "-c", STUBBORN])):
            started = _labkit("run", "-d", "--name", name, *args)
            if started.returncode != 0:
                raise LabkitError(f"the check could not start its container: {_last_line(started.stderr)}",
                                  "run `labkit doctor`")
        verdicts = []

        pid = _record(polite).state.pid
        took = _call_stop(stop, polite, POLITE_GRACE)
        if isinstance(took, Verdict):
            return took
        status, code = _settled(polite, pid), _record(polite).state.exit_code
        if status == "running":
            return _stop_failed("nothing", "the container is still running after your function returned")
        if code == 137:
            return _stop_failed("killed-first", "it died of SIGKILL (exit 137), though it would have exited on "
                                                "SIGTERM: your function did not ask first")
        if took > BLIND_WAIT:
            return _stop_failed("blind-wait", f"your function took {took:.1f} s, though the container exited "
                                              f"on SIGTERM at once (exit {code})")
        verdicts.append(passed(f"the polite container exited on SIGTERM (exit {code}), and your function "
                               f"returned well within its {POLITE_GRACE} s grace"))

        pid = _record(stubborn).state.pid
        took = _call_stop(stop, stubborn, GRACE)
        if isinstance(took, Verdict):
            return took
        status, code = _settled(stubborn, pid), _record(stubborn).state.exit_code
        if status == "running":
            return _stop_failed("no-kill", f"the container that ignores SIGTERM is still running {took:.1f} s "
                                           "later: nothing killed it")
        if took < GRACE * 0.9:
            return _stop_failed("early-kill", f"it was gone after {took:.1f} s, before its {GRACE} s grace "
                                              "was over")
        if code != 137:
            return _stop_failed("not-137", f"it exited with {code}, not 137 (SIGKILL)")
        verdicts.append(passed(f"the one that ignores SIGTERM got its {GRACE} s grace, then SIGKILL (exit 137)"))
    return all_of(*verdicts)


# --- exercise 2: a restart policy for a flaky service ---------------------------------------------
FLAGS_ANSWER = "flags = ['--restart', 'on-failure', '--init']  (or on-failure:N with N >= 3)"

FLAG_HINTS = {
    "type": ("`flags` is a list of strings, the options you would type between `labkit run` and the image.",
             "For example ['--memory', '64m', '--pids-limit', '10'] — but with the options this task needs.",
             FLAGS_ANSWER),
    "reserved": ("The check names and detaches the containers itself.",
                 "Leave out --name, -d/--detach and --rm: a container that restarts cannot be removed "
                 "on exit anyway.",
                 FLAGS_ANSWER),
    "refused": ("labkit refused to create the container: the message above says which option is wrong.",
                "`labkit run --help` lists the options; the restart policy is spelled "
                "no | on-failure[:N] | always | unless-stopped.",
                FLAGS_ANSWER),
    "no-restart": ("Something has to start the service again after it crashes, and you can ask the engine "
                   "to do that when you create the container.",
                   "`--restart` takes no, on-failure[:N], always or unless-stopped: which one restarts a "
                   "container that failed, and only then?",
                   FLAGS_ANSWER),
    "few-retries": ("Count the crashes before the service comes up for good.",
                    f"The service crashes {CRASHES} times: on-failure:N gives up after N restarts. Give it "
                    f"at least {CRASHES}, or no limit at all.",
                    FLAGS_ANSWER),
    "slow-stop": ("Section 3: which process of a container does the kernel protect from every signal it "
                  "has no handler for?",
                  "PID 1 of the service is `sleep`, which has no SIGTERM handler. Put an init in front of "
                  "it that forwards the signal (a flag of `labkit run`), or shorten the grace period.",
                  FLAGS_ANSWER),
    "restarts-success": ("A clean exit (0) is the program saying it is done, not a crash.",
                         "always and unless-stopped restart after every exit; one policy looks at the exit "
                         "code.",
                         FLAGS_ANSWER),
}


def _flags_failed(kind: str, message: str) -> Verdict:
    return HINTS.failed("flaky", kind, message, FLAG_HINTS[kind])


def _wait_restarts(name: str) -> tuple[str, int]:
    """Until the service runs for good (its 4th try) or stays down: (status, RestartCount)."""
    deadline = time.monotonic() + RESTART_DEADLINE
    while True:
        rec = _record(name)
        if rec is None:
            return "removed", 0
        status, count = str(rec.state.status), rec.state.restart_count
        if status == "exited" or (status == "running" and count >= CRASHES) or time.monotonic() > deadline:
            return status, count
        time.sleep(0.05)


def flaky_service(flags: list[str]) -> Verdict:
    """Judge `labkit run` flags on a service that crashes 3 times, then on a job that exits 0."""
    if not isinstance(flags, (list, tuple)) or not all(isinstance(f, str) for f in flags):
        return _flags_failed("type", f"flags must be a list of strings, not {flags!r}")
    words = [f.split("=", 1)[0] for f in flags]
    if any(w in ("--name", "-d", "--detach", "--rm") for w in words):
        return _flags_failed("reserved", "your flags name or detach the container, or remove it on exit")
    with _containers() as names:
        service, job = _name("service"), _name("job")
        names += [service, job]
        started = _labkit("run", "-d", "--name", service, *flags, "busybox", "sh", "-c", FLAKY)
        if started.returncode != 0:
            return _flags_failed("refused", f"labkit run refused your flags (exit {started.returncode}): "
                                            f"{_last_line(started.stderr)}")
        status, count = _wait_restarts(service)
        if status != "running":
            if count == 0:
                return _flags_failed("no-restart", f"the service crashed once (exit 1) and stayed {status}: "
                                                   "nothing restarted it")
            return _flags_failed("few-retries", f"the service was restarted {count} times, then given up "
                                                f"(status {status}); it needed {CRASHES} restarts to come up")
        came_back = passed(f"the service came back after {CRASHES} crashes (RestartCount {count}) and runs")

        t0 = time.monotonic()
        _labkit("stop", service)
        took = time.monotonic() - t0
        if took > STOP_LIMIT:
            return _flags_failed("slow-stop", f"`labkit stop` took {took:.1f} s: PID 1 of the service ignored "
                                              "SIGTERM, so stop waited out the whole grace period")
        state = _record(service).state
        if str(state.status) != "exited":  # a user's stop wins over every policy: the engine is at fault
            return failed(f"after `labkit stop` the service is {state.status}, not exited",
                          "this is not your flags' doing: run `labkit doctor`")
        stopped = passed("`labkit stop` ended it within a few seconds, and it stayed down")

        started = _labkit("run", "-d", "--name", job, *flags, "busybox", "sh", "-c", JOB)
        if started.returncode != 0:
            return _flags_failed("refused", f"labkit run refused your flags (exit {started.returncode}): "
                                            f"{_last_line(started.stderr)}")
        _labkit("wait", job)  # returns when the run is over: the record then says what comes next
        rec = _record(job)
        if str(rec.state.status) != "exited" or rec.state.restart_count:
            return _flags_failed("restarts-success", f"the job finished with exit 0, yet it is "
                                                     f"{rec.state.status} (RestartCount {rec.state.restart_count}): "
                                                     "your policy restarts success too")
        done = passed("the job that exited 0 stayed exited")
    return all_of(came_back, stopped, done)
