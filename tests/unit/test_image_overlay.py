"""Overlay assembly without mounting: short lowerdir names, the page and 500-layer limits, lookup."""
import os

import pytest

from labkit.errors import LabkitError
from labkit.images import layerdirs, overlay


def test_short_names_keep_500_deep_options_within_a_page(tmp_path):
    lowers = []
    for i in range(overlay.MAX_LOWERS):
        d = tmp_path / "layers" / "sha256" / f"{i:064x}" / "diff"
        d.mkdir(parents=True)
        lowers.append(str(d))
    assert sum(len(p) + 1 for p in lowers) > 8 * 4096            # full paths would never fit
    ov = overlay.prepare(str(tmp_path / "c" / "overlay"), lowers)
    assert len(ov.options()) < 4096
    assert ov.short_names()[0] == "l/499" and ov.short_names()[-1] == "l/0"   # top layer first
    assert os.readlink(tmp_path / "c" / "overlay" / "l" / "0") == lowers[0]
    assert ov.options().endswith("upperdir=upper,workdir=work,redirect_dir=off,metacopy=off")
    assert overlay.load(ov.base).lowers == lowers
    spec = ov.mount_spec()
    assert spec["cwd"] == ov.base and spec["type"] == "overlay"


def test_more_than_500_layers_are_refused_up_front(tmp_path):
    with pytest.raises(LabkitError, match="at most 500") as err:
        overlay.prepare(str(tmp_path / "o"), [str(tmp_path)] * 501)
    assert "squash" in err.value.hint
    assert not os.path.exists(tmp_path / "o")


def test_scratch_images_get_an_empty_lower(tmp_path):
    ov = overlay.prepare(str(tmp_path / "o"), [])
    assert ov.lowers == [str(tmp_path / "o" / "empty")] and os.listdir(ov.lowers[0]) == []


def test_lookup_walks_layers_from_the_top(tmp_path):
    bottom, top = tmp_path / "bottom", tmp_path / "top"
    (bottom / "etc").mkdir(parents=True)
    (bottom / "etc" / "passwd").write_text("old")
    (bottom / "etc" / "group").write_text("g")
    (bottom / "bin").mkdir()
    (bottom / "bin" / "sh").write_text("sh")
    (top / "etc").mkdir(parents=True)
    (top / "etc" / "passwd").write_text("new")
    (top / "bin").write_text("a file now covers the directory")
    layers_top_first = [str(top), str(bottom)]
    assert layerdirs.lookup(layers_top_first, "/etc/passwd") == str(top / "etc" / "passwd")
    assert layerdirs.lookup(layers_top_first, "etc/group") == str(bottom / "etc" / "group")
    assert layerdirs.lookup(layers_top_first, "/bin/sh") is None
    assert layerdirs.lookup(layers_top_first, "/nothing") is None


def test_disk_usage_counts_hard_links_once(tmp_path):
    (tmp_path / "a").write_bytes(b"x" * 100_000)
    os.link(tmp_path / "a", tmp_path / "b")
    once = layerdirs.disk_usage(str(tmp_path))
    assert 100_000 <= once < 200_000
