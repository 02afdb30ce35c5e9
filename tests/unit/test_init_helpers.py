"""The container init's pure helpers (HOME lookup, program lookup) and the monitor's option parsing."""
import os

import pytest

from labkit import monitor
from labkit.runtime import init


def test_parse_args_both_forms():
    opts = monitor.parse_args(["--id", "c1", "--bundle=/b", "--root", "/s", "--ready-fd", "7"])
    assert opts == {"--id": "c1", "--bundle": "/b", "--root": "/s", "--ready-fd": "7"}


@pytest.mark.parametrize("argv, message", [
    (["--id", "c1"], "required: --bundle, --root, --ready-fd"),
    (["--id", "c1", "--bundle", "/b", "--root", "/s", "--ready-fd", "x"], "invalid int value"),
    (["--id"], "expected one argument"),
    (["--nope", "1"], "unrecognized argument"),
])
def test_parse_args_errors(argv, message):
    with pytest.raises(ValueError, match=message):
        monitor.parse_args(argv)


def test_main_reports_usage_errors_like_argparse(capsys):
    assert monitor.main(["--id", "c1"]) == 2
    assert "usage: python -m labkit.monitor" in capsys.readouterr().err


def test_home_of_reads_passwd_and_defaults_to_slash(tmp_path):
    passwd = tmp_path / "passwd"
    passwd.write_text("root:x:0:0:root:/root:/bin/sh\nbroken line\nnobody:x:65534:65534::/nonexistent:/bin/false\n")
    assert init.home_of(0, str(passwd)) == "/root"
    assert init.home_of(65534, str(passwd)) == "/nonexistent"
    assert init.home_of(1000, str(passwd)) == "/"
    assert init.home_of(0, str(tmp_path / "missing")) == "/"


def test_look_path_like_execvp(tmp_path):
    bin_dir, other = tmp_path / "bin", tmp_path / "other"
    bin_dir.mkdir(), other.mkdir()
    (other / "tool").write_text("not executable")
    (bin_dir / "tool").write_text("#!/bin/sh\n")
    os.chmod(bin_dir / "tool", 0o755)
    env = {"PATH": f"{other}:{bin_dir}"}
    assert init.look_path("tool", env) == str(bin_dir / "tool")  # skips the non-executable one
    assert init.look_path(str(bin_dir / "tool"), env) == str(bin_dir / "tool")
    with pytest.raises(init.ExecError, match="not found in [$]PATH") as info:
        init.look_path("missing", env)
    assert info.value.exit_code == 127
    with pytest.raises(init.ExecError, match="(?i)no such file") as info:
        init.look_path(str(tmp_path / "nope"), env)
    assert info.value.exit_code == 127
    for path in (other / "tool", bin_dir):  # a file without x bits, a directory
        with pytest.raises(init.ExecError, match="permission denied") as info:
            init.look_path(str(path), env)
        assert info.value.exit_code == 126
