"""The package's shape: entry points at the top, one folder per concern, imports running down
(entry points -> inference, bench -> training -> sweeps -> tracking -> data, models -> core)
and no import cycles."""

import ast
import re
from pathlib import Path

from .helpers import REPO_ROOT

PACKAGE = REPO_ROOT / "fer_lab"
# Higher layers may import lower ones; a folder may import itself; nothing else.
LAYERS = {
    "inference": 5,
    "bench": 5,
    "training": 4,
    "sweeps": 3,
    "tracking": 2,
    "data": 1,
    "models": 1,
    "core": 0,
}
ENTRY_POINTS = {"train", "eval", "predict", "visualize", "gpu_check"}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """The fer_lab modules `path` imports, anywhere in it (deferred imports count too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    modules = {module_name(p) for p in PACKAGE.rglob("*.py")}
    return {name for name in found if name in modules and name != "fer_lab"}


def folder(module: str) -> str | None:
    """The concern a module belongs to; None for the top-level entry points."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def test_top_level_holds_only_entry_points() -> None:
    top = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    assert top == ENTRY_POINTS
    assert len(top) + 1 <= 8
    folders = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert folders == set(LAYERS)


def test_imports_run_down_the_layers() -> None:
    wrong = []
    for path in PACKAGE.rglob("*.py"):
        source = module_name(path)
        here = folder(source)
        if here is None:  # entry points may use everything below them
            continue
        for target in imports(path):
            there = folder(target)
            if there is None:
                wrong.append(f"{source} imports the entry point {target}")
            elif there != here and LAYERS[there] >= LAYERS[here]:
                wrong.append(f"{source} ({here}) imports {target} ({there})")
    assert wrong == []


def test_no_import_cycles() -> None:
    graph = {module_name(p): imports(p) for p in PACKAGE.rglob("*.py")}
    # A package's __init__ re-exporting its modules is not a cycle with them.
    graph = {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in graph.items()}
    done: set[str] = set()

    def visit(module: str, trail: list[str]) -> None:
        if module in trail:
            raise AssertionError("import cycle: " + " -> ".join([*trail, module]))
        if module in done:
            return
        for target in graph.get(module, ()):
            visit(target, [*trail, module])
        done.add(module)

    for module in graph:
        visit(module, [])


def github_anchor(heading: str) -> str:
    """GitHub's id for a Markdown heading: lower case, punctuation dropped, spaces to dashes."""
    kept = "".join(c for c in heading.strip().lower() if c.isalnum() or c in " -_")
    return kept.replace(" ", "-")


def test_readme_fits_a_newcomer_and_its_links_resolve() -> None:
    """README is a guide of at most 350 lines; what moved to experiments/ is reachable: every
    relative link names a file that exists and, with #, one of its headings."""
    readme = REPO_ROOT / "README.md"
    text = readme.read_text()
    assert len(text.splitlines()) <= 350
    links = re.findall(r"\]\(([^)#\s]+)(?:#([^)\s]+))?\)", text)
    relative = [(target, anchor) for target, anchor in links if "://" not in target]
    assert relative
    for target, anchor in relative:
        path = REPO_ROOT / target
        assert path.exists(), f"README links to {target}, which does not exist"
        if anchor:
            headings = re.findall(r"^#+ (.+)$", path.read_text(), flags=re.MULTILINE)
            assert anchor in {github_anchor(h) for h in headings}, f"{target}#{anchor}"
