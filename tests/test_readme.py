"""The README's Python example runs as written, with only its first settings line changed to the
tiny preset and a scratch folder, and uses nothing but top-level ``spikeprune`` names."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
SETTINGS = 'task, glue, runs, preset = "sst2", "../shared/glue", "runs", "quick"'


def python_example() -> str:
    text = README.read_text()
    section = text[text.index("### Python"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_example_uses_only_the_public_api():
    import spikeprune

    tree = ast.parse(python_example())
    used = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)
            and isinstance(n.value, ast.Name) and n.value.id == "sp"}
    assert used and used <= set(spikeprune.__all__)
    imports = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert [ast.unparse(n) for n in imports] == ["import spikeprune as sp"]


@pytest.mark.integration
def test_readme_example_runs(tmp_path, glue_dir, ray_local, capsys):
    code = python_example()
    assert SETTINGS in code
    code = code.replace(SETTINGS, f'task, glue, runs, preset = "sst2", {str(glue_dir)!r}, {str(tmp_path)!r}, "tiny"')
    exec(compile(code, str(README), "exec"), {})
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == "True"  # the export re-measured within the tolerance
    assert (tmp_path / "py-temporal" / "report.html").is_file()
    assert list((tmp_path / "py-temporal" / "export").glob("trial-*/model/model.safetensors"))
