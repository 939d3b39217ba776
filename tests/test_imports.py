"""No import cycles between the modules of ``fastattn``, counting imports inside functions.

The graph is read from the source, not from a running interpreter: every ``import`` and
``from ... import`` statement anywhere in a file (in functions, in ``try`` blocks, under
``TYPE_CHECKING``) is an edge, relative imports resolved.  ``from pkg import name`` is an
edge to ``pkg.name`` when that is a submodule, else to ``pkg`` (its ``__init__``).  Importing
``a.b.c`` also runs the packages ``a`` and ``a.b``; they are edges too, except the packages that
hold the importing module itself (they are already being imported, so they cannot be waited on).
"""

import ast
import pathlib
import re

import fastattn

PACKAGE_DIR = pathlib.Path(fastattn.__file__).resolve().parent


def module_files():
    """``{dotted module name: source path}`` of every Python and Cython module in the package."""
    files = {}
    for path in sorted(PACKAGE_DIR.rglob("*")):
        if path.suffix not in (".py", ".pyx") or "__pycache__" in path.parts:
            continue
        parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        files[".".join(parts)] = path
    return files


def parse(path):
    """The module's syntax tree; of a ``.pyx`` file, a tree of its Python import statements."""
    source = path.read_text()
    if path.suffix != ".pyx":
        return ast.parse(source, filename=str(path))
    tree = ast.Module(body=[], type_ignores=[])
    for statement in re.findall(r"^[ \t]*((?:from[ \t]+[\w.]+[ \t]+)?import[ \t]+"
                                r"(?:\([^)]*\)|[^\n]*))", source, re.M):
        try:  # `cimport` lines do not match; a docstring line that matches is not Python
            tree.body += ast.parse(statement).body
        except SyntaxError:
            pass
    return tree


def imported_modules(name, tree, known):
    """The fastattn modules that module ``name`` imports anywhere in ``tree``."""
    is_package = (PACKAGE_DIR.parent / name.replace(".", "/") / "__init__.py").exists()
    named = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            named.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")
                if not is_package:
                    anchor = anchor[:-1]
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            for alias in node.names:  # a submodule, or a name from the module's namespace
                submodule = f"{base}.{alias.name}"
                named.add(submodule if submodule in known else base)
    found = set(named)
    for module in named:  # importing a.b.c runs a and a.b too, unless they are name's parents
        parts = module.split(".")
        found.update(".".join(parts[:n]) for n in range(1, len(parts))
                     if not is_within(name, ".".join(parts[:n])))
    return {module for module in found if module in known and module != name}


def is_within(name, package):
    """Whether module ``name`` is ``package`` or lies inside it."""
    return name == package or name.startswith(package + ".")


def import_graph():
    files = module_files()
    return {name: imported_modules(name, parse(path), files) for name, path in files.items()}


def find_cycles(graph):
    """Each strongly connected group of two or more modules, as one cycle through it."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(node):  # Tarjan's algorithm
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
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [cycle_in(graph, group) for group in groups]


def cycle_in(graph, group):
    """One cycle ``[a, b, ..., a]`` through the modules of a strongly connected ``group``."""
    start = min(group)
    paths, queue = {start: [start]}, [start]
    while queue:  # breadth first: the shortest way back to start
        node = queue.pop(0)
        for target in sorted(graph[node] & group):
            if target == start:
                return paths[node] + [start]
            if target not in paths:
                paths[target] = paths[node] + [target]
                queue.append(target)
    raise AssertionError(f"{sorted(group)} is not strongly connected")


def test_no_import_cycles():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles in fastattn:\n  " + "\n  ".join(
        " -> ".join(cycle) for cycle in cycles)


def test_the_graph_sees_every_kind_of_import():
    """Relative, function-local and ``from . import submodule`` imports are all edges."""
    known = {"fastattn", "fastattn.a", "fastattn.b", "fastattn.sub", "fastattn.sub.c",
             "fastattn.other", "fastattn.other.d"}
    tree = ast.parse("from . import b\n"
                     "def f():\n    from .sub.c import thing\n"
                     "try:\n    from fastattn.other import d\nexcept ImportError:\n    pass\n")
    assert imported_modules("fastattn.a", tree, known) == {
        "fastattn.b", "fastattn.sub", "fastattn.sub.c", "fastattn.other", "fastattn.other.d"}
    assert imported_modules("fastattn.a", ast.parse("from . import __version__"), known) == {
        "fastattn"}
    assert imported_modules("fastattn.sub.c", ast.parse("from .. import b"), known) == {
        "fastattn.b"}


def test_cycles_are_found_and_reported():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}
    assert find_cycles(graph) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_covers_the_package():
    graph = import_graph()
    expected = {"fastattn", "fastattn._api", "fastattn._cython._kernel", "fastattn.bench"}
    assert expected <= set(graph)
    assert "fastattn._api" in graph["fastattn"]
