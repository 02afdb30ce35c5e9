"""docs/runtime-spec.md lists every config.json field labkit's schema knows, with its status,
and every field labkit refuses is listed as refused there (the doc cannot drift from the code)."""
from __future__ import annotations

import pathlib
import re

import pytest

from labkit.runtime import spec

DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "runtime-spec.md"
ROW = re.compile(r"^\| `([^`]+)` \| ([^|]+?) \|", re.M)


def schema_paths(kind=spec.SCHEMA, path: str = ""):
    """Every leaf field of the schema, as a dotted path ("mounts[].options")."""
    if isinstance(kind, spec.Obj):
        for name, sub in kind.fields.items():
            yield from schema_paths(sub, f"{path}.{name}" if path else name)
    elif isinstance(kind, spec.ListOf) and isinstance(kind.item, spec.Obj):
        yield from schema_paths(kind.item, path + "[]")
    else:
        yield path


def rows() -> dict[str, str]:
    return dict(ROW.findall(DOC.read_text()))


def row_for(path: str, table: dict[str, str]) -> str | None:
    """The row of the field itself or of the nearest section that holds it."""
    while path:
        if path in table:
            return path
        if path.endswith("[]"):
            path = path.removesuffix("[]")
        else:
            path = path.rsplit(".", 1)[0] if "." in path else ""
    return None


@pytest.mark.parametrize("path", list(schema_paths()))
def test_every_schema_field_has_a_status(path):
    table = rows()
    found = row_for(path, table)
    assert found, f"{path} is not in docs/runtime-spec.md: add a row saying whether it is applied or refused"
    assert table[found] in {"applied", "refused", "host-dependent", "not applied, warned"}


@pytest.mark.parametrize("path", sorted(spec.UNSUPPORTED))
def test_refused_fields_are_listed_as_refused(path):
    table = rows()
    name = row_for(path, table)
    assert name and table[name] == "refused", f"{path} is refused by labkit but the doc says {table.get(name)!r}"


@pytest.mark.parametrize("field", [{"process": {"commandLine": "echo hi"}},
                                   {"process": {"user": {"uid": 0, "gid": 0, "username": "root"}}}])
def test_windows_only_process_fields_are_refused(field):
    data = spec.default_spec(["true"]).to_dict()
    for section, body in field.items():
        data[section] = {**data[section], **body} if "user" not in body else \
            {**data[section], "user": body["user"]}
    with pytest.raises(spec.SpecError, match="Windows-only"):
        spec.Spec.from_dict(data).validate()
