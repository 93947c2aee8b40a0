"""The package's layout is the pipeline's: stage packages whose imports only run down.

Every ``import`` of every module is read with ``ast`` (those inside functions and
``TYPE_CHECKING`` blocks too, since a late import still ties two modules together), and two
rules are checked: a module imports only its own stage or stages on a lower level of
:data:`LEVELS`, and no chain of imports leads back to where it started.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest
from conftest import REPO

PACKAGE = "ham_utils"

# The stages from the bottom up; the stages of one level do not import each other.
LEVELS: tuple[tuple[str, ...], ...] = (
    ("errors",),
    ("config",),
    ("figures",),
    ("data", "model"),
    ("runs",),
    ("train",),
    ("evaluation", "explain"),
    ("studies", "serve"),
    ("report",),
    ("cli", "bench"),
    ("__main__", "__init__"),
)
LEVEL_OF = {stage: i for i, stages in enumerate(LEVELS) for stage in stages}
TOP_MODULES = {"__init__", "__main__", "config", "errors", "runs", "cli", "bench"}


def module_name(path: Path, root: Path) -> str:
    """``ham_utils.data.split`` for ``<root>/ham_utils/data/split.py`` (packages: their name)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def stage_of(module: str) -> str:
    """The stage a module belongs to: ``data`` for ``ham_utils.data.split``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def package_imports(root: Path) -> dict[str, dict[str, int]]:
    """For each module of the package under ``root``, the package's modules it imports, with
    the line of the first such import."""
    files = {module_name(p, root): p for p in sorted((root / PACKAGE).rglob("*.py"))}
    imports: dict[str, dict[str, int]] = {}
    for module, path in files.items():
        found: dict[str, int] = {}
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: resolved against this module's package
                    anchor = module.split(".")
                    anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                    base = ".".join([*anchor, base] if base else anchor)
                # ``from pkg import mod`` imports the module ``pkg.mod``; otherwise ``pkg``
                targets = [
                    f"{base}.{alias.name}" if f"{base}.{alias.name}" in files else base
                    for alias in node.names
                ]
            for target in targets:
                if target.split(".")[0] == PACKAGE and target != module:
                    while target not in files:  # ``ham_utils.x.name``: the module ``ham_utils.x``
                        target = target.rsplit(".", 1)[0]
                    found.setdefault(target, node.lineno)
        imports[module] = found
    return imports


def file_of(module: str, root: Path) -> str:
    path = root / Path(*module.split("."))
    return str(
        (path / "__init__.py" if path.is_dir() else path.with_suffix(".py")).relative_to(root)
    )


def order_violations(root: Path) -> list[str]:
    """Imports that do not run down the levels, as ``a.py:LINE imports b.py (why)``."""
    problems = []
    for module, targets in package_imports(root).items():
        own = stage_of(module)
        for target, line in targets.items():
            other = stage_of(target)
            if other == own:
                continue
            if own not in LEVEL_OF or other not in LEVEL_OF:
                unknown = own if own not in LEVEL_OF else other
                problems.append(f"{file_of(module, root)}: stage {unknown!r} is not in LEVELS")
                continue
            if LEVEL_OF[other] >= LEVEL_OF[own]:
                where = "at the same level" if LEVEL_OF[other] == LEVEL_OF[own] else "above it"
                problems.append(
                    f"{file_of(module, root)}:{line} imports {file_of(target, root)}, "
                    f"a stage {where} ({own} -> {other})"
                )
    return problems


def import_circles(root: Path) -> list[str]:
    """Every chain of imports between modules that leads back to its start, as
    ``a.py -> b.py -> a.py`` (one per strongly connected group, its shortest cycle)."""
    graph = {module: set(targets) for module, targets in package_imports(root).items()}
    # Tarjan's strongly connected components; a group of two or more modules is a circle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    circles = []
    for group in groups:
        start = group[0]
        paths = [[start]]
        while paths:  # breadth first: the shortest way back to ``start`` inside the group
            path = paths.pop(0)
            nxt = sorted(t for t in graph[path[-1]] if t in group)
            if start in nxt:
                chain = [*path, start]
                circles.append(" -> ".join(file_of(m, root) for m in chain))
                break
            paths += [[*path, t] for t in nxt if t not in path]
    return circles


def test_every_import_runs_down_the_stages():
    assert order_violations(REPO) == []


def test_no_module_imports_itself_back_through_others():
    assert import_circles(REPO) == []


def test_only_the_top_modules_are_flat_and_every_stage_says_what_it_owns():
    package = REPO / PACKAGE
    flat = {p.stem for p in package.glob("*.py")}
    assert flat == TOP_MODULES
    stages = {p.name for p in package.iterdir() if (p / "__init__.py").is_file()}
    assert stages == {s for level in LEVELS for s in level} - TOP_MODULES - {"__init__"} - {
        "__main__"
    }
    for stage in stages:
        docstring = ast.get_docstring(ast.parse((package / stage / "__init__.py").read_text()))
        assert docstring and "import" in docstring.lower(), (
            f"{stage}/__init__.py: say what it may import"
        )


@pytest.fixture
def package_copy(tmp_path) -> Path:
    """A copy of the package to plant faults in."""
    shutil.copytree(
        REPO / PACKAGE, tmp_path / PACKAGE, ignore=shutil.ignore_patterns("__pycache__")
    )
    return tmp_path


def plant(root: Path, relative: str, line: str, in_function: bool = False) -> None:
    path = root / PACKAGE / relative
    text = path.read_text()
    planted = f"\n\ndef _planted():\n    {line}\n" if in_function else f"\n{line}\n"
    path.write_text(text + planted)


def test_a_planted_upward_import_is_caught_naming_both_files(package_copy):
    plant(package_copy, "data/split.py", "from ham_utils.train.loop import train", True)
    problems = order_violations(package_copy)
    assert len(problems) == 1
    assert problems[0].startswith("ham_utils/data/split.py:")
    assert "imports ham_utils/train/loop.py, a stage above it (data -> train)" in problems[0]


def test_a_planted_import_between_peers_is_caught(package_copy):
    plant(package_copy, "model/losses.py", "from ham_utils.data import images")
    (problem,) = order_violations(package_copy)
    assert "ham_utils/model/losses.py" in problem
    assert "ham_utils/data/images.py, a stage at the same level" in problem


def test_a_planted_circle_is_caught_naming_both_files(package_copy):
    # Within one stage, so that only the circle rule can catch it.
    plant(
        package_copy, "data/images.py", "from ham_utils.data.cache import build_split_cache", True
    )
    assert order_violations(package_copy) == []
    assert import_circles(package_copy) == [
        "ham_utils/data/cache.py -> ham_utils/data/images.py -> ham_utils/data/cache.py"
    ]


def test_relative_and_module_imports_are_read_too(package_copy):
    plant(package_copy, "config.py", "from .runs import Run", True)
    plant(package_copy, "figures/base.py", "import ham_utils.evaluation.scoring", True)
    problems = order_violations(package_copy)
    assert any("ham_utils/config.py" in p and "ham_utils/runs.py" in p for p in problems)
    assert any("figures/base.py" in p and "evaluation/scoring.py" in p for p in problems)
