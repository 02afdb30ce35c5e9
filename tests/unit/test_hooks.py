"""OCI hooks: the checks, and real small shell-script hooks run as runc runs them (no root)."""
from __future__ import annotations

import json
import os
import time

import pytest

from labkit import hooks
from labkit.errors import LabkitError

STATE = {"ociVersion": "1.0.2", "id": "box", "status": "creating", "pid": 4242, "bundle": "/b",
         "annotations": {"org.example.k": "v"}}


def script(tmp_path, name: str, body: str) -> str:
    """An executable /bin/sh hook in tmp_path; $OUT in its body is tmp_path/<name>.out."""
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body.replace("$OUT", str(tmp_path / f"{name}.out")) + "\n")
    path.chmod(0o755)
    return str(path)


def out(tmp_path, name: str) -> str:
    return (tmp_path / f"{name}.out").read_text()


# --- validate ----------------------------------------------------------------------------------------
def test_good_hooks_have_no_problems():
    assert hooks.validate(None) == []
    assert hooks.validate({kind: [{"path": "/bin/true", "args": ["true"], "env": ["A=1"], "timeout": 5}]
                           for kind in hooks.KINDS}) == []
    assert hooks.validate({"poststop": [{"path": "/bin/true"}], "poststart": []}) == []


def test_problems_name_the_hook_and_the_fix():
    found = hooks.validate({
        "prestop": [{"path": "/bin/true"}],
        "poststart": {"path": "/bin/true"},
        "createRuntime": [{"path": "bin/true"}, {"args": ["x"]}, "/bin/true",
                          {"path": "/bin/true", "timeout": 0}, {"path": "/bin/true", "timeout": True},
                          {"path": "/bin/true", "timeout": "5"}, {"path": "/bin/true", "args": "true"},
                          {"path": "/bin/true", "env": ["NOEQUALS"]}],
    })
    assert len(found) == 10, found
    for part in ("hooks.prestop: unknown hook kind", "hooks.poststart must be a list",
                 "hooks.createRuntime[0].path 'bin/true' must be an absolute path", "hooks.createRuntime[1].path is missing",
                 "hooks.createRuntime[2] must be an object", "hooks.createRuntime[3].timeout must be a whole number",
                 "[4].timeout", "[5].timeout", "hooks.createRuntime[6].args must be a list of strings",
                 "hooks.createRuntime[7].env entry 'NOEQUALS' must look like NAME=value"):
        assert any(part in problem for problem in found), (part, found)
    assert hooks.validate([{"path": "/bin/true"}]) == [
        'hooks must be an object of hook lists, e.g. {"poststart": [{"path": "/bin/true"}]}']


# --- run: what a hook gets ----------------------------------------------------------------------------
def test_the_state_reaches_the_hook_on_stdin_as_runc_writes_it(tmp_path):
    hook = script(tmp_path, "h", "cat > $OUT")
    hooks.run("createRuntime", [{"path": hook}], {**STATE, "annotations": {"org.example.k": "v"}})
    assert json.loads(out(tmp_path, "h")) == STATE
    assert out(tmp_path, "h").startswith('{"ociVersion":"1.0.2","id":"box","status":"creating","pid":4242,')
    hooks.run("poststop", [{"path": hook}], {**STATE, "status": "stopped", "pid": 0, "annotations": {}})
    assert json.loads(out(tmp_path, "h")) == {"ociVersion": "1.0.2", "id": "box", "status": "stopped", "bundle": "/b"}


def test_env_is_exactly_the_hooks_own(tmp_path):
    hook = script(tmp_path, "h", "tr '\\0' '\\n' < /proc/$$/environ > $OUT")  # what execve gave it
    hooks.run("poststart", [{"path": hook, "env": ["A=1", "B=two words", "A=3"]}], STATE)
    assert sorted(out(tmp_path, "h").splitlines()) == ["A=3", "B=two words"]  # the last A wins, as in Go
    hooks.run("createRuntime", [{"path": hook, "env": []}], STATE)
    assert out(tmp_path, "h") == ""


def test_without_env_a_hook_gets_the_runtimes_or_the_default(tmp_path, monkeypatch):
    """runc: a hook without env inherits runc's environment; startContainer hooks get process.env,
    even with "env": []."""
    monkeypatch.setenv("LABKIT_HOOK_MARK", "runtime")
    hook = script(tmp_path, "h", "tr '\\0' '\\n' < /proc/$$/environ > $OUT")
    hooks.run("poststop", [{"path": hook}], STATE)
    assert "LABKIT_HOOK_MARK=runtime" in out(tmp_path, "h").splitlines()
    for env in (None, []):
        hooks.run("startContainer", [{"path": hook, "env": env}], STATE, default_env=["PATH=/bin", "TERM=xterm"])
        assert out(tmp_path, "h").splitlines() == ["PATH=/bin", "TERM=xterm"]


def test_args_zero_is_argv_zero(tmp_path):
    record = f"tr '\\0' ' ' < /proc/$$/cmdline > {tmp_path}/argv"
    hooks.run("createRuntime", [{"path": "/bin/sh", "args": ["custom0", "-c", record]}], STATE)
    assert (tmp_path / "argv").read_text() == f"custom0 -c {record} "
    hook = script(tmp_path, "h", 'echo "$#:$*" > $OUT')  # no args: argv is [path], nothing more
    hooks.run("createRuntime", [{"path": hook}], STATE)
    assert out(tmp_path, "h") == "0:\n"
    hooks.run("createRuntime", [{"path": hook, "args": ["h", "one", "two"]}], STATE)
    assert out(tmp_path, "h") == "2:one two\n"


def test_cwd_is_where_the_caller_says(tmp_path):
    hook = script(tmp_path, "h", "pwd > $OUT")
    hooks.run("createRuntime", [{"path": hook}], STATE, cwd="/")
    assert out(tmp_path, "h") == "/\n"


# --- run: failures ------------------------------------------------------------------------------------
def test_a_failing_hook_stops_the_rest_and_says_why(tmp_path):
    good = script(tmp_path, "good", "echo ran > $OUT")
    bad = script(tmp_path, "bad", "echo to-stdout; echo to-stderr >&2; exit 3")
    later = script(tmp_path, "later", "echo ran > $OUT")
    with pytest.raises(hooks.HookError) as info:
        hooks.run("createContainer", [{"path": good}, {"path": bad}, {"path": later}], STATE)
    err = info.value
    assert isinstance(err, LabkitError) and not err.warning and (err.kind, err.index, err.path) == ("createContainer", 1, bad)
    assert err.what == f"createContainer hook #1 ({bad}) exited with status 3; stdout: to-stdout; stderr: to-stderr"
    assert "try it by hand" in err.hint
    assert out(tmp_path, "good") == "ran\n" and not (tmp_path / "later.out").exists()


def test_a_hook_killed_by_a_signal_says_which(tmp_path):
    hook = script(tmp_path, "h", "kill -TERM $$")
    with pytest.raises(hooks.HookError, match=r"poststart hook #0 \(.*\) was killed by signal SIGTERM"):
        hooks.run("poststart", [{"path": hook}], STATE)


def test_poststop_failures_are_warnings_and_the_other_hooks_still_run(tmp_path):
    bad = script(tmp_path, "bad", "echo cleanup failed >&2; exit 1")
    later = script(tmp_path, "later", "echo ran > $OUT")
    with pytest.raises(hooks.HookError) as info:
        hooks.run("poststop", [{"path": bad}, {"path": later}, {"path": bad}], STATE)
    assert info.value.warning and out(tmp_path, "later") == "ran\n"
    assert "poststop hook #0" in info.value.what and "poststop hook #2" in info.value.what


def test_a_missing_program_fails_with_a_hint(tmp_path):
    with pytest.raises(hooks.HookError, match=r"prestart hook #0 \(/no/such/hook\) could not be started") as info:
        hooks.run("prestart", [{"path": "/no/such/hook"}], STATE)
    assert "must exist on the host" in info.value.hint
    (tmp_path / "noexec").write_text("#!/bin/sh\n")
    with pytest.raises(hooks.HookError, match="could not be started: Permission denied"):
        hooks.run("prestart", [{"path": str(tmp_path / "noexec")}], STATE)


def test_a_timeout_kills_the_hook_and_says_so(tmp_path):
    hook = script(tmp_path, "h", "echo $$ > $OUT; echo started; exec sleep 30")
    began = time.monotonic()
    with pytest.raises(hooks.HookError) as info:
        hooks.run("createRuntime", [{"path": hook, "timeout": 1}], STATE)
    assert 1 <= time.monotonic() - began < 3
    assert info.value.what == f"createRuntime hook #0 ({hook}) ran past its timeout of 1s and was killed; stdout: started"
    assert "timeout" in info.value.hint
    with pytest.raises(ProcessLookupError):  # killed and reaped: nothing of it is left
        os.kill(int(out(tmp_path, "h")), 0)


def test_a_background_child_holding_stdout_does_not_hold_us_up(tmp_path):
    hook = script(tmp_path, "h", "sleep 30 & echo $! > $OUT")
    began = time.monotonic()
    hooks.run("poststart", [{"path": hook, "timeout": 5}], STATE)
    try:
        assert time.monotonic() - began < 2
    finally:
        os.kill(int(out(tmp_path, "h")), 9)  # the sleep the hook left behind


def test_errors_survive_pickling():
    import pickle

    err = pickle.loads(pickle.dumps(hooks.HookError("x failed", "do y", "poststop", 2, "/bin/x")))
    assert (str(err), err.kind, err.index, err.path, err.warning) == ("x failed\n  hint: do y", "poststop", 2, "/bin/x", True)
