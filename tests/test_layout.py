"""The layout rule: data -> models -> train -> generate -> mjd -> evaluate -> lewidi -> pipeline; a module never
imports a later layer, the shared top-level modules import no layer, and docs/architecture.md names every module."""

from __future__ import annotations

import ast
import re

from conftest import ROOT

STAGES = {"data": 1, "models": 1.5, "train": 2, "generate": 3, "mjd": 4, "evaluate": 5, "lewidi": 5.5, "pipeline": 6, "study": 7}
IMPORT = re.compile(r"^\s*(?:from|import) capo\.(\w+)", re.MULTILINE)


def _modules():
    return sorted((ROOT / "capo").rglob("*.py"))


def test_no_module_imports_a_later_stage():
    wrong = []
    for path in _modules():
        parts = path.relative_to(ROOT / "capo").parts
        own = STAGES.get(parts[0]) if len(parts) > 1 else 0  # top level: below every stage
        for imported in IMPORT.findall(path.read_text(encoding="utf-8")):
            if imported in STAGES and STAGES[imported] > own:
                wrong.append(f"{path.relative_to(ROOT)} imports capo.{imported}")
    assert wrong == []


def test_architecture_is_generated_from_the_code():
    from capo.pipeline.architecture import OUTPUT, render

    assert OUTPUT.read_text(encoding="utf-8") == render(), "run: python -m capo.pipeline.architecture"


def _imports(path) -> set[str]:
    """The `capo` modules a file imports (function-local imports included)."""
    from capo.code_identity import _imported

    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    return _imported(ast.parse(path.read_text(encoding="utf-8")), package)


def test_no_import_cycle():
    from graphlib import CycleError, TopologicalSorter

    graph = {}
    for path in _modules():
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        # a module importing its own package's __init__ (or a package its own module) is no cycle
        graph[name] = {other for other in _imports(path) if other != name and not name.startswith(other + ".")
                       and not other.startswith(name + ".")}
    try:
        TopologicalSorter(graph).prepare()
    except CycleError as err:
        raise AssertionError(f"import cycle: {' -> '.join(err.args[1])}") from None


def test_no_module_over_500_lines():
    long = {str(p.relative_to(ROOT)): n for p in _modules()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 500}
    assert long == {}
