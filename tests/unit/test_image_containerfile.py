"""The Containerfile subset: parsing, forms, flags, expansion — and errors that say what to do."""
import pytest

from labkit.images import containerfile as cf

TEXT = r"""
# syntax and comments are skipped
ARG BASE=busybox
FROM ${BASE}
ENV A=1 \
    # a comment inside a continuation
    B="two words"
ENV LEGACY value with spaces
RUN echo "$A" \
    && echo done
RUN ["/bin/echo", "exec form"]
COPY --chown=1000:1000 src/ /app/
CMD ["sh"]
ENTRYPOINT echo hi
EXPOSE 80 53/udp
LABEL a=b "c d"=e
USER nobody
WORKDIR /srv
"""


def test_parse_instructions_lines_and_forms():
    found = cf.parse(TEXT)
    assert [i.cmd for i in found] == ["ARG", "FROM", "ENV", "ENV", "RUN", "RUN", "COPY", "CMD", "ENTRYPOINT",
                                      "EXPOSE", "LABEL", "USER", "WORKDIR"]
    env = found[2]
    assert env.line == 5 and env.args == 'A=1 B="two words"'
    run = found[4]
    assert run.argv() == ["/bin/sh", "-c", 'echo "$A" && echo done']
    assert found[5].exec_form == ("/bin/echo", "exec form") and found[5].argv() == ["/bin/echo", "exec form"]
    assert found[6].flag("chown") == "1000:1000"
    assert str(found[6]) == "COPY --chown=1000:1000 src/ /app/"
    assert str(found[7]) == 'CMD ["sh"]'


def test_key_values_forms():
    assert cf.key_values('A=1 B="two words" C=', "ENV") == [("A", "1"), ("B", "two words"), ("C", "")]
    assert cf.key_values("LEGACY value with spaces", "ENV") == [("LEGACY", "value with spaces")]
    assert cf.key_values('a=b "c d"=e', "LABEL") == [("a", "b"), ("c d", "e")]
    with pytest.raises(cf.ContainerfileError, match="key=value"):
        cf.key_values("just words", "LABEL")


@pytest.mark.parametrize("text, expected", [
    ("$A/${B}", "1/two"),
    ("${MISSING:-fallback}", "fallback"),
    ("${A:-fallback}", "1"),
    ("${A:+set}${MISSING:+set}", "set"),
    (r"\$A costs $$", "$A costs $$"),
    ("$MISSING.", "."),
])
def test_expand(text, expected):
    assert cf.expand(text, {"A": "1", "B": "two"}) == expected


def test_copy_args_and_expose():
    instr = cf.parse("FROM scratch\nCOPY $SRC a b /dest/")[1]
    assert cf.copy_args(instr, {"SRC": "x"}) == (["x", "a", "b"], "/dest/")
    instr = cf.parse('FROM scratch\nCOPY ["a b", "/c"]')[1]
    assert cf.copy_args(instr, {}) == (["a b"], "/c")
    assert cf.exposed("80 53/udp 8080/tcp") == ["80/tcp", "53/udp", "8080/tcp"]
    with pytest.raises(cf.ContainerfileError, match="not a port"):
        cf.exposed("http")


@pytest.mark.parametrize("text, message", [
    ("RUN echo", "must start with FROM"),
    ("FROM scratch\nADD x /", "unsupported instruction 'ADD'"),
    ("FROM scratch\nHEALTHCHECK NONE", "unsupported instruction"),
    ("FROM scratch\nRUN --mount=type=cache echo", "--mount is not supported"),
    ("FROM scratch\nCOPY --from=build /a /b", "--from is not supported"),
    ("FROM scratch\nRUN", "needs arguments"),
])
def test_errors_name_the_line_and_the_fix(text, message):
    with pytest.raises(cf.ContainerfileError, match=message) as err:
        cf.parse(text)
    assert err.value.hint


def test_volume_takes_absolute_paths_in_both_forms():
    from labkit.images import containerfile as cf

    _, shell, exec_form = cf.parse('FROM busybox\nVOLUME /data /logs\nVOLUME ["/cache"]\n')
    assert cf.volumes(shell, {}) == ["/data", "/logs"] and cf.volumes(exec_form, {}) == ["/cache"]
    with pytest.raises(cf.ContainerfileError, match="absolute"):
        cf.volumes(cf.parse("FROM busybox\nVOLUME data\n")[1], {})
