"""Dependencies point one way (issue 17, item 6).

The module graph of ``tta_jax``, ``data_pipeline`` and ``launch`` is built from the source with
:mod:`ast`, counting EVERY import: module level, inside functions/classes/``if`` blocks, relative
(``from . import x``) and ``importlib.import_module("literal")`` / ``__import__("literal")``. Then:

(a) the graph has no cycle (each one found is reported as a path ``a -> b -> ... -> a``);
(b) the library never imports upward: no ``tta_jax`` module imports ``data_pipeline`` or ``launch``;
(c) model modules do not import converters: loaders depend on models, not the reverse
    (``tta_jax.{denoisers,codecs,text,vocoders,eval,nn,diffusion,audio}`` never import
    ``tta_jax.convert``).

Edge resolution: ``import a.b.c`` and ``from a.b import c`` point at the most specific project module
(``a.b.c`` when it is a module, else ``a.b``). Importing a submodule does NOT add an edge to its parent
package: Python runs ``a/__init__.py`` first, but a package importing its own children and a child
importing a sibling is not a cycle. Only an explicit ``import a`` / ``from a import name`` (``name`` not a
submodule) points at the package itself.
"""
from __future__ import annotations

import ast
import os
from collections.abc import Iterable, Mapping

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOTS = ("tta_jax", "data_pipeline", "launch")
MODEL_PACKAGES = tuple(f"tta_jax.{p}" for p in
                       ("denoisers", "codecs", "text", "vocoders", "eval", "nn", "diffusion", "audio",
                        "conditioners"))
# The codec / text-encoder registries (issue 17, item 2) are loaders, not models: they build a codec or text
# encoder from a config section and its released weights through tta_jax.convert (rule (c) exempts them).
REGISTRIES = ("tta_jax.codecs.registry", "tta_jax.text.registry")

Graph = dict[str, dict[str, list[int]]]   # module -> {imported module -> [line numbers]}


# ---------------------------------------------------------------------------------------- building


def module_files(repo: str, roots: Iterable[str]) -> dict[str, str]:
    """Dotted module name -> file path for every ``.py`` under ``repo/<root>`` (``pkg/__init__.py`` is
    ``pkg``). Raises FileNotFoundError naming a root that is not a directory."""
    out = {}
    for root in roots:
        top = os.path.join(repo, root)
        if not os.path.isdir(top):
            raise FileNotFoundError(f"import graph root {root!r}: no directory {top}")
        for d, dirs, files in os.walk(top):
            dirs[:] = sorted(x for x in dirs if not x.startswith((".", "__pycache__")))
            for f in sorted(files):
                if not f.endswith(".py"):
                    continue
                parts = os.path.relpath(os.path.join(d, f), repo)[:-3].split(os.sep)
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                out[".".join(parts)] = os.path.join(d, f)
    return out


def _literal_str(node) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _dynamic_import(node: ast.Call) -> tuple[str, str | None] | None:
    """``importlib.import_module("x"[, package="p"])`` / ``import_module(...)`` / ``__import__("x")``
    with a literal name -> (name, package); anything else -> None."""
    f = node.func
    name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None
    if name not in ("import_module", "__import__") or not node.args:
        return None
    target = _literal_str(node.args[0])
    if target is None:
        return None
    pkg = next((_literal_str(k.value) for k in node.keywords if k.arg == "package"), None)
    if pkg is None and name == "import_module" and len(node.args) > 1:
        pkg = _literal_str(node.args[1])
    return target, pkg


def _base_package(module: str, is_package: bool, level: int, where: str) -> str:
    """The package a relative import of ``level`` dots refers to, from ``module``."""
    parts = module.split(".") if is_package else module.split(".")[:-1]
    if level - 1 > len(parts) - 1 or not parts:
        raise ValueError(f"{where}: relative import beyond the top-level package")
    return ".".join(parts[:len(parts) - (level - 1)])


def import_statements(source: str, module: str, is_package: bool,
                      where: str = "<src>") -> list[tuple[str, str | None, int]]:
    """Every import in ``source`` as (absolute module, imported name or None, line): ``import a.b`` ->
    ("a.b", None); ``from a import x`` -> ("a", "x"); ``from a import *`` -> ("a", "*");
    ``importlib.import_module("a.b")`` -> ("a.b", None). Relative forms are resolved against ``module``.
    Walks the whole tree, so imports inside functions, classes and ``if`` blocks count."""
    out: list[tuple[str, str | None, int]] = []
    for node in ast.walk(ast.parse(source, filename=where)):
        if isinstance(node, ast.Import):
            out += [(a.name, None, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = _base_package(module, is_package, node.level, f"{where}:{node.lineno}")
                base = f"{pkg}.{base}" if base else pkg
            out += [(base, a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.Call):
            dyn = _dynamic_import(node)
            if dyn is None:
                continue
            target, pkg = dyn
            if target.startswith("."):
                if pkg is None:
                    raise ValueError(f"{where}:{node.lineno}: relative import_module({target!r}) "
                                     "without a literal package=")
                level = len(target) - len(target.lstrip("."))
                pkg = ".".join(pkg.split(".")[:len(pkg.split(".")) - (level - 1)])
                target = f"{pkg}.{target.lstrip('.')}" if target.lstrip(".") else pkg
            out.append((target, None, node.lineno))
    return out


def raw_imports(source: str, module: str, is_package: bool, where: str = "<src>") -> list[tuple[str, int]]:
    """Every absolute name ``source`` imports, with its line: ``import a.b`` -> ``a.b``;
    ``from a import x, y`` -> ``a.x``, ``a.y`` (``*`` -> ``a``); see :func:`import_statements`."""
    # `a.x` resolves to the submodule when there is one, else to `a` itself (see resolve)
    return [(m if n in (None, "*") else f"{m}.{n}", line)
            for m, n, line in import_statements(source, module, is_package, where)]


def module_names(source: str) -> set[str] | None:
    """Names bound at module level (defs, classes, assignments, imports; also inside top-level
    ``if``/``try``/``with``/``for`` blocks), or None when they cannot be listed (``import *`` or a
    module ``__getattr__``)."""
    names: set[str] = set()

    def targets(t):
        if isinstance(t, ast.Name):
            names.add(t.id)
        elif isinstance(t, (ast.Tuple, ast.List)):
            for e in t.elts:
                targets(e)
        elif isinstance(t, ast.Starred):
            targets(t.value)

    def visit(body) -> bool:
        for st in body:
            if isinstance(st, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                if st.name == "__getattr__":
                    return False
                names.add(st.name)
            elif isinstance(st, ast.Assign):
                for t in st.targets:
                    targets(t)
            elif isinstance(st, (ast.AnnAssign, ast.AugAssign)):
                targets(st.target)
            elif isinstance(st, ast.Import):
                names.update(a.asname or a.name.split(".")[0] for a in st.names)
            elif isinstance(st, ast.ImportFrom):
                if any(a.name == "*" for a in st.names):
                    return False
                names.update(a.asname or a.name for a in st.names)
            elif isinstance(st, (ast.For, ast.AsyncFor)):
                targets(st.target)
            elif isinstance(st, (ast.With, ast.AsyncWith)):
                for item in st.items:
                    if item.optional_vars is not None:
                        targets(item.optional_vars)
            blocks = [getattr(st, k, []) for k in ("body", "orelse", "finalbody")] + \
                [h.body for h in getattr(st, "handlers", [])]
            if not isinstance(st, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                if not all(visit(b) for b in blocks):
                    return False
        return True

    return names if visit(ast.parse(source).body) else None


def broken_imports(repo: str, roots: Iterable[str] = ROOTS) -> list[str]:
    """``"file:line: ..."`` for every import of a project module that does not exist, and every
    ``from M import name`` where project module ``M`` neither has a submodule ``name`` nor binds it at
    module level (e.g. an import left pointing at a moved module or function)."""
    roots = tuple(roots)
    modules = module_files(repo, roots)
    bound: dict[str, set[str] | None] = {}

    def names_of(mod):
        if mod not in bound:
            with open(modules[mod], encoding="utf-8") as f:
                bound[mod] = module_names(f.read())
        return bound[mod]

    out = []
    for mod, path in sorted(modules.items()):
        with open(path, encoding="utf-8") as f:
            src = f.read()
        rel = os.path.relpath(path, repo)
        for target, name, line in import_statements(src, mod, path.endswith("__init__.py"), rel):
            if target.split(".")[0] not in roots:
                continue
            if target not in modules:
                msg = f"{rel}:{line}: no module {target}"
                if msg not in out:  # `from gone import a, b`: once
                    out.append(msg)
            elif name not in (None, "*") and f"{target}.{name}" not in modules:
                have = names_of(target)
                if have is not None and name not in have:
                    out.append(f"{rel}:{line}: {target} has no {name!r}")
    return out


def resolve(name: str, modules: Mapping[str, str]) -> str | None:
    """The most specific project module ``name`` refers to (``a.b.Class`` -> ``a.b``), or None when it
    is not a project module (stdlib, third party)."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        cand = ".".join(parts[:n])
        if cand in modules:
            return cand
    return None


def build_graph(repo: str, roots: Iterable[str] = ROOTS) -> Graph:
    """Module graph of the project: {module: {imported project module: [lines]}}, self-edges dropped.
    ``from a import x`` adds an edge to ``a.x`` when that is a module, else to ``a``."""
    modules = module_files(repo, roots)
    graph: Graph = {}
    for mod, path in modules.items():
        with open(path, encoding="utf-8") as f:
            src = f.read()
        edges: dict[str, list[int]] = {}
        is_pkg = os.path.basename(path) == "__init__.py"
        for name, line in raw_imports(src, mod, is_pkg, where=os.path.relpath(path, repo)):
            target = resolve(name, modules)
            if target is not None and target != mod and line not in edges.get(target, ()):
                edges.setdefault(target, []).append(line)
        graph[mod] = edges
    return graph


# ---------------------------------------------------------------------------------------- checking


def without_sources(graph: Graph, prefixes: Iterable[str]) -> Graph:
    """``graph`` with the out-edges of every module under one of ``prefixes`` removed."""
    prefixes = tuple(prefixes)
    return {m: ({} if under(m, prefixes) else e) for m, e in graph.items()}


def under(module: str, prefixes: Iterable[str]) -> bool:
    """True when ``module`` is one of ``prefixes`` or inside one of those packages."""
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def find_cycles(graph: Mapping[str, Mapping[str, object]]) -> list[list[str]]:
    """One cycle path ``[a, b, ..., a]`` per strongly connected component with more than one module
    (Tarjan, iterative). Sorted, so the report is stable."""
    index, low, on, stack, comps = {}, {}, set(), [], []
    counter = [0]
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = counter[0]
        counter[0] += 1
        stack.append(start)
        on.add(start)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    comps.append(set(comp))
    return sorted(_cycle_in(graph, c) for c in comps)


def _cycle_in(graph, comp: set[str]) -> list[str]:
    """A shortest cycle through the smallest module of the strongly connected component ``comp``."""
    start = min(comp)
    prev, frontier = {start: None}, [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph.get(v, ())):
                if w == start:
                    path = [v]
                    while prev[path[-1]] is not None:
                        path.append(prev[path[-1]])
                    return path[::-1] + [start]
                if w in comp and w not in prev:
                    prev[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no cycle through {start} in its component")  # unreachable for an SCC


def forbidden_edges(graph: Graph, sources: Iterable[str], targets: Iterable[str]) -> list[str]:
    """``"src:line -> dst"`` for every edge from a module under ``sources`` to one under ``targets``."""
    sources, targets = tuple(sources), tuple(targets)
    return [f"{m}:{','.join(map(str, lines))} -> {t}" for m in sorted(graph) if under(m, sources)
            for t, lines in sorted(graph[m].items()) if under(t, targets)]


def format_cycles(cycles: list[list[str]]) -> str:
    return "\n".join(" -> ".join(c) for c in cycles)


def assert_no_cycles(graph: Graph) -> None:
    """Raises AssertionError listing one cycle path per strongly connected component of ``graph``."""
    cycles = find_cycles(graph)
    assert not cycles, "import cycles:\n" + format_cycles(cycles)


def assert_no_edges(graph: Graph, sources: Iterable[str], targets: Iterable[str], what: str) -> None:
    """Raises AssertionError listing every ``src:lines -> dst`` edge from ``sources`` into ``targets``."""
    bad = forbidden_edges(graph, sources, targets)
    assert not bad, f"{what}:\n" + "\n".join(bad)


# ---------------------------------------------------------------------------------------- the project


@pytest.fixture(scope="module")
def project_graph() -> Graph:
    return build_graph(REPO)


def test_graph_sees_the_project_and_function_level_imports(project_graph):
    # sanity: the project is actually parsed (a silent empty graph would pass every check below)
    assert len(project_graph) > 50 and {"tta_jax.train.loop", "data_pipeline.precompute"} <= set(project_graph)
    assert "tta_jax.data.masks" in project_graph["tta_jax.data.loader"]          # module level
    assert "tta_jax.data.records" in project_graph["tta_jax.codecs.token_pca"]   # inside a function


def test_project_imports_resolve():
    # an import of a project module or name that does not exist (a move left half done) fails here
    # by file:line, not at run time inside a function
    bad = broken_imports(REPO)
    assert not bad, "imports of project modules / names that do not exist:\n" + "\n".join(bad)


def _module_of_file(report_line: str) -> str:
    path = report_line.split(":")[0][:-3].replace(os.sep, ".")
    return path[: -len(".__init__")] if path.endswith(".__init__") else path


UPWARD = "tta_jax imports the data-preparation / CLI layer"
MODEL_TO_CONVERT = "model modules import tta_jax.convert (move the loader into tta_jax.convert)"


def test_no_import_cycles(project_graph):
    assert_no_cycles(project_graph)


def test_library_never_imports_data_pipeline_or_launch(project_graph):
    assert_no_edges(project_graph, ["tta_jax"], ["data_pipeline", "launch"], UPWARD)


def test_models_do_not_import_converters(project_graph):
    assert_no_edges(without_sources(project_graph, REGISTRIES), MODEL_PACKAGES, ["tta_jax.convert"],
                    MODEL_TO_CONVERT)


# ---------------------------------------------------------------------------------------- the checker


def _write(root, files: Mapping[str, str]):
    for rel, text in files.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)


def test_injected_cycle_through_function_level_import_is_reported(tmp_path):
    _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "import os\nfrom pkg import b\n",
        "pkg/b.py": "def f():\n    from . import c\n",
        "pkg/c.py": "def g():\n    import importlib\n    return importlib.import_module('pkg.a')\n",
    })
    g = build_graph(str(tmp_path), ["pkg"])
    assert g["pkg.a"] == {"pkg.b": [2]} and g["pkg.b"] == {"pkg.c": [2]} and g["pkg.c"] == {"pkg.a": [3]}
    assert find_cycles(g) == [["pkg.a", "pkg.b", "pkg.c", "pkg.a"]]
    with pytest.raises(AssertionError, match=r"import cycles:\s+pkg\.a -> pkg\.b -> pkg\.c -> pkg\.a"):
        assert_no_cycles(g)


def test_injected_edges_into_project_graph_are_reported(project_graph):
    g = {m: dict(e) for m, e in project_graph.items()}
    assert_no_cycles(g)
    # the loader imports the masks; a function-level import back from the masks closes a cycle
    g["tta_jax.data.masks"]["tta_jax.data.loader"] = [30]
    with pytest.raises(AssertionError, match=r"tta_jax\.data\.loader -> tta_jax\.data\.masks -> "
                                             r"tta_jax\.data\.loader"):
        assert_no_cycles(g)
    g["tta_jax.nn.layers"]["tta_jax.convert.common"] = [7]
    with pytest.raises(AssertionError, match=r"tta_jax\.nn\.layers:7 -> tta_jax\.convert\.common"):
        assert_no_edges(g, MODEL_PACKAGES, ["tta_jax.convert"], MODEL_TO_CONVERT)
    g["tta_jax.data.records"]["data_pipeline.precompute"] = [3, 9]
    with pytest.raises(AssertionError, match=r"tta_jax\.data\.records:3,9 -> data_pipeline\.precompute"):
        assert_no_edges(g, ["tta_jax"], ["data_pipeline", "launch"], UPWARD)


def test_package_importing_children_is_not_a_cycle(tmp_path):
    _write(tmp_path, {
        "pkg/__init__.py": "from pkg.a import A\nfrom .b import B\n",
        "pkg/a.py": "from pkg import b\nA = 1\n",          # sibling, through the package name
        "pkg/b.py": "import pkg.sub.c\nB = 2\n",
        "pkg/sub/__init__.py": "",
        "pkg/sub/c.py": "from ..b import B\n",              # relative, two levels
    })
    g = build_graph(str(tmp_path), ["pkg"])
    assert g["pkg"] == {"pkg.a": [1], "pkg.b": [2]}
    assert g["pkg.a"] == {"pkg.b": [1]} and g["pkg.b"] == {"pkg.sub.c": [1]}
    assert g["pkg.sub.c"] == {"pkg.b": [1]}                   # b <-> sub.c is a real cycle
    assert find_cycles(g) == [["pkg.b", "pkg.sub.c", "pkg.b"]]
    # importing a name defined in the package's __init__ from a child it imports IS a cycle
    _write(tmp_path, {"pkg/sub/c.py": "", "pkg/a.py": "from pkg import b, VERSION\n"})
    g = build_graph(str(tmp_path), ["pkg"])
    assert g["pkg.a"] == {"pkg": [1], "pkg.b": [1]}
    assert find_cycles(g) == [["pkg", "pkg.a", "pkg"]]


def test_broken_imports_are_named(tmp_path):
    _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "try:\n    import json as J\nexcept ImportError:\n    J = None\nX, (Y, Z) = 1, (2, 3)\n"
                    "def f():\n    pass\n",
        "pkg/b.py": ("from pkg.a import J, X, Z, f\nfrom pkg import a\nimport os\n\n\n"
                     "def g():\n    from pkg.a import gone\n    from pkg.moved import h\n    import pkg.nope\n"),
        "pkg/c.py": "from pkg.a import *\n",
        "pkg/d.py": "from pkg.c import anything\n",   # c's names cannot be listed: not reported
    })
    assert module_names("A = 1\ndef __getattr__(n):\n    pass\n") is None
    assert broken_imports(str(tmp_path), ["pkg"]) == [
        "pkg/b.py:7: pkg.a has no 'gone'", "pkg/b.py:8: no module pkg.moved", "pkg/b.py:9: no module pkg.nope"]


def test_import_resolution_details():
    mods = {"p": "", "p.q": "", "p.q.r": ""}
    assert resolve("p.q.r.Thing", mods) == "p.q.r" and resolve("numpy.linalg", mods) is None
    src = ("import importlib\nimportlib.import_module('.r', package='p.q')\n"
           "__import__('p.q')\nimportlib.import_module(name_from_config)\n")
    assert raw_imports(src, "p.x", False) == [("importlib", 1), ("p.q.r", 2), ("p.q", 3)]
    with pytest.raises(ValueError, match="beyond the top-level package"):
        raw_imports("from ... import x\n", "p.q", False, where="p/q.py")
    with pytest.raises(FileNotFoundError, match="'nope'"):
        module_files("/nonexistent-repo", ["nope"])
