"""config.json field types and the fields labkit refuses: checked before anything is made (no root)."""
import copy
import json

import pytest

from labkit.errors import SpecError
from labkit.runtime import spec as lspec
from labkit.runtime.spec import UNSUPPORTED, Spec, default_spec

BASE = default_spec(["sh"]).to_dict()


def _edited(path: str, value, data=None):
    """default_spec()'s dict (or a copy of data) with the field at a dotted path set
    ("mounts[]": the first mount)."""
    data = copy.deepcopy(BASE if data is None else data)
    *parents, last = path.split(".")
    node = data
    for part in parents:
        name = part.removesuffix("[]")
        node = node.setdefault(name, {})
        if part.endswith("[]"):
            node = node[0]
    node[last] = value
    return data


def _refusal(data) -> str:
    with pytest.raises(SpecError) as info:
        Spec.from_dict(data).validate()
    assert "hint:" in str(info.value)
    return info.value.what


# The malformed configs: each ends in a SpecError naming the field, never a traceback.
MALFORMED = [
    ("process.user.uid", "0", 'process.user.uid must be an integer, got "0"'),
    ("process.env", "PATH=/bin", 'process.env must be a list of "KEY=VALUE" strings, got a string'),
    ("hostname", 5, "hostname must be a string, got 5"),
    ("process.args", "sh", "process.args must be a list of strings, got a string"),
    ("process.args", ["sh", 1], "process.args[1] must be a string, got 1"),
    ("process.env", ["PATH=/bin", "NOEQUALS"], 'process.env[1] must be a "KEY=VALUE" string, got "NOEQUALS"'),
    ("process.env", ["=x"], 'process.env[0] must be a "KEY=VALUE" string, got "=x"'),
    ("process.user.gid", -1, "process.user.gid must be from 0 to 4294967294"),
    ("process.user.uid", 4294967295, "(uid_t)-1"),
    ("process.user.uid", 0.0, "process.user.uid must be an integer, got 0.0"),
    ("process.user.uid", True, "process.user.uid must be an integer, got true"),
    ("process.user.additionalGids", "5", "process.user.additionalGids must be a list of integers, got a string"),
    ("process.user.umask", 0o7777, "process.user.umask must be from 0 to 511"),
    ("process.cwd", 1, "process.cwd must be a string, got 1"),
    ("process.terminal", "false", 'process.terminal must be true or false, got "false"'),
    ("process.capabilities", {"bounding": "CAP_KILL"}, "process.capabilities.bounding must be a list of strings"),
    ("process.rlimits", [{"type": "RLIMIT_NOFILE", "soft": "1", "hard": 2}],
     'process.rlimits[0].soft must be an integer, got "1"'),
    ("process.rlimits", [{"type": "RLIMIT_NOFILE", "soft": 1}], "process.rlimits[0].hard is required"),
    ("process.oomScoreAdj", "5", 'process.oomScoreAdj must be an integer, got "5"'),
    ("process.consoleSize", {"height": 70000, "width": 80}, "process.consoleSize.height must be from 0 to 65535"),
    ("process.args", ["s\x00h"], "process.args[0] must not contain a NUL character"),
    ("hostname", "\ud800", "hostname must be Unicode text"),
    ("root.readonly", "yes", 'root.readonly must be true or false, got "yes"'),
    ("root.path", None, "root.path is required"),
    ("mounts", {"destination": "/x"}, "mounts must be a list of objects, got an object"),
    ("mounts", [{"type": "tmpfs"}], "mounts[0].destination is required"),
    ("mounts", [{"destination": "/x", "options": "ro"}], "mounts[0].options must be a list of strings, got a string"),
    ("process", [], "process: expected an object, got a list"),
    ("annotations", {"a": 1}, 'annotations["a"] must be a string, got 1'),
    ("linux.namespaces", ["pid"], 'linux.namespaces[0]: expected an object, got a string'),
    ("linux.uidMappings", [{"containerID": 0, "hostID": 1000, "size": "1"}],
     'linux.uidMappings[0].size must be an integer, got "1"'),
    ("linux.sysctl", {"net.ipv4.ip_forward": 1}, 'linux.sysctl["net.ipv4.ip_forward"] must be a string, got 1'),
    ("linux.maskedPaths", ["proc/kcore"], 'linux.maskedPaths[0] must be an absolute path, got "proc/kcore"'),
    ("linux.rootfsPropagation", "bogus", "linux.rootfsPropagation must be one of private, shared"),
    ("linux.resources", [], "linux.resources: expected an object, got a list"),
    ("linux.resources", {"memory": {"limit": "64M"}}, 'linux.resources.memory.limit must be an integer, got "64M"'),
    ("linux.resources", {"blockIO": {"throttleReadBpsDevice": [{"major": 8, "minor": 0}]}},
     "linux.resources.blockIO.throttleReadBpsDevice[0].rate is required"),
    ("linux.seccomp", {"defaultAction": ["SCMP_ACT_ALLOW"]}, "linux.seccomp.defaultAction must be a string, got a list"),
    ("linux.seccomp", {"defaultAction": "SCMP_ACT_ALLOW", "flags": 1}, "linux.seccomp.flags must be a list of strings"),
    ("linux.devices", [{"type": "x", "path": "/dev/x"}], 'linux.devices[0].type must be one of c, b, u, p, got "x"'),
]


@pytest.mark.parametrize("path, value, message", MALFORMED, ids=[f"{p}={v!r}"[:60] for p, v, _ in MALFORMED])
def test_a_malformed_field_is_refused_by_its_path(path, value, message):
    data = _edited(path, value)
    assert message in _refusal(data)
    with pytest.raises(SpecError):  # the same from a file: load parses and checks
        Spec.from_dict(json.loads(json.dumps(data)))


def test_every_type_problem_is_listed_in_one_error():
    data = _edited("process.user.uid", "0")
    data["process"]["env"] = "X=1"
    data["hostname"] = 5
    data["process"]["args"] = "sh"
    what = _refusal(data)
    assert what.startswith("invalid runtime spec: ")
    for field in ("process.user.uid", "process.env", "hostname", "process.args"):
        assert f"{field} must be" in what


def test_types_set_on_the_model_are_checked_by_validate():
    spec = default_spec(["sh"])
    spec.process.user.uid = "0"
    spec.process.args = "sh"
    spec.process.env = None
    spec.linux.namespaces.append({"type": "user"})
    with pytest.raises(SpecError) as info:
        spec.validate()
    what = info.value.what
    assert 'process.user.uid must be an integer, got "0"' in what
    assert "process.args must be a list of strings, got a string" in what
    assert "process.env must not be None" in what
    assert "linux.namespaces[6] must be a labkit.runtime.spec.Namespace, got dict" in what


def test_checks_of_other_sections_still_run_next_to_type_errors(tmp_path):
    spec = default_spec(["sh"])
    spec.hostname = 5
    spec.process.cwd = "relative"
    spec.process.capabilities = {"bounding": ["CAP_FLY"]}
    what = _refusal_of(spec, str(tmp_path))
    assert "hostname must be a string" in what and "must be an absolute path" in what
    assert "CAP_FLY" in what and "is not a directory" in what


def _refusal_of(spec: Spec, bundle: str) -> str:
    with pytest.raises(SpecError) as info:
        spec.validate(bundle)
    return info.value.what


def test_null_is_absent_as_for_runc():
    data = copy.deepcopy(BASE)
    data["process"]["capabilities"] = None
    data["process"]["env"] = None
    data["hostname"] = None
    data["linux"]["seccomp"] = None
    spec = Spec.from_dict(data).validate()
    assert spec.process.capabilities is None and spec.hostname is None
    assert spec.process.env == default_spec().process.env  # the model's default, as if left out


def test_a_list_item_or_map_value_may_not_be_null():
    assert "process.args[0] must be a string, got null" in _refusal(_edited("process.args", [None]))
    assert 'annotations["a"] must be a string, got null' in _refusal(_edited("annotations", {"a": None}))


def test_hostname_longer_than_the_kernel_takes():
    assert "hostname must be at most 64 bytes" in _refusal(_edited("hostname", "h" * 65))


def test_rlimit_values_python_cannot_set_are_refused_but_unlimited_is_taken():
    what = _refusal(_edited("process.rlimits", [{"type": "RLIMIT_CORE", "soft": 0, "hard": 2**64 - 2}]))
    assert "RLIMIT_CORE between 9223372036854775807 and 18446744073709551615" in what
    Spec.from_dict(_edited("process.rlimits", [{"type": "RLIMIT_CORE", "soft": 0, "hard": 2**64 - 1}])).validate()


def test_the_defaults_and_runc_spec_shapes_pass():
    default_spec(["sh"]).validate()
    runc_like = copy.deepcopy(BASE)
    runc_like["linux"].update(resources={"devices": [{"allow": False, "access": "rwm"}]}, maskedPaths=[],
                              readonlyPaths=[], sysctl={}, rootfsPropagation="")
    runc_like.update(hooks={}, domainname="", annotations={})
    runc_like["process"].update(oomScoreAdj=0, consoleSize={"height": 24, "width": 80}, user={"uid": 0, "gid": 0})
    Spec.from_dict(runc_like).validate()


def test_unknown_fields_round_trip_unchanged():
    data = copy.deepcopy(BASE)
    data["vendorTopLevel"] = {"a": [1, None, "x"]}
    data["process"]["user"]["futureKey"] = [1]
    data["linux"]["maskedPaths"] = ["/proc/kcore"]  # loads: refused only by validate
    assert Spec.from_dict(json.loads(json.dumps(data))).to_dict() == data


# --- the fields labkit does not apply -------------------------------------------------------------
def _sample(kind):
    """A value of a schema kind that asks for something (is_set)."""
    if isinstance(kind, lspec.Int):
        return max(kind.lo, 1)
    if isinstance(kind, lspec.Bool):
        return True
    if isinstance(kind, lspec.Text):
        for value in ("/x", "A=b", "private", "c", "LINUX", "IOPRIO_CLASS_BE", "SCHED_OTHER"):
            if kind.ok is None or kind.ok(value):
                return value
        raise AssertionError(f"no sample for {kind.what}")
    if isinstance(kind, lspec.ListOf):
        return [_sample(kind.item)]
    if isinstance(kind, lspec.MapOf):
        return {"k": _sample(kind.value)}
    return {name: _sample(sub) for name, sub in kind.fields.items()}


def _schema_kind(path: str):
    kind = lspec.SCHEMA
    for part in path.split("."):
        kind = kind.fields[part.removesuffix("[]")]
        if part.endswith("[]"):
            kind = kind.item
    return kind


@pytest.mark.parametrize("path", UNSUPPORTED)
def test_each_unsupported_field_is_refused_by_name(path):
    value = _sample(_schema_kind(path))  # also: the table names fields the schema has
    data = _edited(path, value)
    Spec.from_dict(data)  # well typed: it loads
    exact = path.replace("[]", "[0]")
    assert f"{exact} is not supported by labkit: remove it ({UNSUPPORTED[path]})" in _refusal(data)


@pytest.mark.parametrize("path, unset", [
    ("hooks.prestart", []), ("linux.maskedPaths", []), ("linux.sysctl", {}), ("linux.intelRdt", {}),
    ("linux.rootfsPropagation", ""), ("process.oomScoreAdj", 0), ("domainname", ""),
    ("linux.personality", {"flags": []}), ("mounts[].uidMappings", []),
])
def test_an_unset_unsupported_field_is_accepted(path, unset):
    Spec.from_dict(_edited(path, unset)).validate()


def test_every_refused_field_is_listed_at_once():
    data = copy.deepcopy(BASE)
    for path in UNSUPPORTED:
        data = _edited(path, _sample(_schema_kind(path)), data)
    what = _refusal(data)
    for path in UNSUPPORTED:
        assert f"{path.replace('[]', '[0]')} is not supported by labkit: remove it" in what


def test_field_values_reads_dotted_paths():
    data = {"mounts": [{"uidMappings": [1]}, {}, {"uidMappings": []}], "linux": {"sysctl": {"a": "b"}}}
    assert lspec.field_values(data, "mounts[].uidMappings") == [("mounts[0].uidMappings", [1]),
                                                                ("mounts[2].uidMappings", [])]
    assert lspec.field_values(data, "linux.sysctl") == [("linux.sysctl", {"a": "b"})]
    assert lspec.field_values(data, "linux.intelRdt") == [] == lspec.field_values([], "linux.sysctl")


# --- files ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("content", [b"\xff\xfe\x00garbage", b"[" * 100000, b'{"a": ' + b"9" * 5000 + b"}",
                                     b"[]", b"null", b'"config"', b"{\"process\": {\"args\": \"sh\"}}"])
def test_load_raises_only_spec_errors(tmp_path, content):
    (tmp_path / "config.json").write_bytes(content)
    with pytest.raises(SpecError):
        Spec.load(str(tmp_path)).validate(str(tmp_path))


def test_load_reads_a_utf8_bom(tmp_path):
    (tmp_path / "rootfs").mkdir()
    (tmp_path / "config.json").write_bytes(b"\xef\xbb\xbf" + json.dumps(BASE).encode())
    Spec.load(str(tmp_path)).validate(str(tmp_path))
