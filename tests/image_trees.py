"""A small seeded generator of random directory trees and of edits to them (property-style tests)."""
from __future__ import annotations

import os
import random
import shutil
import stat

FILE_MODES = (0o644, 0o600, 0o755, 0o4755, 0o2755, 0o444)
DIR_MODES = (0o755, 0o700, 0o1777, 0o2775)


def _name(rng: random.Random) -> str:
    return rng.choice(["a", "b", "c", "etc", "bin", "lib", "x.conf", "data", "ü", "long" * 20, "s p"]) + str(rng.randrange(50))


def _dirs(root: str) -> list[str]:
    """Real directories only: os.walk lists symlinks to directories (e.g. one to "/") as dirs too,
    and writing below those would write on the host."""
    found = [root]
    for dirpath, dirnames, _ in os.walk(root):
        found += [os.path.join(dirpath, d) for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
    return found


def _inside(root: str, path: str) -> str:
    real_root = os.path.realpath(root)
    assert os.path.realpath(os.path.dirname(path)).startswith(real_root), f"generator escaped: {path}"
    return path


def _entries(root: str) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        found += [os.path.join(dirpath, n) for n in dirnames + filenames]
    return sorted(found)


def add_random(root: str, rng: random.Random, count: int) -> None:
    for _ in range(count):
        parent = rng.choice(_dirs(root))
        path = _inside(root, os.path.join(parent, _name(rng)))
        if os.path.lexists(path):
            continue
        kind = rng.random()
        if kind < 0.3:
            os.mkdir(path)
        elif kind < 0.75:
            with open(path, "wb") as f:
                f.write(rng.randbytes(rng.choice([0, 1, 100, 5000])))
            os.chmod(path, rng.choice(FILE_MODES))
        elif kind < 0.85:
            os.symlink(rng.choice(["/etc/passwd", "../a1", "b2", "/", "nowhere"]), path)
        elif kind < 0.93:
            files = [p for p in _entries(root) if os.path.isfile(p) and not os.path.islink(p)]
            if files:
                os.link(rng.choice(files), path)
        else:
            os.mkfifo(path)


def mutate(root: str, rng: random.Random, count: int) -> None:
    """Edits of every kind a layer must carry: change, chmod, delete, replace, empty-and-refill dirs."""
    for _ in range(count):
        entries = _entries(root)
        if not entries:
            add_random(root, rng, 3)
            continue
        path = rng.choice(entries)
        if not os.path.lexists(path):
            continue
        st = os.lstat(path)
        action = rng.random()
        if action < 0.2 and stat.S_ISREG(st.st_mode):
            os.chmod(path, st.st_mode | 0o200)  # read-only files too (without root)
            with open(path, "ab") as f:
                f.write(b"more")
            os.chmod(path, stat.S_IMODE(st.st_mode))
        elif action < 0.3 and not stat.S_ISLNK(st.st_mode):
            os.chmod(path, rng.choice(DIR_MODES if stat.S_ISDIR(st.st_mode) else FILE_MODES))
        elif action < 0.5:
            _remove(path)
        elif action < 0.6:  # a directory replaced by a file, or the other way round
            _remove(path)
            if stat.S_ISDIR(st.st_mode):
                with open(path, "w") as f:
                    f.write("now a file")
            else:
                os.mkdir(path)
                add_random(path, rng, 2)
        elif action < 0.7 and stat.S_ISDIR(st.st_mode) and os.listdir(path):  # opaque
            shutil.rmtree(path)
            os.mkdir(path)
            add_random(path, rng, 2)
        else:
            add_random(root, rng, 2)


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def fix_times(root: str, rng: random.Random) -> None:
    """Whole-second mtimes (tar keeps seconds), deepest first so parents keep theirs."""
    for path in sorted(_entries(root), key=lambda p: -p.count("/")):
        t = rng.choice([1_600_000_000, 1_700_000_000, rng.randrange(10**9, 2 * 10**9)])
        os.utime(path, (t, t), follow_symlinks=False)


def random_tree(root: str, seed: int, count: int = 40) -> None:
    rng = random.Random(seed)
    os.makedirs(root)
    add_random(root, rng, count)
    fix_times(root, rng)
