"""The README starts with exactly two set-up commands, and CI runs the second one."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def setup_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Set up", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block, "README's Set up section has no sh block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_two_setup_commands():
    cmds = setup_commands()
    assert len(cmds) == 2
    assert "protonet demo" in cmds[0] and "pytest" in cmds[1]


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert setup_commands()[1] in ci


def test_plugin_example_runs(tmp_path):
    """The README's plugin example, as written, registers a type that compiles and verifies."""
    import subprocess
    import sys

    section = (ROOT / "README.md").read_text().split("## Plugins", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    (tmp_path / "mish.py").write_text(code)
    (tmp_path / "net.prototxt").write_text('input: "x"\ninput_shape { dim: 2 dim: 5 }\n'
                                           'layer { name: "m" type: "Mish" bottom: "x" top: "y" }\n')
    r = subprocess.run([sys.executable, "-m", "protonet", "--plugin", "mish.py", "verify", "net.prototxt"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "verify: OK" in r.stdout
