"""The layout rule: data -> train -> generate -> mjd -> evaluate -> pipeline; a module never imports a later stage,
the shared top-level modules import no stage, and docs/architecture.md names every module."""

from __future__ import annotations

import re

from conftest import ROOT

STAGES = {"data": 1, "train": 2, "generate": 3, "mjd": 4, "evaluate": 5, "pipeline": 6}
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


def test_architecture_names_every_module():
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    unnamed = [str(p.relative_to(ROOT)) for p in _modules() if p.name != "__init__.py"
               and str(p.relative_to(ROOT)) not in text and f"`{p.name}`" not in text]
    assert unnamed == []
