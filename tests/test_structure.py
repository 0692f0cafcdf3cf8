"""The shape of the package: no import circles, every module importable on its own, SQL in one place.

The import graph is read from the source (every ``import`` statement, at the top of a module
or inside a function), so an import moved into a function to dodge a circle is still an
edge of the graph and still fails here.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest


SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "imagespace"
# The only modules allowed to hold SQL: the collection (rows) and, should it ever be split
# out, the schema's migrations. The duplicate pass's cache is a database file of its own
# (safe to delete, never the collection's), and that module owns all of its SQL; so are the
# duplicate pass's per-image features (feature_store).
SQL_MODULES = {"imagespace.collection", "imagespace.migrations", "imagespace.analysis.pair_cache", "imagespace.feature_store"}
# The query side's words modules: in search/, with nothing left at their old top-level paths.
WORDS_MODULES = ("word_concepts", "concept_ranking", "tag_postings", "user_labels", "sentence_onnx")


def module_files() -> dict[str, Path]:
    """Module name -> file, for every module of the package."""
    out = {}
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports_of(name: str, path: Path, modules: set[str]) -> set[str]:
    """The package's modules that ``name`` imports anywhere in its source (ast, not regex)."""
    is_package = path.name == "__init__.py"
    here = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            # `from pkg import sub` imports the submodule; `from mod import name` the module.
            targets = [f"{source}.{a.name}" if f"{source}.{a.name}" in modules else source for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # `import a.b.c` of a name inside a module
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    names = set(files)
    return {name: imports_of(name, path, names) for name, path in files.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_walker_sees_circles_and_imports_inside_functions(tmp_path):
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []
    names = {"imagespace", "imagespace.x", "imagespace.y", "imagespace.y.z", "imagespace.w"}
    module = tmp_path / "w.py"
    module.write_text("from . import y\ndef f():\n    from .y.z import thing\n    import imagespace.x\n")
    assert imports_of("imagespace.w", module, names) == {"imagespace.y", "imagespace.y.z", "imagespace.x"}


def test_no_import_circles():
    graph = import_graph()
    assert len(graph) > 40 and "imagespace.search" in graph["imagespace.cli.core"]
    found = circles(graph)
    assert not found, "import circles (each list imports itself through the others): " + "; ".join(
        " <-> ".join(c) for c in found
    )


def test_the_layout_imports_one_way():
    """Rows below indexes, indexes below searches, searches below the CLI and the server."""
    graph = import_graph()

    def reaches(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    below_rows = reaches("imagespace.collection")
    assert not {m for m in below_rows if m.startswith(("imagespace.index", "imagespace.models", "imagespace.search"))}
    # every module of the index package, not only its face: shards build through sharding.py
    indexes = [m for m in graph if m == "imagespace.index" or m.startswith("imagespace.index.")]
    for index in indexes:
        assert not {m for m in reaches(index) if m.startswith(("imagespace.search", "imagespace.indexing"))}, index
    # Nothing below the query side reaches it: not the rows, the indexes, the indexing, the models.
    for lower in ("imagespace.indexing", "imagespace.models"):
        assert not {m for m in reaches(lower) if m.startswith("imagespace.search")}, lower
    # The words modules (WordNet concepts, their ranking, tag postings, user labels, the
    # sentence fallback) belong to the query side: they live in search/, each on the rules above.
    searches = {m for m in graph if m == "imagespace.search" or m.startswith("imagespace.search.")}
    for words in WORDS_MODULES:
        assert f"imagespace.search.{words}" in searches and f"imagespace.{words}" not in graph, words
    for library in (*sorted(searches), "imagespace.indexing", "imagespace.analysis.duplicates"):
        assert not {m for m in reaches(library) if m.startswith(("imagespace.cli", "imagespace.server"))}, library


def test_every_module_imports_on_its_own():
    """Each module imported first, with no other module of the package loaded before it.

    One interpreter for all of them (a fresh one per module would take a minute): before each
    import every ``imagespace`` module is dropped from ``sys.modules``, so the order in which
    the package's modules load is the one that module alone causes.
    """
    names = [n for n in module_files() if n != "imagespace.__main__"]  # __main__ runs the CLI
    script = textwrap.dedent(
        """
        import importlib, sys, traceback
        failed = []
        for name in sys.argv[1:]:
            for loaded in [m for m in sys.modules if m == "imagespace" or m.startswith("imagespace.")]:
                del sys.modules[loaded]
            try:
                importlib.import_module(name)
            except BaseException:
                failed.append(name + ": " + traceback.format_exc().strip().splitlines()[-1])
        print("\\n".join(failed))
        sys.exit(1 if failed else 0)
        """
    )
    out = subprocess.run([sys.executable, "-c", script, *names], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr[-2000:]


def test_sql_lives_in_the_collection_only():
    offenders = []
    for name, path in module_files().items():
        if name in SQL_MODULES:
            continue
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            if "execute(" in line or "executemany(" in line or "executescript(" in line or ".conn." in line:
                offenders.append(f"{path.relative_to(SRC)}:{lineno}: {line.strip()}")
    assert not offenders, "SQL outside collection.py:\n" + "\n".join(offenders)


# What only the library assembles (imagespace.space.ImageSpace): a model from its spec, a
# searcher, an indexing run. The command line and the server ask an ImageSpace for them.
ASSEMBLY_CALLS = {"create_model", "resolve_model_spec", "Searcher", "sync", "sync_with_ray"}


def _front_modules() -> dict[str, Path]:
    return {n: p for n, p in module_files().items() if n.startswith(("imagespace.cli", "imagespace.server"))}


def test_the_cli_and_the_server_assemble_nothing_themselves():
    offenders = []
    for name, path in _front_modules().items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call):
                f = node.func
                called = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
                if called in ASSEMBLY_CALLS:
                    offenders.append(f"{path.relative_to(SRC)}:{node.lineno}: {called}(...)")
    assert not offenders, "assembled outside imagespace.space (ask an ImageSpace):\n" + "\n".join(offenders)


def test_the_server_imports_plainly():
    """No importlib in server/: every import is visible to readers and to the graph above."""
    offenders = []
    for name, path in _front_modules().items():
        if not name.startswith("imagespace.server"):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if any(n == "importlib" or n.startswith("importlib.") for n in names):
                offenders.append(f"{path.relative_to(SRC)}:{node.lineno}")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "__import__":
                offenders.append(f"{path.relative_to(SRC)}:{node.lineno}: __import__")
    assert not offenders, "importlib in server/:\n" + "\n".join(offenders)



# Tests and benchmarks both stand on the library: neither imports the other, and benchmarks
# use only its public names (what a user of the library could write).
ROOT = SRC.parent


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def test_tests_do_not_import_benchmarks():
    offenders = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            if any(n == "benchmarks" or n.startswith("benchmarks.") for n in names):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders, "tests import benchmarks (move what they share into the library):\n" + "\n".join(offenders)


def _root_name(node: ast.AST) -> str | None:
    while isinstance(node, (ast.Attribute, ast.Subscript, ast.Call)):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node.id if isinstance(node, ast.Name) else None


def test_benchmarks_use_only_public_names():
    """No ``from imagespace.x import _name``, no private module, no ``obj._attr``: a benchmark
    measures the library as its users can call it. Reached through a benchmark's own ``self``
    (a torch module it defines, say) is its own business."""
    offenders = []
    for path in sorted((ROOT / "benchmarks").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").startswith(PACKAGE):
                names = node.module.split(".") + [a.name for a in node.names]
                offenders += [f"{where}: {node.module} import {n}" for n in names if _private(n)]
            elif isinstance(node, ast.Import):
                offenders += [f"{where}: import {a.name}" for a in node.names if a.name.startswith(PACKAGE) and any(_private(p) for p in a.name.split("."))]
            elif isinstance(node, ast.Attribute) and _private(node.attr) and _root_name(node) not in ("self", "cls"):
                offenders.append(f"{where}: {ast.unparse(node)}")
    assert not offenders, "benchmarks reach private names of the library:\n" + "\n".join(offenders)


def test_the_public_names_check_sees_private_reaches(tmp_path, monkeypatch):
    """The check above must be able to fail: point it at a benchmark that reaches in."""
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "bench_x.py").write_text(
        "from imagespace.analysis.classify import _softmax\nimport imagespace._hidden\nindex._ivf.nlist\nself._mine.x._also\n"
    )
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    with pytest.raises(AssertionError) as caught:
        test_benchmarks_use_only_public_names()
    text = str(caught.value)
    assert "_softmax" in text and "imagespace._hidden" in text and "index._ivf" in text and "_mine" not in text
