"""Fuzzing the config.json loader: any JSON ends in a valid Spec or a SpecError, never a traceback."""
import atexit
import copy
import json
import shutil
import tempfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from labkit.errors import SpecError
from labkit.runtime import spec as lspec
from labkit.runtime.spec import IDMapping, Mount, Namespace, Process, Root, Spec, User, default_spec

FUZZ = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

SCALARS = (st.none() | st.booleans() | st.integers() | st.integers(min_value=-2**65, max_value=2**65)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12)
           | st.sampled_from(["", "/", "sh", "A=b", "=", "\x00", "\ud800", "RLIMIT_NOFILE", "user", "CAP_KILL"]))
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
BASE = default_spec(["sh"]).to_dict()


# Hypothesis caches under ./.hypothesis, from collection on: a temp dir instead, removed at exit,
# keeps the work tree clean (and there is no example database: database=None).
_CACHE = tempfile.mkdtemp(prefix="hypothesis-cache-")
atexit.register(shutil.rmtree, _CACHE, True)
set_hypothesis_home_dir(_CACHE)


def _paths(value, prefix=()):
    """The path (keys and indexes) of every value nested in a parsed JSON document."""
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, prefix + (key,))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _paths(item, prefix + (i,))


def _schema_paths(kind=lspec.SCHEMA, prefix=()):
    """Every field path the schema table knows (a list's items as index 0)."""
    if isinstance(kind, lspec.Obj):
        for name, sub in kind.fields.items():
            yield prefix + (name,)
            yield from _schema_paths(sub, prefix + (name,))
    elif isinstance(kind, lspec.ListOf):
        yield from _schema_paths(kind.item, prefix + (0,))


BASE_PATHS = list(_paths(BASE))[1:]
SCHEMA_PATHS = list(_schema_paths())


def _put(data, path, value):
    """Set the value at a path, making what is in the way objects or lists (padded with null)."""
    node = data
    for step, after in zip(path, path[1:]):
        want = list if isinstance(after, int) else dict
        if not isinstance(_at(node, step), want):
            _at(node, step, want())
        node = node[step]
    _at(node, path[-1], value)
    return data


def _at(node, step, *value):
    """node[step] (a list too short is padded with null first); with a value, set it there."""
    if isinstance(node, list):
        node.extend([None] * (step + 1 - len(node)))
    if value:
        node[step] = value[0]
    return node.get(step) if isinstance(node, dict) else node[step]


def _check(data):
    """The property: a valid spec, or a SpecError; and a valid one has the types the init relies on."""
    try:
        spec = Spec.from_dict(data).validate()
    except SpecError:
        return None
    _assert_init_types(spec)
    assert Spec.from_dict(json.loads(json.dumps(spec.to_dict()))).to_dict() == spec.to_dict()
    return spec


def _assert_init_types(spec: Spec) -> None:
    p = spec.process
    assert isinstance(p, Process) and isinstance(p.user, User) and isinstance(spec.root, Root)
    assert isinstance(p.args, list) and p.args and all(isinstance(a, str) and "\x00" not in a for a in p.args)
    assert all(isinstance(e, str) and e.find("=") > 0 for e in p.env)
    assert isinstance(p.cwd, str) and p.cwd.startswith("/")
    ids = [p.user.uid, p.user.gid, *(p.user.additionalGids or [])]
    assert all(type(i) is int and 0 <= i < 2**32 - 1 for i in ids)
    assert p.user.umask is None or type(p.user.umask) is int and 0 <= p.user.umask <= 0o777
    assert isinstance(p.terminal, bool) and isinstance(p.noNewPrivileges, bool)
    for r in p.rlimits or []:
        assert type(r["soft"]) is int and type(r["hard"]) is int and 0 <= r["soft"] <= r["hard"]
        assert all(v < 2**63 or v == 2**64 - 1 for v in (r["soft"], r["hard"]))  # what setrlimit can take
    for name in (p.capabilities or {}).values():
        assert isinstance(name, list) and all(isinstance(n, str) for n in name)
    assert isinstance(spec.root.path, str) and spec.root.path and isinstance(spec.root.readonly, bool)
    assert spec.hostname is None or isinstance(spec.hostname, str) and len(spec.hostname.encode()) <= 64
    assert all(isinstance(m, Mount) and m.destination.startswith("/") for m in spec.mounts)
    assert all(isinstance(o, str) for m in spec.mounts for o in m.options or [])
    assert all(isinstance(v, str) for v in (spec.annotations or {}).values())
    linux = spec.linux
    if linux is not None:
        assert all(isinstance(n, Namespace) and isinstance(n.type, str) for n in linux.namespaces)
        for m in (linux.uidMappings or []) + (linux.gidMappings or []):
            assert isinstance(m, IDMapping) and all(type(v) is int for v in (m.containerID, m.hostID, m.size))
        assert linux.resources is None or isinstance(linux.resources, dict)
        assert linux.seccomp is None or isinstance(linux.seccomp, dict)


@FUZZ
@given(JSON)
def test_any_json_value_is_a_spec_or_a_spec_error(data):
    _check(data)


@FUZZ
@given(st.data())
def test_default_spec_with_nested_values_replaced(draw):
    data = copy.deepcopy(BASE)
    for _ in range(draw.draw(st.integers(1, 3))):
        path = draw.draw(st.sampled_from(BASE_PATHS))
        _put(data, path, draw.draw(JSON))
    _check(data)


@FUZZ
@given(st.data())
def test_default_spec_with_any_schema_field_set(draw):
    data = copy.deepcopy(BASE)
    for _ in range(draw.draw(st.integers(1, 3))):
        path = draw.draw(st.sampled_from(SCHEMA_PATHS))
        _put(data, path, draw.draw(JSON))
    _check(data)


def _typed(kind) -> st.SearchStrategy:
    """Values of a schema kind's JSON type (mostly within its rules): they get past the type
    check, so the checks of meaning and the refusals are fuzzed too."""
    if isinstance(kind, lspec.Int):
        return st.integers(kind.lo, kind.hi) | st.sampled_from([kind.lo, kind.hi, max(kind.lo, min(kind.hi, 1))])
    if isinstance(kind, lspec.Bool):
        return st.booleans()
    if isinstance(kind, lspec.Text):
        return st.sampled_from(["", "/", "/tmp", "sh", "A=b", "RLIMIT_NOFILE", "user", "CAP_KILL", "SCMP_ACT_ALLOW",
                                "private", "c", "x" * 65]) | st.text(max_size=8)
    if isinstance(kind, lspec.ListOf):
        return st.lists(_typed(kind.item), max_size=3)
    if isinstance(kind, lspec.MapOf):
        return st.dictionaries(st.text(max_size=6), _typed(kind.value), max_size=2)
    return st.fixed_dictionaries({}, optional={name: _typed(sub) for name, sub in kind.fields.items()})


def _schema_kind(path):
    kind = lspec.SCHEMA
    for step in path:
        kind = kind.item if isinstance(step, int) else kind.fields[step]
    return kind


@FUZZ
@given(st.data())
def test_default_spec_with_well_typed_values(draw):
    data = copy.deepcopy(BASE)
    for _ in range(draw.draw(st.integers(1, 3))):
        path = draw.draw(st.sampled_from(SCHEMA_PATHS))
        _put(data, path, draw.draw(_typed(_schema_kind(path))))
    _check(data)


def test_the_mutations_reach_valid_specs_too():
    """The properties above are not vacuous: unchanged and well-typed edits validate."""
    assert _check(copy.deepcopy(BASE)) is not None
    data = copy.deepcopy(BASE)
    _put(data, ("process", "user", "uid"), 1000)
    _put(data, ("linux", "resources", "pids", "limit"), 5)
    assert _check(data).process.user.uid == 1000
