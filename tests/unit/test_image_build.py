"""Builds without RUN (no root needed): config steps, COPY layers, the cache and reproducibility."""
import os

import pytest

from labkit.images import build, image, layers
from labkit.images.store import Store

CONTAINERFILE = """\
FROM scratch
ARG VERSION=1.0
ENV APP_HOME=/app VERSION=$VERSION
WORKDIR $APP_HOME
COPY bin/ ./bin/
COPY config.txt /etc/app.conf
LABEL version=$VERSION
EXPOSE 8080
USER 1000:1000
ENTRYPOINT ["/app/bin/serve"]
CMD ["--port", "8080"]
"""


@pytest.fixture
def context(tmp_path):
    ctx = tmp_path / "ctx"
    (ctx / "bin").mkdir(parents=True)
    (ctx / "bin" / "serve").write_text("#!/bin/sh\necho serving\n")
    os.chmod(ctx / "bin" / "serve", 0o755)
    (ctx / "config.txt").write_text("port=8080\n")
    (ctx / "Containerfile").write_text(CONTAINERFILE)
    return ctx


def test_config_steps_copy_layers_and_history(tmp_path, context):
    store = Store(str(tmp_path / "data" / "images"))
    result = build.build(str(context), store, tag="app")
    cfg = result.image.config.config
    assert cfg.env == ["APP_HOME=/app", "VERSION=1.0"]
    assert (cfg.working_dir, cfg.user, cfg.labels) == ("/app", "1000:1000", {"version": "1.0"})
    assert cfg.entrypoint == ["/app/bin/serve"] and cfg.cmd == ["--port", "8080"]
    assert cfg.exposed_ports == {"8080/tcp": {}}
    assert len(result.image.layers) == 2                    # only COPY made layers
    history = result.image.config.history
    assert [h.get("empty_layer", False) for h in history].count(False) == 2
    assert all(h["created"] == "1970-01-01T00:00:00Z" for h in history)
    names = [m.name for m in layers.list_layer(store, result.image.layers[0])]
    assert names == ["app", "app/bin", "app/bin/serve"]
    entries = layers.list_layer(store, result.image.layers[1])
    assert [(m.name, m.uid, m.mtime) for m in entries] == [("etc", 0, 0), ("etc/app.conf", 0, 0)]
    assert image.open_image(store, "app").digest == result.image.digest


def test_an_unchanged_rebuild_hits_the_cache_and_gives_the_same_digest(tmp_path, context):
    store = Store(str(tmp_path / "data" / "images"))
    first = build.build(str(context), store, tag="app")
    assert first.cache_hits == 0
    os.utime(context / "config.txt", (1, 1))                # mtimes are not content
    again = build.build(str(context), store, tag="app")
    assert again.cache_hits == 2 and again.image.digest == first.image.digest
    (context / "config.txt").write_text("port=9090\n")      # the second COPY changes ...
    changed = build.build(str(context), store, tag="app")
    assert [s.cached for s in changed.steps if s.layer] == [True, False]   # ... the first still hits
    assert changed.image.digest != first.image.digest


def test_build_args_change_the_result_and_the_cache_key(tmp_path, context):
    store = Store(str(tmp_path / "data" / "images"))
    one = build.build(str(context), store)
    two = build.build(str(context), store, build_args={"VERSION": "2.0"})
    assert two.image.config.config.labels == {"version": "2.0"}
    assert one.image.digest != two.image.digest


def test_reproducible_across_stores_without_cache(tmp_path, context):
    a = build.build(str(context), Store(str(tmp_path / "a" / "images")), use_cache=False)
    b = build.build(str(context), Store(str(tmp_path / "b" / "images")), use_cache=False)
    assert a.image.digest == b.image.digest and a.cache_hits == b.cache_hits == 0


def test_copy_cannot_reach_outside_the_context(tmp_path, context):
    (tmp_path / "secret").write_text("host secret")
    os.symlink(str(tmp_path / "secret"), context / "link")
    store = Store(str(tmp_path / "data" / "images"))
    for line, message in (("COPY ../secret /x", "outside the build context"),
                          ("COPY link /x", "resolves outside"),
                          ("COPY missing /x", "not found")):
        (context / "Containerfile").write_text(f"FROM scratch\n{line}\n")
        with pytest.raises(build.BuildError, match=message):
            build.build(str(context), store)


def test_copy_chmod_and_numeric_chown(tmp_path, context):
    (context / "Containerfile").write_text("FROM scratch\nCOPY --chmod=700 --chown=7:8 bin /opt/\n")
    store = Store(str(tmp_path / "images"))
    result = build.build(str(context), store)
    entries = {m.name: (m.mode, m.uid, m.gid) for m in layers.list_layer(store, result.image.layers[0])}
    assert entries["opt/serve"] == (0o700, 7, 8)


def test_a_second_from_is_refused(tmp_path, context):
    (context / "Containerfile").write_text("FROM scratch\nFROM scratch\n")
    with pytest.raises(build.BuildError, match="multi-stage"):
        build.build(str(context), Store(str(tmp_path / "images")))
