"""Chapter 04's exercise checks: each wrong answer gets its own hint; the reference passes."""
import os
import shutil

import pytest

from labkit import rootfs, runtime
from labkit.check import ch04
from labkit.images import base, build, image, layers
from labkit.images.store import Store

# Host only, as chapter 04 itself: overlayfs on the students' kernel is covered in the VM by
# test_images.py; these checks judge files and layers.

GOOD_ORDER = """\
FROM busybox
WORKDIR /app
RUN mkdir deps && echo "slow dependency install" > deps/installed
COPY app.txt ./
CMD ["cat", "app.txt", "deps/installed"]
"""


@pytest.fixture(autouse=True)
def no_containers_left():
    yield
    assert runtime.list_containers() == []


@pytest.fixture(scope="module")
def store(lab_tmp):
    root = os.path.join(lab_tmp, "ch04-check")
    s = Store(os.path.join(root, "images"))
    base.busybox_image(s)
    yield s
    shutil.rmtree(root, ignore_errors=True)


def built(store, tmp_path, containerfile, tag="no-vi"):
    ctx = tmp_path / "ctx"
    ctx.mkdir(exist_ok=True)
    (ctx / "Containerfile").write_text(containerfile)
    return build.build(str(ctx), store, tag=tag).image


def with_top_layer(store, layer, tag="no-vi"):
    """busybox's layer + `layer`, tagged, as write_image makes it."""
    bb = image.open_image(store, "busybox")
    config = base.new_config(bb.config.config)
    config.rootfs["diff_ids"] = [*bb.diff_ids, layer.diff_id]
    return image.write_image(store, config, [*bb.layers, layer.descriptor()], tag)


def trees(tmp_path, edit):
    """(old, new): the busybox tree and a copy changed by `edit(new)`."""
    old = rootfs.build_busybox_rootfs(str(tmp_path / "old"))
    new = str(tmp_path / "new")
    shutil.copytree(old, new, symlinks=True)
    edit(new)
    return old, new


# --- exercise 1 ------------------------------------------------------------------------------
def test_reference_containerfile_passes(store, tmp_path):
    built(store, tmp_path, "FROM busybox\nRUN rm /bin/vi\n")
    verdict = ch04.without_vi(store)
    assert verdict, repr(verdict)
    assert "bin/.wh.vi" in verdict.message


def test_reference_diff_layer_passes(store, tmp_path):
    old, new = trees(tmp_path, lambda new: os.unlink(os.path.join(new, "bin", "vi")))
    with_top_layer(store, layers.diff_layer(store, old, new, mtime=0, owner=(0, 0)))
    assert ch04.without_vi(store)


def test_no_such_tag(store):
    verdict = ch04.without_vi(store, tag="nothing-here")
    assert not verdict and "no image tagged 'nothing-here'" in verdict.message and "tag=" in verdict.hint


def test_the_base_itself_has_no_layer_of_its_own(store):
    store.tag("same-as-busybox", store.resolve("busybox"))
    verdict = ch04.without_vi(store, tag="same-as-busybox")
    assert not verdict and "no layer of its own" in verdict.message and "RUN rm /bin/vi" in verdict.hint


def test_a_flattened_copy_shares_nothing(store, tmp_path):
    _, new = trees(tmp_path, lambda new: os.unlink(os.path.join(new, "bin", "vi")))
    layer = layers.diff_layer(store, None, new, mtime=0, owner=(0, 0))
    config = base.new_config()
    config.rootfs["diff_ids"] = [layer.diff_id]
    image.write_image(store, config, [layer.descriptor()], "flat")
    verdict = ch04.without_vi(store, tag="flat")
    assert not verdict and "not busybox's layers" in verdict.message and "by digest" in verdict.hint


def test_a_whole_tree_layer_on_top_has_no_whiteout(store, tmp_path):
    _, new = trees(tmp_path, lambda new: os.unlink(os.path.join(new, "bin", "vi")))
    with_top_layer(store, layers.diff_layer(store, None, new, mtime=0, owner=(0, 0)), tag="whole")
    verdict = ch04.without_vi(store, tag="whole")
    assert not verdict and "copy of the whole tree" in verdict.message and "diff_layer(store, OLD, NEW)" in verdict.hint


def test_an_emptied_file_is_not_a_deletion(store, tmp_path):
    built(store, tmp_path, "FROM busybox\nRUN rm /bin/vi && touch /bin/vi\n", tag="emptied")
    verdict = ch04.without_vi(store, tag="emptied")
    assert not verdict and "instead of deleting" in verdict.message and "whiteout" in verdict.hint


def test_deleting_more_than_vi(store, tmp_path):
    built(store, tmp_path, "FROM busybox\nRUN rm /bin/vi /bin/ls\n", tag="too-much")
    verdict = ch04.without_vi(store, tag="too-much")
    assert not verdict and "also deletes /bin/ls" in verdict.message and "only" in verdict.hint


def test_adding_files_besides_the_deletion(store, tmp_path):
    built(store, tmp_path, "FROM busybox\nRUN rm /bin/vi && echo hi > /etc/motd\n", tag="extra")
    verdict = ch04.without_vi(store, tag="extra")
    assert not verdict and "also adds or changes /etc/motd" in verdict.message


def test_two_layers_on_top(store, tmp_path):
    built(store, tmp_path, "FROM busybox\nRUN rm /bin/vi\nRUN true\n", tag="two")
    verdict = ch04.without_vi(store, tag="two")
    assert not verdict and "2 layers on top" in verdict.message and "single RUN" in verdict.hint


def test_a_whiteout_in_the_wrong_directory(store, tmp_path):
    # a hand-made layer: /.wh.vi deletes /vi (which does not exist), not /bin/vi
    old, new = str(tmp_path / "o"), str(tmp_path / "n")
    os.makedirs(old)
    os.makedirs(new)
    open(os.path.join(old, "vi"), "w").close()
    with_top_layer(store, layers.diff_layer(store, old, new, mtime=0, owner=(0, 0)), tag="misplaced")
    verdict = ch04.without_vi(store, tag="misplaced")
    assert not verdict and "no whiteout for /bin/vi" in verdict.message and "RUN rm /bin/vi" in verdict.hint


# --- exercise 2 ------------------------------------------------------------------------------
def test_reference_order_passes():
    verdict = ch04.cache_friendly(GOOD_ORDER)
    assert verdict, repr(verdict)
    assert "1 of 2 layer steps rebuilt" in verdict.message


def test_the_given_order_reruns_the_run_step():
    verdict = ch04.cache_friendly(ch04.GIVEN)
    assert not verdict and "the RUN step ran again" in verdict.message
    assert "move COPY app.txt below the RUN" in verdict.hint


@pytest.mark.parametrize("text, message, hint", [
    ("FROM busybox\nADD app.txt /app/\n", "does not parse", "use COPY"),
    ("FROM busybox\nWORKDIR /app\nCOPY app.txt ./\nCMD [\"cat\", \"app.txt\"]\n",
     "no RUN step", "keep the RUN step"),
    (GOOD_ORDER.replace("mkdir deps", "mkdir /nonexistent/deps"), "the build failed", "its output"),
    (GOOD_ORDER.replace('CMD ["cat", "app.txt", "deps/installed"]', 'CMD ["cat", "deps/installed"]'),
     "does not print app.txt", "COPY app.txt"),
    (GOOD_ORDER.replace('"deps/installed"]', '"app.txt"]'), "does not print deps/installed", "keep the RUN"),
])
def test_each_wrong_containerfile_gets_its_hint(text, message, hint):
    verdict = ch04.cache_friendly(text)
    assert not verdict
    assert message in verdict.message and hint in verdict.hint, repr(verdict)


def test_the_checks_leave_nothing_behind(store, tmp_path):
    import glob

    before = set(glob.glob("/tmp/labkit-check-ch04-*"))
    ch04.cache_friendly(GOOD_ORDER)
    built(store, tmp_path, "FROM busybox\nRUN rm /bin/vi\n")
    ch04.without_vi(store)
    assert set(glob.glob("/tmp/labkit-check-ch04-*")) == before
