"""Image config -> runtime spec: command, env, cwd, user from the image's passwd, ports."""
import pytest

from labkit import capabilities
from labkit.errors import LabkitError
from labkit.images import runspec
from labkit.images.model import ImageConfig, RunConfig

PASSWD = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001:app:/home/app:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n"
GROUP = "root:x:0:\napp:x:1001:\nwheel:x:10:app,other\naudio:x:29:app\nstaff:x:50:\n"


def config(**run):
    return ImageConfig(config=RunConfig(**run))


def test_entrypoint_stays_and_args_replace_cmd():
    c = config(entrypoint=["/entry"], cmd=["--default"])
    assert runspec.process_args(c) == ["/entry", "--default"]
    assert runspec.process_args(c, ["--mine"]) == ["/entry", "--mine"]
    assert runspec.process_args(c, ["sh"], entrypoint=[]) == ["sh"]
    assert runspec.process_args(config(cmd=["sh"])) == ["sh"]
    with pytest.raises(LabkitError, match="no Cmd or Entrypoint"):
        runspec.process_args(config())


@pytest.mark.parametrize("user, uid, gid, extra", [
    ("", 0, 0, None),
    ("app", 1000, 1001, [10, 29]),
    ("1000", 1000, 1001, [10, 29]),
    ("app:staff", 1000, 50, [10, 29]),
    ("app:0", 1000, 0, [10, 29]),
    ("4242", 4242, 0, None),          # a uid need not exist
    ("4242:4243", 4242, 4243, None),
])
def test_resolve_user(user, uid, gid, extra):
    u = runspec.resolve_user(user, PASSWD, GROUP)
    assert (u.uid, u.gid, u.additionalGids) == (uid, gid, extra)


def test_unknown_names_are_refused_with_a_hint():
    with pytest.raises(LabkitError, match="not in the image's /etc/passwd") as err:
        runspec.resolve_user("ghost", PASSWD, GROUP)
    assert "numeric" in err.value.hint
    with pytest.raises(LabkitError, match="not in the image's /etc/group"):
        runspec.resolve_user("app:ghosts", PASSWD, GROUP)


def test_to_spec_applies_env_cwd_user_and_keeps_ports_as_annotations():
    c = config(env=["PATH=/custom/bin", "A=1"], cmd=["serve"], working_dir="/srv", user="app",
               exposed_ports={"8080/tcp": {}, "53/udp": {}}, labels={"org.example": "x"}, stop_signal="SIGINT")
    files = {"/etc/passwd": PASSWD, "/etc/group": GROUP}
    spec = runspec.to_spec(c, files.get, env=["A=2", "B=3"])
    assert spec.process.args == ["serve"]
    assert spec.process.env == ["PATH=/custom/bin", "A=2", "B=3"]
    assert spec.process.cwd == "/srv"
    assert (spec.process.user.uid, spec.process.user.gid) == (1000, 1001)
    assert spec.annotations[runspec.EXPOSED_PORTS] == "53/udp,8080/tcp"
    assert spec.annotations[runspec.STOP_SIGNAL] == "SIGINT"
    assert spec.annotations["org.example"] == "x"
    assert runspec.exposed_ports(spec) == [(53, "udp"), (8080, "tcp")]
    spec.validate()


def test_a_missing_path_gets_the_default():
    spec = runspec.to_spec(config(env=["A=1"], cmd=["sh"]))
    assert spec.process.env[0].startswith("PATH=/usr/local/sbin")
    assert spec.process.cwd == "/"


def test_image_containers_get_dockers_capabilities():
    files = {"/etc/passwd": PASSWD, "/etc/group": GROUP}
    as_root = runspec.to_spec(config(cmd=["sh"]), files.get).process
    assert as_root.capabilities == capabilities.oci_sets(capabilities.DOCKER_DEFAULT)
    assert as_root.noNewPrivileges is False
    as_app = runspec.to_spec(config(cmd=["sh"], user="app"), files.get).process
    assert as_app.capabilities == {"bounding": list(capabilities.DOCKER_DEFAULT)}  # a bound, none held
