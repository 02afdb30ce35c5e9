import json

import pytest

from labkit.errors import SpecError
from labkit.runtime.spec import IDMapping, Namespace, Spec, default_spec


def test_round_trip_keeps_unknown_fields(tmp_path):
    data = default_spec(["sh"]).to_dict()
    data["process"]["capabilities"] = {"bounding": ["CAP_KILL"]}
    data["process"]["user"]["extraField"] = 1
    data["linux"]["maskedPaths"] = ["/proc/kcore"]
    data["linux"]["namespaces"][0]["futureKey"] = "x"
    data["mounts"][0]["uidMappings"] = []
    data["vendorTopLevel"] = {"a": [1, 2]}
    assert Spec.from_dict(json.loads(json.dumps(data))).to_dict() == data


def test_runc_generated_spec_round_trips(tmp_path):
    import shutil
    import subprocess
    if not shutil.which("runc"):
        pytest.skip("runc not installed")
    subprocess.run(["runc", "spec", "--bundle", str(tmp_path)], check=True)
    original = json.loads((tmp_path / "config.json").read_text())
    spec = Spec.load(str(tmp_path))
    assert spec.to_dict() == original
    assert spec.process.args == ["sh"] and spec.root.path == "rootfs"
    assert {"pid", "network", "ipc", "uts", "mount"} <= {n.type for n in spec.linux.namespaces}


def test_save_and_load(tmp_path):
    spec = default_spec(["echo", "hi"], hostname="box")
    spec.save(str(tmp_path))
    loaded = Spec.load(str(tmp_path))
    assert loaded == spec


@pytest.mark.parametrize("edit, message", [
    (lambda s: setattr(s.process, "args", []), "process.args"),
    (lambda s: setattr(s.process, "cwd", "relative"), "absolute path"),
    (lambda s: s.linux.namespaces.append(Namespace("bogus")), "unknown namespace type 'bogus'"),
    (lambda s: s.linux.namespaces.append(Namespace("pid")), "listed twice"),
    (lambda s: setattr(s.linux, "namespaces", [Namespace("mount")]), "hostname needs a new uts"),
    (lambda s: s.linux.namespaces.append(Namespace("user")), "uidMappings"),
    (lambda s: setattr(s.linux, "uidMappings", [IDMapping(0, 1000, 1)]), "need a user namespace"),
    (lambda s: setattr(s.mounts[0], "destination", "proc"), "must be absolute"),
])
def test_bad_specs_are_refused_with_a_reason(tmp_path, edit, message):
    (tmp_path / "rootfs").mkdir()
    spec = default_spec(["sh"])
    edit(spec)
    with pytest.raises(SpecError, match=message) as info:
        spec.validate(str(tmp_path))
    assert "hint:" in str(info.value)


def test_missing_rootfs_is_refused(tmp_path):
    with pytest.raises(SpecError, match="is not a directory"):
        default_spec(["sh"]).validate(str(tmp_path))


def test_missing_or_broken_config(tmp_path):
    with pytest.raises(SpecError, match="no config.json"):
        Spec.load(str(tmp_path))
    (tmp_path / "config.json").write_text("{ not json")
    with pytest.raises(SpecError, match="not valid JSON"):
        Spec.load(str(tmp_path))
    (tmp_path / "config.json").write_text('{"process": []}')
    with pytest.raises(SpecError, match="expected an object"):
        Spec.load(str(tmp_path))
