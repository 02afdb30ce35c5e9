"""The README's "labkit in one screen" works as written: every python and sh block of that
section runs, in order, from a clean state (its own data and run roots, its own demo dir)."""
from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys

import pytest

README = os.path.join(os.path.dirname(__file__), "..", "..", "README.md")
SECTION = "## labkit in one screen"


def blocks() -> list[tuple[str, str]]:
    with open(README) as f:
        text = f.read()
    section = text[text.index(SECTION):]
    section = section[:section.index("\n## ", 1)] if "\n## " in section[1:] else section
    return re.findall(r"```(python|sh)\n(.*?)```", section, re.S)


def port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def test_the_section_has_code_to_run():
    kinds = [kind for kind, _ in blocks()]
    assert kinds.count("python") >= 1 and kinds.count("sh") >= 2


@pytest.mark.skipif(not (port_free(5000) and port_free(8080)),
                    reason="127.0.0.1:5000 or :8080 is taken on this machine (the README's registry and published ports)")
def test_every_block_runs_in_order(lab_tmp):
    demo = os.path.join(lab_tmp, "readme-demo")
    env = {**os.environ, "LABKIT_DATA_ROOT": os.path.join(lab_tmp, "readme-data"),
           "LABKIT_RUN_ROOT": os.path.join(lab_tmp, "readme-run")}
    try:
        for kind, code in blocks():
            code = code.replace("/tmp/labkit-demo", demo)
            argv = [sys.executable, "-c", code] if kind == "python" else ["bash", "-euo", "pipefail", "-c", code]
            done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, f"{kind} block failed:\n{code}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
            if "labkit run --rm app" in code:
                assert "built\n" in done.stdout
            if "cat /data/starts" in code:
                assert len(done.stdout.split("\n")) > 2  # two starts recorded in the volume
            if "network create app" in code:
                assert done.stdout.count("hello from api\n") == 2  # by the published port, and by name
    finally:
        subprocess.run(["labkit", "registry", "stop"], env=env, capture_output=True)
        subprocess.run([sys.executable, "-c", "import sys; from labkit.engine.containers import Engine; "
                        "Engine(sys.argv[1]).clear(tolerant=True)", env["LABKIT_DATA_ROOT"]], env=env)
        shutil.rmtree(demo, ignore_errors=True)
