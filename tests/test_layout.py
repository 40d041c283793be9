"""The tree shows the design card's parts, and only the package itself reaches inside them."""
from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "spikeprune"
#: The card's parts, and the other public subpackages.
PARTS = ("models", "spaces", "search", "results")
SUBPACKAGES = (*PARTS, "data", "costs", "training", "trial", "samplers", "cli")


def private_imports(source: str) -> list[str]:
    """Modules of spikeprune named with a leading underscore in any part that ``source`` imports."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found += [n for n in names if n.startswith("spikeprune.") and any(p.startswith("_") and not p.startswith("__") for p in n.split(".")[1:])]
    return found


def test_private_imports_are_found():
    assert private_imports("from spikeprune.search._driver import Driver") != []
    assert private_imports("from spikeprune.models import _spiking") != []
    assert private_imports("import spikeprune._lazy") != []
    assert private_imports("from spikeprune.search import run_search\nimport spikeprune") == []


@pytest.mark.parametrize("part", SUBPACKAGES)
def test_the_card_parts_are_public_subpackages(part):
    assert (PACKAGE / part / "__init__.py").is_file()
    module = importlib.import_module(f"spikeprune.{part}")
    if part != "cli":
        assert module.__all__ and all(not name.startswith("_") for name in module.__all__)
        for name in module.__all__:
            getattr(module, name)  # every advertised name resolves


def test_cli_benchmarks_and_readme_use_public_names_only():
    offenders = {}
    for path in [*(PACKAGE / "cli").glob("*.py"), *(ROOT / "benchmarks").glob("*.py")]:
        if hits := private_imports(path.read_text(encoding="utf-8")):
            offenders[str(path.relative_to(ROOT))] = hits
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for block in re.findall(r"```python\n(.*?)```", readme, flags=re.S):
        if hits := private_imports(block):
            offenders["README.md"] = hits
    assert not offenders, f"private modules imported outside the package: {offenders}"


def test_counting_imports_no_torch():
    """Operation counting is arithmetic on a spike record: it must load without torch (and the
    family facts it asks come from a torch-free module)."""
    code = ("import sys; from spikeprune.costs import ann_reference, count_ops, size_bits; "
            "from spikeprune.models import FAMILIES, "
            "SimRecord, SpikingBertConfig; print(sorted(m for m in ('torch', 'numba', 'ray', 'optuna') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
