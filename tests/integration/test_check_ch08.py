"""labkit.check.ch08 judges what the engine and the kernel did: the reference answers pass, each usual
mistake gets its own hint, and hints grow from a nudge to the answer."""
from __future__ import annotations

import time

import pytest

from labkit.check import ch08, labkit_cli
from labkit.engine.containers import Engine

# Host only: chapter 08's notebook runs these checks with the reference answers on cgroup v2 in the
# VM; the wrong answers' hints are the same logic on any kernel (and cost the emulated VM minutes).


@pytest.fixture(autouse=True)
def engine_env(engine_data_root, monkeypatch):
    monkeypatch.setenv("LABKIT_DATA_ROOT", engine_data_root)
    ch08.HINTS.reset()
    yield
    leftovers, _ = Engine(engine_data_root).clear()
    assert not leftovers, "the check left containers behind"


def lk(*args):
    return labkit_cli(*args, timeout=60)


def status(name):
    return Engine().get(name).state.status


def term_then_kill(name, grace):  # the reference answer
    lk("kill", "--signal", "TERM", name)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and status(name) == "running":
        time.sleep(0.05)
    if status(name) == "running":
        lk("kill", name)


def kill_at_once(name, grace):
    lk("kill", name)


def sleep_the_grace(name, grace):
    lk("kill", "--signal", "TERM", name)
    time.sleep(grace)
    if status(name) == "running":
        lk("kill", name)


def term_only(name, grace):
    lk("kill", "--signal", "TERM", name)
    time.sleep(0.2)


def impatient(name, grace):
    lk("kill", "--signal", "TERM", name)
    time.sleep(0.2)
    if status(name) == "running":
        lk("kill", name)


def test_stop_reference_passes():
    verdict = ch08.stop_by_hand(term_then_kill)
    assert verdict, verdict
    assert "exit 143" in verdict.message and "exit 137" in verdict.message


@pytest.mark.parametrize("stop, kind, message", [
    (lambda name, grace: None, "nothing", "still running after your function returned"),
    (kill_at_once, "killed-first", "did not ask first"),
    (sleep_the_grace, "blind-wait", "exited on SIGTERM at once"),
    (term_only, "no-kill", "nothing killed it"),
    (impatient, "early-kill", "before its 2 s grace"),
    (lambda name, grace: 1 / 0, "raised", "ZeroDivisionError"),
])
def test_stop_mistakes_get_their_own_hint(stop, kind, message):
    verdict = ch08.stop_by_hand(stop)
    assert not verdict and message in verdict.message, verdict
    assert verdict.hint == f"[nudge] {ch08.STOP_HINTS[kind][0]} (check again for a more specific hint)"


def test_hints_grow_from_nudge_to_answer_and_none_before_an_attempt():
    assert not ch08.HINTS.seen  # nothing hinted before the first attempt
    hints = [ch08.stop_by_hand(kill_at_once).hint for _ in range(4)]
    assert [h.split("]")[0] for h in hints] == ["[nudge", "[pointer", "[answer", "[answer"]
    assert "labkit kill --signal TERM" in hints[1] and "def stop(name, grace)" in hints[2]


def test_flaky_reference_passes():
    verdict = ch08.flaky_service(["--restart", "on-failure", "--init"])
    assert verdict, verdict
    assert "RestartCount 3" in verdict.message


def test_flaky_a_short_grace_passes_too():
    assert ch08.flaky_service(["--restart=on-failure:5", "--stop-timeout", "1"])


@pytest.mark.parametrize("flags, kind, message", [
    ([], "no-restart", "nothing restarted it"),
    (["--restart", "on-failure:2", "--init"], "few-retries", "restarted 2 times"),
    (["--restart", "always", "--init"], "restarts-success", "restarts success too"),
    (["--restart", "sometimes"], "refused", "unknown policy"),
    (["--rm", "--restart", "on-failure"], "reserved", "remove it on exit"),
    ("--restart on-failure", "type", "list of strings"),
])
def test_flaky_mistakes_get_their_own_hint(flags, kind, message):
    verdict = ch08.flaky_service(flags)
    assert not verdict and message in verdict.message, verdict
    assert verdict.hint.startswith(f"[nudge] {ch08.FLAG_HINTS[kind][0]}")


def test_flaky_pid1_that_ignores_term_is_too_slow_to_stop():
    verdict = ch08.flaky_service(["--restart", "on-failure"])  # stop waits the default 10 s grace
    assert not verdict and "stop waited out the whole grace period" in verdict.message
    assert "PID" in verdict.hint or "signal" in verdict.hint
