"""The tree shows the design card's parts, and only the package itself reaches inside them."""
from __future__ import annotations

import ast
import importlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Sequence
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


# ----------------------------------------------------------------------------- layering

#: The dependency order of the package's parts, lowest first (docs/DESIGN.md §2). A module may
#: import its own part and any part of a lower level, never one of its own level or above. A part
#: is a subpackage or a top-level module; "spikeprune" is the root's lazy workflow names.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("_lazy", "errors", "threads"),
    ("objectives", "data"),
    ("models",),
    ("costs",),
    ("records",),
    ("pareto",),
    ("training", "spaces"),
    ("trial",),
    ("samplers",),
    ("search",),
    ("results",),
    ("spikeprune",),
    ("cli",),
    ("__main__",),
)


def runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node of ``tree`` that can run: all but the bodies of ``if TYPE_CHECKING:`` blocks
    (imports for annotations only)."""
    found, todo = [], [tree]
    while todo:
        node = todo.pop()
        found.append(node)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            todo.extend(node.orelse)
        else:
            todo.extend(ast.iter_child_nodes(node))
    return found


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """Module -> the package's modules it imports: every import statement that can run (inside
    functions too) and every name a package's lazy ``_API`` table maps to a module."""
    files = {".".join(p.relative_to(root).with_suffix("").parts).removesuffix(".__init__"): p
             for p in (root / package).rglob("*.py")}

    def target(module: str, name: str | None = None) -> str | None:
        if name and f"{module}.{name}" in files:        # from pkg import submodule
            return f"{module}.{name}"
        return module if module in files else None

    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        found: set[str | None] = set()
        for node in runtime_nodes(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                if node.level:                            # relative: resolved against the importing module
                    base = module.split(".")[: len(module.split(".")) - node.level + (path.name == "__init__.py")]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                found |= {target(source, a.name) for a in node.names}
            elif isinstance(node, ast.Import):
                found |= {target(a.name) for a in node.names}
            elif isinstance(node, ast.AnnAssign | ast.Assign) and isinstance(node.value, ast.Dict):
                names = node.targets if isinstance(node, ast.Assign) else [node.target]
                if any(getattr(n, "id", None) == "_API" for n in names):
                    found |= {target(v.value) for v in node.value.values if isinstance(v, ast.Constant)}
        graph[module] = {m for m in found if m is not None} - {module}
    return graph


def part_of(module: str) -> str:
    """``spikeprune.search._driver`` -> ``search``; ``spikeprune`` -> ``spikeprune``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def layering_violations(graph: dict[str, set[str]], layers: Sequence[Sequence[str]]) -> list[str]:
    """Imports that go to a part of the same level or above, and parts not placed in ``layers``."""
    level = {part: i for i, names in enumerate(layers) for part in names}
    problems = sorted({f"{part_of(m)} is in no layer" for m in graph if part_of(m) not in level})
    for module, targets in sorted(graph.items()):
        for t in sorted(targets):
            a, b = part_of(module), part_of(t)
            if a != b and a in level and b in level and level[b] >= level[a]:
                problems.append(f"{module} imports {t}: {a} may not import {b}")
    return problems


def module_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Import cycles between modules, each as the path that closes it (found by a depth-first walk)."""
    state: dict[str, str] = {}
    cycles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        path.append(module)
        for t in sorted(graph.get(module, ())):
            if state.get(t) == "open":
                cycles.append(path[path.index(t):] + [t])
            elif t not in state:
                visit(t, path)
        path.pop()
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
    return cycles


def test_the_import_checks_find_upward_imports_and_cycles(tmp_path):
    """On a made-up package: an import inside a function that goes up a level, a lazy name that
    does, an import between two parts of one level, and a cycle."""
    files = {
        "pkg/__init__.py": "",
        "pkg/low/__init__.py": "_API = {'B': 'pkg.high._b'}\n",
        "pkg/low/_a.py": "def f():\n    from pkg.high import _b\n",
        "pkg/high/__init__.py": "",
        "pkg/high/_b.py": "from pkg.low._a import f\nfrom . import _c\n",
        "pkg/high/_c.py": "import pkg.high._b\nfrom pkg import side\n",
        "pkg/side.py": "from pkg.low import _a\nfrom typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.high\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg.low._a"] == {"pkg.high._b"} and graph["pkg.low"] == {"pkg.high._b"}
    assert graph["pkg.high._b"] == {"pkg.low._a", "pkg.high._c"}
    assert layering_violations(graph, [("low", "side"), ("high",), ("pkg",)]) == [
        "pkg.low imports pkg.high._b: low may not import high",
        "pkg.low._a imports pkg.high._b: low may not import high",
        "pkg.side imports pkg.low._a: side may not import low",
    ]
    assert layering_violations(graph, [("low",), ("high",)])[:2] == ["pkg is in no layer", "side is in no layer"]
    assert module_cycles(graph) == [["pkg.high._b", "pkg.high._c", "pkg.high._b"],
                                    ["pkg.high._b", "pkg.high._c", "pkg.side", "pkg.low._a", "pkg.high._b"]]


def test_parts_import_only_downwards():
    """docs/DESIGN.md §2: search does not reach results, nothing below the command reaches it, and
    no two parts import each other."""
    assert layering_violations(import_graph(ROOT, "spikeprune"), LAYERS) == []


def test_each_part_exports_its_own_modules():
    """A subpackage's lazy names come from its own private modules, so its surface is its own."""
    for part in SUBPACKAGES:
        if part != "cli":
            package = f"spikeprune.{part}"
            outside = {m for m in importlib.import_module(package)._API.values() if not m.startswith(package + "._")}
            assert not outside, (package, outside)


def test_no_module_import_cycles():
    assert module_cycles(import_graph(ROOT, "spikeprune")) == []


def test_importing_spikeprune_changes_nothing():
    """``import spikeprune`` and its public parts set no environment variable and load no torch,
    Ray or Optuna: work starts where a command or a function runs (``spikeprune.threads``)."""
    code = ("import json, os, sys; before = dict(os.environ); import spikeprune, "
            + ", ".join(f"spikeprune.{p}" for p in SUBPACKAGES)
            + "; changed = sorted(k for k in {*before, *os.environ} if before.get(k) != os.environ.get(k))"
            + "; heavy = sorted(m for m in ('torch', 'ray', 'optuna', 'numba') if m in sys.modules)"
            + "; print(json.dumps({'changed': changed, 'heavy': heavy}))")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert json.loads(done.stdout) == {"changed": [], "heavy": []}
