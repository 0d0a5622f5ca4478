"""The import rules of the layering (DESIGN.md section 4), checked on the source, imports in functions too.

(a) Only ``ensemble_kd/cli/`` may import ``specialists``; ``specialists`` never imports the CLI.
(b) No import cycles between the project's files.
(c) No module imports another module's private (``_name``) names.

The module graph has one edge per import statement as written (``from pkg import sub`` points at
``pkg.sub`` when that is a module). The implicit import of a module's parent package is left out:
every package's ``__init__`` that imports its own submodules would otherwise be a "cycle".
"""

from __future__ import annotations

import ast
import functools
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("ensemble_kd", "specialists")
CLI = "ensemble_kd.cli"


@dataclass(frozen=True)
class Import:
    """One imported module (or module attribute) at one place in the source."""

    path: str  # the importing file, relative to the repository
    line: int
    importer: str  # dotted name of the importing module
    target: str  # dotted name of the imported module (a project module when it is one)
    name: str | None = None  # the attribute taken from ``target`` (``from target import name``)

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"


def module_name(path: str) -> str:
    """``ensemble_kd/cli/__init__.py`` -> ``ensemble_kd.cli``; ``ensemble_kd/io.py`` -> ``ensemble_kd.io``."""
    parts = path.removesuffix(".py").split("/")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


class _Imports(ast.NodeVisitor):
    """Every import of one file, with the local names bound to project modules."""

    def __init__(self, path: str, modules: set[str]):
        self.path, self.modules = path, modules
        self.module = module_name(path)
        self.package = self.module if path.endswith("__init__.py") else self.module.rpartition(".")[0]
        self.found: list[Import] = []
        self.private_attrs: list[Import] = []
        self.bound: dict[str, str] = {}  # local name -> project module

    def _add(self, node: ast.AST, target: str, name: str | None = None) -> None:
        self.found.append(Import(self.path, node.lineno, self.module, target, name))

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(node, alias.name)
            if alias.asname:
                self.bound[alias.asname] = alias.name
            else:
                top = alias.name.partition(".")[0]
                self.bound[top] = top

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = node.module or ""
        if node.level:
            package = self.package.split(".")
            package = package[: len(package) - (node.level - 1)]
            base = ".".join([*package, *([base] if base else [])])
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            if sub in self.modules:  # ``from pkg import submodule``
                self._add(node, sub)
                self.bound[alias.asname or alias.name] = sub
            else:
                self._add(node, base, alias.name)

    def visit_Call(self, node: ast.Call) -> None:
        """``importlib.import_module("x")`` / ``__import__("x")`` with a constant name."""
        f = node.func
        name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", None)
        arg = node.args[0] if node.args else None
        if name in ("import_module", "__import__") and isinstance(arg, ast.Constant) and isinstance(
                arg.value, str) and not arg.value.startswith("."):
            self._add(node, arg.value)
        self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        """``module._name`` where ``module`` is a project module bound by an import."""
        dotted, value = [], node.value
        while isinstance(value, ast.Attribute):
            dotted.insert(0, value.attr)
            value = value.value
        if isinstance(value, ast.Name) and value.id in self.bound:
            target = ".".join([self.bound[value.id], *dotted])
            if target in self.modules and _is_private(node.attr):
                self.private_attrs.append(Import(self.path, node.lineno, self.module, target, node.attr))
        self.generic_visit(node)


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


@functools.cache
def _parse(path: str, text: str) -> ast.Module:
    return ast.parse(text, filename=path)


def scan(sources: dict[str, str]) -> tuple[list[Import], list[Import]]:
    """All imports of ``{relative path: source}``, and the private attributes read off modules."""
    modules = {module_name(p) for p in sources}
    imports, attrs = [], []
    for path, text in sorted(sources.items()):
        visitor = _Imports(path, modules)
        visitor.visit(_parse(path, text))
        imports += visitor.found
        attrs += visitor.private_attrs
    return imports, attrs


def layer_violations(sources: dict[str, str]) -> list[str]:
    """Rule (a): only the CLI imports specialists; specialists never imports the CLI."""
    bad = []
    for imp in scan(sources)[0]:
        target = f"{imp.target}.{imp.name}" if imp.name else imp.target
        if _within(imp.importer, "ensemble_kd") and not _within(imp.importer, CLI) and _within(
                target, "specialists"):
            bad.append(f"{imp.where}: {imp.importer} imports {target} (only {CLI} may)")
        if _within(imp.importer, "specialists") and _within(target, CLI):
            bad.append(f"{imp.where}: {imp.importer} imports {target} (specialists must not use the CLI)")
    return bad


def import_cycles(sources: dict[str, str]) -> list[str]:
    """Rule (b): each cycle of the project's module graph, as its modules with the importing lines."""
    modules = {module_name(p) for p in sources}
    edges: dict[str, dict[str, Import]] = {m: {} for m in modules}
    for imp in scan(sources)[0]:
        if imp.target in modules and imp.target != imp.importer:
            edges[imp.importer].setdefault(imp.target, imp)
    cycles = []
    for component in _strongly_connected(edges):
        if len(component) > 1:
            path = _cycle_in(component, edges)
            steps = [f"{a} ({edges[a][b].where})" for a, b in zip(path, path[1:], strict=False)]
            cycles.append("cycle: " + " -> ".join([*steps, path[-1]]))
    return sorted(cycles)


def _strongly_connected(edges: dict[str, dict[str, Import]]) -> list[list[str]]:
    """Tarjan's strongly connected components (iterative), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    components.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(edges[child]))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return components


def _cycle_in(component: list[str], edges: dict[str, dict[str, Import]]) -> list[str]:
    """One closed path [m0, m1, ..., m0] through a strongly connected component (shortest from m0)."""
    start, members = component[0], set(component)
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(edges[node]):
                if child == start:
                    path = [node]
                    while path[0] != start:
                        path.insert(0, previous[path[0]])
                    return [*path, start]
                if child in members and child not in previous:
                    previous[child] = node
                    following.append(child)
        frontier = following
    raise AssertionError(f"{component} is not strongly connected")


def private_imports(sources: dict[str, str]) -> list[str]:
    """Rule (c): ``from m import _name`` or ``m._name`` where m is another project module."""
    modules = {module_name(p) for p in sources}
    imports, attrs = scan(sources)
    bad = []
    for imp in imports:
        if imp.name and _is_private(imp.name) and imp.target in modules and imp.target != imp.importer:
            bad.append(f"{imp.where}: {imp.importer} imports {imp.name} from {imp.target}")
    for imp in attrs:
        if imp.target != imp.importer:
            bad.append(f"{imp.where}: {imp.importer} uses {imp.target}.{imp.name}")
    return bad


def project_sources() -> dict[str, str]:
    return {
        path.relative_to(REPO).as_posix(): path.read_text(encoding="utf-8")
        for package in PACKAGES for path in sorted((REPO / package).rglob("*.py"))
    }


# ---------------------------------------------------------------- the rules, on the project


def test_only_the_cli_imports_specialists():
    bad = layer_violations(project_sources())
    assert not bad, "imports across the layering:\n" + "\n".join(bad)


def test_no_import_cycles():
    cycles = import_cycles(project_sources())
    assert not cycles, "import cycles between project files:\n" + "\n".join(cycles)


def test_no_module_imports_private_names_of_another():
    bad = private_imports(project_sources())
    assert not bad, "private names used outside their module:\n" + "\n".join(bad)


# ---------------------------------------------------------------- the checker finds what it should


SYNTHETIC = {
    "ensemble_kd/__init__.py": "from .models import build\n__version__ = '1'\n",
    "ensemble_kd/models.py": "import torch\n\ndef _helper():\n    pass\n",
    "ensemble_kd/train.py": "from .models import _helper\nfrom . import models as m\nm._helper()\n",
    "ensemble_kd/a.py": "def f():\n    from . import b\n",
    "ensemble_kd/b.py": "import ensemble_kd.c\n",
    "ensemble_kd/c.py": "from .a import f\n",
    "ensemble_kd/lazy.py": "def g():\n    import specialists.x\n",
    "ensemble_kd/cli/__init__.py": "from .. import __version__\nfrom specialists import x\n",
    "specialists/__init__.py": "",
    "specialists/x.py": "from ensemble_kd import build\n\ndef h():\n    from ensemble_kd import cli\n",
}


def test_the_checker_reports_each_rule_with_file_and_line():
    assert layer_violations(SYNTHETIC) == [
        "ensemble_kd/lazy.py:2: ensemble_kd.lazy imports specialists.x (only ensemble_kd.cli may)",
        "specialists/x.py:4: specialists.x imports ensemble_kd.cli (specialists must not use the CLI)",
    ]
    assert import_cycles(SYNTHETIC) == [
        "cycle: ensemble_kd.a (ensemble_kd/a.py:2) -> ensemble_kd.b (ensemble_kd/b.py:1) -> "
        "ensemble_kd.c (ensemble_kd/c.py:1) -> ensemble_kd.a",
        "cycle: ensemble_kd.cli (ensemble_kd/cli/__init__.py:2) -> specialists.x "
        "(specialists/x.py:4) -> ensemble_kd.cli",
    ]
    assert private_imports(SYNTHETIC) == [
        "ensemble_kd/train.py:1: ensemble_kd.train imports _helper from ensemble_kd.models",
        "ensemble_kd/train.py:3: ensemble_kd.train uses ensemble_kd.models._helper",
    ]


def test_the_checker_passes_clean_code():
    clean = {
        "ensemble_kd/__init__.py": "from .models import build\nfrom . import models\n",
        "ensemble_kd/models.py": "import torch._C\nfrom torch.nn import _reduction\n\n"
                                 "def _own():\n    pass\n_own()\n",
        "ensemble_kd/cli/__init__.py": "import specialists\nfrom .. import __version__\n",
        "specialists/__init__.py": "from ensemble_kd import models\n",
    }
    assert layer_violations(clean) == import_cycles(clean) == private_imports(clean) == []
