import random
import signal

import pytest

from labkit.engine import names, restart, timefmt
from labkit.engine.errors import Conflict, Invalid, NotFound
from labkit.engine.restart import RestartPolicy, next_backoff, parse_restart_policy, should_restart

A = "a" * 63 + "1"
B = "ab" + "c" * 62


@pytest.mark.parametrize("good", ["web", "my_app.1", "/web", "a-b", "9x"])
def test_valid_names(good):
    assert names.validate_name(good) == good.lstrip("/")


@pytest.mark.parametrize("bad", ["a", "", "-web", "_x", "we b", "wé", "a/b", ".x"])
def test_invalid_names(bad):
    with pytest.raises(Invalid, match=r"Invalid container name .* only \[a-zA-Z0-9\]\[a-zA-Z0-9_.-\] are allowed"):
        names.validate_name(bad)


def test_inspect_name_has_slash():
    assert names.inspect_name("web") == "/web" == names.inspect_name("/web")


def test_random_names_are_adjective_surname_and_valid():
    rng = random.Random(1)
    for retry in (0, 0, 1, 3):
        n = names.random_name(retry, rng)
        adj, _, sur = n.partition("_")
        assert adj in names.ADJECTIVES
        assert sur.rstrip("0123456789") in names.SURNAMES
        assert (sur[-1].isdigit()) == (retry > 0)
        names.validate_name(n)


def test_new_id():
    ids = {names.new_id() for _ in range(50)}
    assert len(ids) == 50
    for i in ids:
        assert names.is_full_id(i) and not i[:12].isdigit()
        assert names.short_id(i) == i[:12]


def test_resolve_order_and_errors():
    table = {A: "web", B: "db"}
    assert names.resolve(A, table) == A
    assert names.resolve("web", table) == A
    assert names.resolve("/db", table) == B
    assert names.resolve("ab", table) == B
    with pytest.raises(Invalid, match="multiple IDs found with provided prefix: a"):
        names.resolve("a", table)
    with pytest.raises(NotFound, match="No such container: nope"):
        names.resolve("nope", table)
    with pytest.raises(Invalid):
        names.resolve("", table)


def test_name_beats_prefix():
    table = {A: "ab", B: "other"}  # "ab" is B's id prefix and A's name
    assert names.resolve("ab", table) == A


def test_name_conflict_words():
    err = names.name_conflict("web", A)
    assert isinstance(err, Conflict)
    assert f'The container name "/web" is already in use by container "{A}"' in str(err)


@pytest.mark.parametrize("spec, name, count", [
    ("", "no", 0), ("no", "no", 0), ("always", "always", 0), ("unless-stopped", "unless-stopped", 0),
    ("on-failure", "on-failure", 0), ("on-failure:3", "on-failure", 3),
])
def test_parse_restart_policy(spec, name, count):
    p = parse_restart_policy(spec)
    assert (p.name, p.maximum_retry_count) == (name, count)
    assert RestartPolicy.from_json(p.to_json()) == p


@pytest.mark.parametrize("spec, words", [
    (":3", "no policy provided before colon"),
    ("on-failure:x", "maximum retry count must be an integer"),
    ("on-failure:-1", "maximum retry count cannot be negative"),
    ("always:3", "maximum retry count can only be used with 'on-failure'"),
    ("always:-3", "can only be used with 'on-failure' and cannot be negative"),
    ("sometimes", "unknown policy 'sometimes'; use one of 'no', 'always', 'on-failure', or 'unless-stopped'"),
])
def test_bad_restart_policies(spec, words):
    with pytest.raises(Invalid, match=words):
        parse_restart_policy(spec)


def test_policy_spelling_round_trip():
    for s in ("no", "always", "on-failure", "on-failure:5", "unless-stopped"):
        assert str(parse_restart_policy(s)) == s


@pytest.mark.parametrize("spec, code, count, by_user, want", [
    ("no", 1, 0, False, False),
    ("always", 0, 99, False, True),
    ("always", 0, 0, True, False),
    ("unless-stopped", 0, 0, False, True),
    ("unless-stopped", 1, 0, True, False),
    ("on-failure", 0, 0, False, False),
    ("on-failure", 1, 1000, False, True),
    ("on-failure:2", 1, 1, False, True),
    ("on-failure:2", 1, 2, False, False),
])
def test_should_restart(spec, code, count, by_user, want):
    assert should_restart(parse_restart_policy(spec), code, count, by_user) is want


def test_backoff_doubles_caps_and_resets():
    delays, d = [], 0.0
    for _ in range(12):
        d = next_backoff(d, run_seconds=0.5)
        delays.append(d)
    assert delays[:4] == [0.1, 0.2, 0.4, 0.8]
    assert max(delays) == 60.0 and delays[-1] == 60.0
    assert next_backoff(60.0, run_seconds=10) == 0.1
    assert next_backoff(0.8, run_seconds=9.99) == 1.6


def test_auto_remove_conflicts_with_restart():
    restart.check_auto_remove(RestartPolicy(), True)
    with pytest.raises(Invalid, match="AutoRemove"):
        restart.check_auto_remove(RestartPolicy("always"), True)


@pytest.mark.parametrize("value, sig", [(None, signal.SIGTERM), ("SIGKILL", signal.SIGKILL),
                                         ("int", signal.SIGINT), ("9", signal.SIGKILL),
                                         ("sigusr1", signal.SIGUSR1), (15, signal.SIGTERM)])
def test_stop_signal(value, sig):
    assert restart.parse_stop_signal(value) == sig


@pytest.mark.parametrize("bad", ["SIGFOO", "0", "999", "-1"])
def test_bad_stop_signal(bad):
    with pytest.raises(Invalid, match="Invalid signal"):
        restart.parse_stop_signal(bad)


def test_stop_timeout():
    assert restart.parse_stop_timeout(None) == 10
    assert restart.parse_stop_timeout("3") == 3
    assert restart.parse_stop_timeout(-1) == -1
    for bad in ("x", "-2"):
        with pytest.raises(Invalid):
            restart.parse_stop_timeout(bad)


def test_time_formats():
    ns = 1_700_000_000_120_000_000
    assert timefmt.rfc3339_nano(ns) == "2023-11-14T22:13:20.12Z"
    assert timefmt.rfc3339_nano(1_700_000_000 * 10**9) == "2023-11-14T22:13:20Z"
    assert timefmt.rfc3339_nano_fixed(ns) == "2023-11-14T22:13:20.120000000Z"
    assert timefmt.parse_rfc3339("2023-11-14T22:13:20.12Z") == ns
    assert timefmt.parse_rfc3339("2023-11-14T23:13:20.12+01:00") == ns
    assert timefmt.parse_rfc3339("0001-01-01T00:00:00Z") is None


def test_time_args():
    now = 1_700_000_000 * 10**9
    assert timefmt.parse_time_arg("10m", now) == now - 600 * 10**9
    assert timefmt.parse_time_arg("1h30m", now) == now - 5400 * 10**9
    assert timefmt.parse_time_arg("1700000000.5", now) == now + 500_000_000
    assert timefmt.parse_time_arg("2023-11-14", now) == timefmt.parse_rfc3339("2023-11-14T00:00:00Z")
    with pytest.raises(Invalid):
        timefmt.parse_time_arg("yesterday", now)
