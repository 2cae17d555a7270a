"""The supported-layers table: rows from the registry, its Markdown, and README.md kept in sync."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from protonet import layertable
from protonet.layers import registry
from protonet.layertable import BEGIN, END, MarkerError, layer_table, render_markdown, update_readme

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
WRITE_CMD = "python -m protonet.layertable --write README.md"


def test_readme_supported_layers_section_is_current():
    assert README.is_file(), f"{README} is missing; create it with the markers {BEGIN} / {END}, then run {WRITE_CMD}"
    text = README.read_text(encoding="utf-8")
    assert BEGIN in text and END in text, (
        f"README.md lacks the supported-layers markers {BEGIN} / {END}; add them and run {WRITE_CMD}")
    section = layertable.readme_section(README)
    assert section.strip() == render_markdown().strip(), (
        f"README.md's supported-layers section is out of date (layer types or facets changed); run {WRITE_CMD}")


def test_one_row_per_registered_type():
    rows = {r["type"]: r for r in layer_table()}
    assert set(rows) == set(registry.all_types())
    conv = rows["Convolution"]
    assert conv["family"] == "core" and conv["builtin"] and conv["module"] == "protonet.layers.core"
    assert all(conv[f] for f in ("parse", "infer", "weights", "cost", "kernel", "lower", "examples"))
    assert conv["n_examples"] == len(type(registry.get("Convolution")).examples) > 0
    relu = rows["ReLU"]
    assert relu["parse"] and not relu["weights"] and not relu["cost"]  # Layer's defaults: no blobs, 0 MACs
    assert rows["Input"]["source"] and not rows["Input"]["examples"]
    names = registry.names_and_aliases()
    for t, r in rows.items():
        assert all(names[a] == t for a in r["aliases"])
    assert sum(len(r["aliases"]) for r in rows.values()) == len(names) - len(rows)


def test_markdown_lists_every_builtin_type_once():
    md = render_markdown()
    lines = md.splitlines()
    assert lines[0].startswith("| Type | Aliases | Family | parse | infer |")
    table = [ln for ln in lines[2:] if ln.startswith("| `")]
    builtin = [r for r in layer_table() if r["builtin"]]
    assert len(table) == len(builtin)
    assert {ln.split("`")[1] for ln in table} == {r["type"] for r in builtin}
    assert all(ln.count("|") == lines[0].count("|") for ln in table)
    assert f"{len(builtin)} layer types" in md


def test_plugin_types_are_listed_by_module_but_kept_out_of_the_readme():
    from protonet.layers.base import Example, Layer

    class Twice(Layer):
        type_name = "TableTestTwice"
        aliases = ("TableTestDouble",)
        examples = (Example('layer { name: "t" type: "TableTestTwice" bottom: "in0" top: "out" }', ((2,),)),)

        def infer(self, a, shapes, ctx):
            return [shapes[0]]

        def kernel(self, a, xs, w):
            return [2 * xs[0]]

        def lower(self, a, g):
            g.op("Add", [g.inputs[0], g.inputs[0]], g.outputs)

    registry.register(Twice)
    try:
        row = [r for r in layer_table() if r["type"] == "TableTestTwice"][0]
        assert row["family"] == __name__ and not row["builtin"] and row["aliases"] == ["TableTestDouble"]
        assert layer_table()[-1]["type"] == "TableTestTwice"  # plugins after the built-ins
        assert "TableTestTwice" not in render_markdown()
        assert "| `TableTestTwice` | `TableTestDouble` |" in render_markdown(include_plugins=True)
        assert all(r["builtin"] for r in layer_table(include_plugins=False))
    finally:
        registry.unregister("TableTestTwice")


DOC = f"# title\n\nintro\n\n## Supported layers\n\n{BEGIN}\nold table\n{END}\n\nafter\n"


def test_update_readme_rewrites_only_the_section(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(DOC, encoding="utf-8")
    readme.chmod(0o640)
    assert update_readme(readme) is True
    text = readme.read_text(encoding="utf-8")
    assert text.startswith("# title\n\nintro\n\n## Supported layers\n\n" + BEGIN + "\n| Type |")
    assert text.endswith(render_markdown() + END + "\n\nafter\n")
    assert readme.stat().st_mode & 0o777 == 0o640
    assert update_readme(readme) is False  # idempotent
    assert layertable.is_up_to_date(readme)
    assert [p.name for p in tmp_path.iterdir()] == ["README.md"]  # no temporary file left


@pytest.mark.parametrize("text,message", [
    ("# no markers\n", "markers .* are missing; add the lines"),
    (f"{END}\n{BEGIN}\n", "comes before"),
    (f"{BEGIN}\n{END}\n{BEGIN}\n", "exactly once"),
])
def test_update_readme_needs_the_markers(tmp_path, text, message):
    readme = tmp_path / "README.md"
    readme.write_text(text, encoding="utf-8")
    with pytest.raises(MarkerError, match=message):
        update_readme(readme)
    assert readme.read_text(encoding="utf-8") == text


def test_main_check_and_write_exit_codes(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text(DOC, encoding="utf-8")
    assert layertable.main(["--check", str(readme)]) == 1
    assert "--write" in capsys.readouterr().err
    assert layertable.main(["--write", str(readme)]) == 0
    assert layertable.main(["--check", str(readme)]) == 0
    assert layertable.main(["--check", str(tmp_path / "absent.md")]) == 2
    (tmp_path / "bare.md").write_text("nothing\n")
    assert layertable.main(["--write", str(tmp_path / "bare.md")]) == 2
    assert "markers" in capsys.readouterr().err


def test_module_entry_point(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(DOC, encoding="utf-8")
    run = [sys.executable, "-m", "protonet.layertable"]
    r = subprocess.run(run + ["--check", str(readme)], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 1, r.stderr
    r = subprocess.run(run + ["--write", str(readme)], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and "updated" in r.stdout, r.stderr
    r = subprocess.run(run, capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and r.stdout == render_markdown()
