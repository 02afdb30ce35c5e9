"""process.apparmorProfile: applied where AppArmor is enabled, refused by name where it is not."""
from labkit import apparmor
from labkit.runtime.spec import Spec, default_spec


def test_a_profile_is_refused_where_apparmor_is_off(tmp_path):
    flag = tmp_path / "enabled"
    assert apparmor.problems("containers-default-0.50.1", str(tmp_path / "missing"))[0].startswith(
        "process.apparmorProfile 'containers-default-0.50.1': AppArmor is not enabled")
    flag.write_text("N\n")
    assert apparmor.problems("p", str(flag))
    flag.write_text("Y\n")
    assert apparmor.problems("p", str(flag)) == [] and apparmor.problems(None, str(flag)) == []


def test_the_spec_check_uses_the_hosts_apparmor():
    data = default_spec(["sh"]).to_dict()
    data["process"]["apparmorProfile"] = "docker-default"
    problems = list(Spec.from_dict(data)._problems(None))
    assert bool([p for p in problems if "apparmorProfile" in p]) == (not apparmor.enabled())
