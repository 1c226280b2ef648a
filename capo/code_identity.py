"""Code identity for caches: which source files shape a result, and a digest of each.

A cached result (a pipeline stage, a sharded run) is only as current as the code that made it. Its signature
therefore holds the digests of the files that code is made of:
- `module_files(modules)`: the `capo` modules given and every `capo` module they import, transitively, read from the
  import statements in their source (function-local imports included), with the packages' `__init__.py` files;
- `callable_files(fn)`: for a function, the `capo` modules of everything it refers to (functions, classes, modules,
  `capo.pipeline.launch.Job` entry points and their scripts), following same-module helpers function by function,
  so a stage's identity is the code it runs and not the whole module it is written in.
A digest is of the file's bytes; an edit anywhere in a file counts (comments included: simple and safe).
"""

from __future__ import annotations

import ast
import functools
import hashlib
import inspect
import textwrap
import types
from collections.abc import Callable, Iterable
from pathlib import Path

PACKAGE = "capo"
CONSTANTS = (str, bytes, int, float, bool, tuple, list, dict, frozenset, set, type(None))
ROOT = Path(__file__).resolve().parents[1]  # the repository: capo/, recipes/, eval/


@functools.cache
def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def module_path(name: str) -> Path | None:
    """The source file of module `name` (a `capo.*` name), or None when it is no module of the package."""
    base = ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported(tree: ast.AST, package: str | None = None) -> set[str]:
    """The `capo` modules an AST imports (for `from capo.x import y`: `capo.x.y` where y is a module, else `capo.x`)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == PACKAGE)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level and package:  # relative import inside the package
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*parts, module] if module else parts)
            if module.split(".")[0] != PACKAGE:
                continue
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                found.add(sub if module_path(sub) else module)
    return found


def _with_parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:k]) for k in range(1, len(parts) + 1)]


@functools.cache
def _module_closure(names: frozenset[str]) -> frozenset[str]:
    seen: set[str] = set()
    todo = [n for name in names for n in _with_parents(name)]
    while todo:
        name = todo.pop()
        if name in seen or (path := module_path(name)) is None:
            continue
        seen.add(name)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for imported in _imported(ast.parse(path.read_text()), package):
            todo.extend(_with_parents(imported))
    return frozenset(seen)


def module_files(modules: Iterable[str]) -> dict[str, str]:
    """{repository-relative path: digest} of `modules` and every `capo` module they import, transitively."""
    names = _module_closure(frozenset(m for m in modules if m.split(".")[0] == PACKAGE))
    return {str(module_path(n).relative_to(ROOT)): file_digest(module_path(n)) for n in sorted(names)}


def script_files(scripts: Iterable[str]) -> dict[str, str]:
    """{path: digest} of entry-point scripts (repository-relative) and the `capo` modules they import."""
    files: dict[str, str] = {}
    for script in scripts:
        path = ROOT / script
        if not path.is_file():
            continue
        files[script] = file_digest(path)
        files.update(module_files(_imported(ast.parse(path.read_text()))))
    return files


def _canonical(value) -> str:
    """A constant's text that is the same in every process (sets are ordered by the hash seed: sorted here)."""
    if isinstance(value, (set, frozenset)):
        return "{" + ", ".join(sorted(map(_canonical, value))) + "}"
    if isinstance(value, (list, tuple)):
        return type(value).__name__ + "(" + ", ".join(map(_canonical, value)) + ")"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_canonical(k)}: {_canonical(v)}" for k, v in value.items()) + "}"
    return repr(value)


def _source(obj) -> str | None:
    try:
        return textwrap.dedent(inspect.getsource(obj))
    except (OSError, TypeError):
        return None


def callable_files(fn: Callable, follow: str = "capo.pipeline") -> dict[str, str]:
    """{name: digest} of the code `fn` runs. Functions and classes of the modules under `follow` (where stages and
    launchers are written) count one by one, by their own source and what they name; anything else of `capo` counts
    by its module file and that module's imports; a `Job` entry point also by its script."""
    modules: set[str] = set()
    scripts: list[str] = []
    pieces: dict[str, str] = {}
    seen: set[int] = set()

    def visit(obj) -> None:
        if isinstance(obj, functools.partial):
            visit(obj.func)
            return
        if id(obj) in seen:
            return
        seen.add(id(obj))
        module = getattr(obj, "__module__", "") or ""
        if module.split(".")[0] != PACKAGE:
            return
        source = _source(obj) if module.startswith(follow) else None
        if source is None:
            modules.add(module)
            return
        pieces[f"{module}:{obj.__qualname__}"] = hashlib.sha256(source.encode()).hexdigest()[:16]
        tree = ast.parse(source)
        modules.update(_imported(tree))
        scope = dict(vars(inspect.getmodule(obj)))
        if isinstance(obj, types.FunctionType):
            scope.update(inspect.getclosurevars(obj).nonlocals)
        for name in sorted({node.id for node in ast.walk(tree) if isinstance(node, ast.Name)} & scope.keys()):
            refer(scope[name], f"{module}:{name}")

    def refer(value, where: str) -> None:
        if isinstance(value, CONSTANTS) and not isinstance(value, type):
            # a module-level constant the code reads (a table of settings, a Job's flags): its value counts
            pieces[where] = hashlib.sha256(_canonical(value).encode()).hexdigest()[:16]
        elif isinstance(value, types.ModuleType):
            if value.__name__.split(".")[0] == PACKAGE:
                modules.add(value.__name__)
        elif hasattr(value, "script") and hasattr(value, "parse") and hasattr(value, "run"):  # a launch.Job:
            scripts.append(value.script)  # it runs its script, which imports what it runs
            pieces[where] = hashlib.sha256(repr(value).encode()).hexdigest()[:16]  # and how (`distributed`)
        elif isinstance(value, (types.FunctionType, functools.partial, type)):
            visit(value)

    visit(fn)
    return {**module_files(modules), **script_files(scripts), **pieces}


def digest_of(files: dict[str, str]) -> str:
    return hashlib.sha256("".join(f"{k}={v}\n" for k, v in sorted(files.items())).encode()).hexdigest()[:16]
