"""Chapter 00/01 exercise checks: every failure mode gets its own hint (no root needed).

The checks gather facts from the kernel (`observe*`) and judge them
(`judge*`); here the judges get hand-made facts for each wrong answer.
"""
import pytest

from labkit.check import ch00, ch01, proc


def _fails(verdict, *words):
    assert not verdict, verdict
    text = f"{verdict.message} {verdict.hint}"
    for word in words:
        assert word in text, (word, text)
    assert verdict.hint, "every failure must say what to do"
    assert repr(verdict).startswith("✗")


# --- shared lifecycle hints --------------------------------------------------------------
@pytest.mark.parametrize("status, exit_code, words", [
    (None, None, ("no container 'c1'", "runtime.create")),
    ("created", None, ("not started", "runtime.start('c1')")),
    ("stopped", 0, ("already exited (exit code 0)", "long-lived")),
])
def test_lifecycle_hints(status, exit_code, words):
    _fails(proc.lifecycle_verdict("c1", status, exit_code), *words)


def test_not_an_id():
    _fails(proc.lifecycle_verdict(None, None, None), "not a container id", "return the id")
    _fails(ch00.first_container(None), "not a container id")


def test_missing_container_is_judged_without_root(tmp_path):
    _fails(ch00.first_container("nope", root=str(tmp_path)), "no container 'nope'")
    _fails(ch01.hostname_isolated("nope", "x", root=str(tmp_path)), "no container 'nope'")
    _fails(ch01.stops_on_sigterm("nope", root=str(tmp_path)), "no container 'nope'")
    _fails(ch01.root_is_unprivileged("nope", root=str(tmp_path)), "no container 'nope'")


# --- ch00: first container ------------------------------------------------------------------
def first(**kw):
    facts = dict(container_id="c1", status="running", args=["sleep", "300"], ns_pids=[4242, 1], shared=[])
    facts.update(kw)
    return ch00.judge(ch00.FirstContainerFacts(**facts))


def test_first_container_passes():
    assert first()
    assert "PID 1" in first().message


def test_first_container_wrong_program():
    _fails(first(args=["/bin/sh"]), "runs 'sh', not sleep", "['sleep', '300']")


def test_first_container_not_pid1():
    _fails(first(ns_pids=[4242]), "not PID 1", "'pid' in linux.namespaces")


def test_first_container_shares_namespaces():
    _fails(first(shared=["network", "uts"]), "shares these namespaces with the host: network, uts",
           "default namespaces")


# --- ch01 exercise 1: hostname -------------------------------------------------------------------
def hostname(name="box", **kw):
    facts = dict(container_id="c1", status="running", own_uts=True, hostname="box", host_hostname="host")
    facts.update(kw)
    return ch01.judge_hostname(ch01.HostnameFacts(**facts), name)


def test_hostname_passes():
    assert hostname()


def test_hostname_shared_uts_and_host_renamed():
    _fails(hostname(own_uts=False, hostname="box", host_hostname="box"), "HOST is now called 'box'",
           "set the host's name back")


def test_hostname_shared_uts():
    _fails(hostname(own_uts=False, hostname="host"), "shares the host's UTS namespace", "'type': 'uts'")


def test_hostname_wrong_name():
    _fails(hostname(hostname="labkit"), "its hostname is 'labkit', not 'box'", "hostname=name")


def test_hostname_same_as_host():
    _fails(hostname(name="host", hostname="host", host_hostname="host"), "so is the host", "differs")


def test_hostname_not_running():
    _fails(hostname(status="stopped", exit_code=1), "already exited (exit code 1)")


# --- ch01 exercise 2: SIGTERM -------------------------------------------------------------------------
def sigterm(**kw):
    facts = dict(container_id="c1", status="running", catches_term=True, stopped=True, exit_code_after=0)
    facts.update(kw)
    return ch01.judge_sigterm(ch01.SigtermFacts(**facts))


def test_sigterm_passes():
    assert sigterm()


def test_sigterm_no_handler():
    _fails(sigterm(catches_term=False, stopped=False), "ignored SIGTERM", "trap 'exit 0' TERM")


def test_sigterm_handler_but_keeps_running():
    _fails(sigterm(stopped=False), "still runs 3 s later", "short sleeps")


def test_sigterm_wrong_exit_code():
    _fails(sigterm(exit_code_after=143), "exit code 143", "exit 0")


def test_sigterm_created_only():
    _fails(sigterm(status="created"), "not started")


# --- ch01 exercise 3: user namespace ---------------------------------------------------------------------
def rootless(**kw):
    facts = dict(container_id="c1", status="running", own_userns=True, uid_map=[(0, 100000, 65536)],
                 host_uid=100000, inside_uid=0)
    facts.update(kw)
    return ch01.judge_rootless(ch01.RootlessFacts(**facts))


def test_rootless_passes():
    assert rootless()
    assert "uid 100000 on the host" in rootless().message


def test_rootless_without_user_namespace():
    _fails(rootless(own_userns=False, uid_map=[(0, 0, 4294967295)], host_uid=0), "IS the host's root",
           "Namespace('user')")


def test_rootless_mapped_to_host_root():
    _fails(rootless(uid_map=[(0, 0, 65536)], host_uid=0), "uid 0 on the host", "not hostID=0")


def test_rootless_host_uid_unmapped():
    _fails(rootless(uid_map=[(0, 200000, 10)], inside_uid=None), "not in its uid_map", "65534")


def test_rootless_not_root_inside():
    _fails(rootless(host_uid=101000, inside_uid=1000), "uid 1000 inside", "process.user.uid = 0")


# --- the /proc readers' pure parts --------------------------------------------------------------------------
@pytest.mark.parametrize("outside, expected", [(100000, 0), (100005, 5), (165535, 65535), (165536, None), (0, None)])
def test_inside_id(outside, expected):
    assert proc.inside_id(outside, [(0, 100000, 65536)]) == expected
