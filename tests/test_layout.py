"""The house rules, checked on the source with the AST so they stay true.

- no import circle among vitsearch modules. Every import counts, deferred ones inside functions too: a deferred
  import may save start-up time, never hide a circle (``models`` <-> ``pretrain`` was one). Importing
  ``a.b.c`` also runs the packages ``a.b`` on the way, so those count as imported too;
- no module imports another module's ``_private`` names (nor reaches them as ``module._name``);
- no module over 400 lines except the CLI;
- the report stands on the study folder and plots alone: nothing in ``vitsearch/report/`` imports ``latency``;
- library code never chooses a matplotlib backend.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "vitsearch"
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def absolute(importer: str, level: int, target: str | None) -> str:
    """The absolute module name of ``from <level dots><target> import ...`` in module ``importer``."""
    if level == 0:
        return target or ""
    base = importer.split(".") if is_package(importer) else importer.split(".")[:-1]
    base = base[:len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def imports(name: str) -> list[tuple[str, list[str], int]]:
    """(module, names imported from it, line) for every import statement of module ``name``."""
    tree = ast.parse(MODULES[name].read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            out.append((absolute(name, node.level, node.module), [a.name for a in node.names], node.lineno))
    return out


def edges(name: str) -> set[str]:
    """The vitsearch modules that importing ``name`` runs directly (and the packages on their way)."""
    out: set[str] = set()
    own = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 2)}  # itself and its packages
    for module, names, _ in imports(name):
        if module.split(".")[0] != "vitsearch":
            continue
        targets = [f"{module}.{n}" for n in names if f"{module}.{n}" in MODULES] or [module]
        if any(f"{module}.{n}" not in MODULES for n in names):
            targets.append(module)
        for target in targets:
            parts = target.split(".")
            out |= {".".join(parts[:i]) for i in range(2, len(parts) + 1)} - own
    return out & set(MODULES)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_circle():
    graph = {name: edges(name) for name in MODULES}
    assert graph["vitsearch.finalize"] >= {"vitsearch.search", "vitsearch.studyfolder"}  # the graph is read
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_no_private_name_crosses_a_module():
    bad = []
    for path in sorted([*PACKAGE.rglob("*.py"), *(ROOT / "benchmarks").glob("*.py")]):
        name = module_name(path)
        tree = ast.parse(path.read_text())
        module_aliases = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                source = absolute(name, node.level, node.module) if name in MODULES else (node.module or "")
                if source.split(".")[0] != "vitsearch" or source == name:
                    continue
                for a in node.names:
                    if a.name.startswith("_") and not a.name.startswith("__"):
                        bad.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {source}.{a.name}")
                    if f"{source}.{a.name}" in MODULES:
                        module_aliases.add(a.asname or a.name)
            elif isinstance(node, ast.Import):
                module_aliases |= {a.asname for a in node.names if a.asname and a.name.startswith("vitsearch")}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in module_aliases
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno} reaches {node.value.id}.{node.attr}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n != "vitsearch.cli"))
def test_no_module_over_400_lines(name):
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{MODULES[name].relative_to(ROOT)} has {lines} lines: split it by concern"


def test_the_report_imports_nothing_from_latency():
    report = [n for n in MODULES if n.startswith("vitsearch.report")]
    assert report
    bad = [f"{n}:{line} imports {module}" for n in report for module, names, line in imports(n)
           if module.startswith("vitsearch.latency")
           or (module == "vitsearch" and "latency" in names)]
    assert not bad, "\n".join(bad)


def test_library_code_never_chooses_a_matplotlib_backend():
    bad = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "use" \
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "matplotlib":
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno}")
            if isinstance(node, (ast.Import, ast.ImportFrom)) and "matplotlib.pyplot" in (
                    [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]):
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno} imports pyplot (draw on a Figure)")
    assert not bad, "\n".join(bad)


# One method, one folder ------------------------------------------------------------------------------------------
# The latency model and the shared pruning modules name no method: they ask the registry. Checked on the whole
# text, comments and docstrings included: a comment that names a method in a shared module is a statement about
# that method kept in sync by hand, and goes stale when the method changes or a new one needs the same sentence.

METHODS_DIR = PACKAGE / "pruning" / "methods"
SHARED = sorted([*(PACKAGE / "latency").glob("*.py"), *(PACKAGE / "pruning").glob("*.py"), METHODS_DIR / "base.py"])
# Short forms of a method's name that identifiers use (``evo_switch``), beyond what the registry spells.
SHORT_FORMS = ("evo",)


def method_words() -> dict[str, "re.Pattern[str]"]:
    """What names a method: every registered method that prunes ("none" is also an English word), spelled with or
    without separators ("Evo-ViT", "evo_vit"), its short forms, and every component kind a method declares."""
    import re

    from vitsearch.latency.components import STOCK, kinds
    from vitsearch.pruning import METHODS

    words = {name: "[-_]?".join(map(re.escape, name)) for name, m in METHODS.items() if m.prunes}
    words |= {short: re.escape(short) for short in SHORT_FORMS}
    # letters on neither side, so "spvit_select" names spvit while "brevity" does not name evit
    out = {w: re.compile(rf"(?<![a-z]){p}(?![a-z])", re.IGNORECASE) for w, p in words.items()}
    stock = {k.name for k in STOCK}
    out |= {k: re.compile(rf"(?<![A-Za-z0-9_]){re.escape(k)}(?![A-Za-z0-9_])") for k in kinds() if k not in stock}
    return out


def test_latency_and_shared_pruning_modules_name_no_method():
    words = method_words()
    assert {"spvit", "evovit", "evo", "spvit_select", "block_cls"} <= set(words)  # the registry is read
    bad = [f"{path.relative_to(ROOT)}:{i}: {word}: {line.strip()}" for path in SHARED
           for i, line in enumerate(path.read_text().splitlines(), 1)
           for word, pattern in words.items() if pattern.search(line)]
    assert not bad, "a shared module names a method (ask the registry instead):\n" + "\n".join(bad)


def test_a_method_is_one_folder_and_one_registry_line():
    """Every method lives in ``pruning/methods/<name>/``, which nothing outside the method imports but the
    registry (``pruning/methods/__init__.py``); no shared module imports a method, nor one method another."""
    from vitsearch.pruning import METHODS

    entries = {p.name for p in METHODS_DIR.iterdir() if p.name not in ("__init__.py", "base.py", "__pycache__")}
    assert entries == set(METHODS), "pruning/methods/ holds exactly one folder per registered method"
    for name, method in METHODS.items():
        assert (METHODS_DIR / name / "__init__.py").is_file()
        assert type(method).__module__.startswith(f"vitsearch.pruning.methods.{name}."), type(method).__module__
    registry, bad = "vitsearch.pruning.methods", []
    for name in MODULES:
        shared = name.startswith("vitsearch.latency") or name == f"{registry}.base" or (
            name.startswith("vitsearch.pruning") and name.count(".") <= 2 and name != registry)
        if shared or name.startswith(f"{registry}."):  # and each method's own modules
            own = name.split(".")[3] if name.startswith(f"{registry}.") else None
            for module, names, line in imports(name):
                targets = [module] + [f"{module}.{n}" for n in names]
                hit = {t.split(".")[3] for t in targets if t.startswith(f"{registry}.") and t.split(".")[3] in METHODS}
                if hit - {own}:
                    bad.append(f"{MODULES[name].relative_to(ROOT)}:{line} imports method {', '.join(sorted(hit))}")
    assert not bad, "\n".join(bad)
