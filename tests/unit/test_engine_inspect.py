"""`docker ps`/`inspect` wording, --format templates and the run flags' parsing (no root)."""
import argparse

import pytest

from labkit import cli_engine
from labkit.engine import inspect as insp
from labkit.engine.errors import Invalid
from labkit.engine.records import ContainerConfig, ContainerRecord, ContainerState, Mount
from labkit.engine.status import Status
from labkit.errors import LabkitError

S = 1_000_000_000


def record(status=Status.EXITED, exit_code=0, started=None, finished=None, labels=None, name="web"):
    return ContainerRecord("a" * 64, ContainerConfig(image="busybox", labels=labels or {},
                                                     mounts=(Mount("volume", "/data", "v1"),)),
                           ContainerState(name=name, status=status, exit_code=exit_code, created_at=0,
                                          started_at=started, finished_at=finished))


@pytest.mark.parametrize("seconds, words", [(0.5, "Less than a second"), (1, "1 second"), (59, "59 seconds"),
                                            (60, "About a minute"), (150, "2 minutes"), (3600, "About an hour"),
                                            (7200, "2 hours"), (3 * 86400, "3 days"), (20 * 86400, "2 weeks")])
def test_human_duration_is_go_units(seconds, words):
    assert insp.human_duration(seconds) == words


def test_status_text_as_docker_ps_words_it():
    now = 100 * S
    assert insp.status_text(record(Status.RUNNING, started=97 * S), now) == "Up 3 seconds"
    assert insp.status_text(record(Status.PAUSED, started=97 * S), now) == "Up 3 seconds (Paused)"
    assert insp.status_text(record(Status.EXITED, 137, finished=40 * S), now) == "Exited (137) About a minute ago"
    assert insp.status_text(record(Status.RESTARTING, 1, finished=99 * S), now) == "Restarting (1) 1 second ago"
    assert insp.status_text(record(Status.CREATED), now) == "Created"


def test_render_paths_json_and_go_printing():
    obj = {"State": {"Status": "running", "Running": True, "Pid": 7}, "Args": ["-c", "x"], "Labels": {"a": "1"},
           "Entrypoint": None}
    assert insp.render("{{.State.Status}} {{.State.Running}} {{.State.Pid}}", obj) == "running true 7"
    assert insp.render("{{json .Args}}", obj) == '["-c","x"]'
    assert insp.render("{{.Args}} {{.Labels}} {{.Entrypoint}}", obj) == "[-c x] map[a:1] <no value>"
    assert insp.render("{{.State.Status}}\\t{{ .State.Pid }}", obj) == "running\t7"
    with pytest.raises(Invalid, match="can't evaluate field Nope"):
        insp.render("{{.State.Nope}}", obj)
    with pytest.raises(Invalid, match="unsupported action"):
        insp.render("{{range .Args}}{{.}}{{end}}", obj)


def test_ps_filters_or_within_a_key_and_across_keys():
    one, zero = record(exit_code=1, labels={"tier": "a"}), record(exit_code=0, labels={"tier": "b"}, name="db")
    assert insp.matches(one, ["exited=1"]) and not insp.matches(zero, ["exited=1"])
    assert insp.matches(zero, ["exited=1", "exited=0"])                      # same key: OR
    assert not insp.matches(zero, ["exited=0", "label=tier=a"])              # different keys: AND
    assert insp.matches(one, ["label=tier"]) and insp.matches(zero, ["name=^d"])
    with pytest.raises(Invalid, match="invalid filter"):
        insp.matches(one, ["colour=red"])


def test_ps_table_pads_like_docker():
    text = insp.table([{"A": "x", "B": "long value"}], (("FIRST", "A"), ("SECOND", "B")))
    assert text.split("\n") == ["FIRST   SECOND", "x       long value"]


@pytest.mark.parametrize("text, value", [("64m", 64 << 20), ("1g", 1 << 30), ("512k", 512 << 10),
                                         ("100", 100), ("1.5m", int(1.5 * (1 << 20))), ("-1", -1)])
def test_memory_sizes_are_binary_as_dockers_ram_in_bytes(text, value):
    assert cli_engine.ram_bytes(text) == value


def test_run_flags_become_the_records_config():
    parser = argparse.ArgumentParser()
    cli_engine.add_verbs(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["run", "-d", "--name", "web", "-e", "A=1", "--restart", "on-failure:3", "-m", "64m",
                              "--cpus", "0.5", "--tmpfs", "/run", "-l", "k=v", "busybox", "sh", "-c", "echo -d"])
    config = cli_engine.config_from(args)
    assert config.command == ("sh", "-c", "echo -d")  # everything after the image is the command
    assert (config.env, dict(config.labels), str(config.restart_policy)) == (("A=1",), {"k": "v"}, "on-failure:3")
    assert (config.resources.memory, config.resources.nano_cpus) == (64 << 20, 500_000_000)
    assert [m.type for m in config.mounts] == ["tmpfs"]
    with pytest.raises(LabkitError, match="invalid size"):
        cli_engine.ram_bytes("lots")
