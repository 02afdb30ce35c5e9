"""The chapter 00/01 exercise checks against real containers: right answers pass, wrong ones get their hint."""
import contextlib

import pytest

from labkit import runtime
from labkit.check import ch00, ch01
from labkit.runtime.spec import IDMapping, Namespace

pytestmark = pytest.mark.vm


@contextlib.contextmanager
def container(make_bundle, container_id, args, start=True, **kw):
    runtime.create(container_id, make_bundle(args, **kw))
    try:
        if start:
            runtime.start(container_id)
        yield container_id
    finally:
        runtime.delete(container_id, force=True)


def test_first_container(make_bundle):
    with container(make_bundle, "chk-first", ["sleep", "30"]) as cid:
        assert ch00.first_container(cid)
    with container(make_bundle, "chk-unstarted", ["sleep", "30"], start=False) as cid:
        verdict = ch00.first_container(cid)
        assert not verdict and "not started" in verdict.message
    with container(make_bundle, "chk-sh", ["sh", "-c", "sleep 30; exit 0"]) as cid:  # sh stays PID 1
        verdict = ch00.first_container(cid)
        assert not verdict and "runs 'sh', not sleep" in verdict.message


def test_hostname_isolated(make_bundle):
    with container(make_bundle, "chk-host", ["sleep", "30"], hostname="chk-box") as cid:
        assert ch01.hostname_isolated(cid, "chk-box")
        verdict = ch01.hostname_isolated(cid, "other-name")
        assert not verdict and "its hostname is 'chk-box', not 'other-name'" in verdict.message


def test_stops_on_sigterm(make_bundle):
    with container(make_bundle, "chk-deaf", ["sleep", "30"]) as cid:
        verdict = ch01.stops_on_sigterm(cid, timeout=0.5)
        assert not verdict and "ignored SIGTERM" in verdict.message
    script = "trap 'exit 0' TERM; while true; do sleep 0.1; done"
    with container(make_bundle, "chk-polite", ["sh", "-c", script]) as cid:
        assert ch01.stops_on_sigterm(cid)
    script = "trap 'echo no' TERM; while true; do sleep 0.1; done"
    with container(make_bundle, "chk-stubborn", ["sh", "-c", script]) as cid:
        verdict = ch01.stops_on_sigterm(cid, timeout=0.5)
        assert not verdict and "handles SIGTERM but still runs" in verdict.message


def test_root_is_unprivileged(make_bundle):
    with container(make_bundle, "chk-root", ["sleep", "30"]) as cid:
        verdict = ch01.root_is_unprivileged(cid)
        assert not verdict and "IS the host's root" in verdict.message

    def userns(spec):
        spec.linux.namespaces.append(Namespace("user"))
        spec.linux.uidMappings = [IDMapping(0, 100000, 65536)]
        spec.linux.gidMappings = [IDMapping(0, 100000, 65536)]
    with container(make_bundle, "chk-rootless", ["sleep", "30"], edit=userns) as cid:
        verdict = ch01.root_is_unprivileged(cid)
        assert verdict and "uid 100000 on the host" in verdict.message
