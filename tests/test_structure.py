"""Structure rules the codebase keeps (issue #21), checked on the source with ``ast``:

- algorithm names are compared only in the registry (``eagle_ext/algorithms.py``): everything else asks the
  registry's spec or the algorithm's strategy, so a new drafter adds a package and a registry line, not branches;
- no function in ``eagle_ext/train``, ``eagle_ext/serve`` or ``eagle_ext/data`` is longer than 80 lines;
- no ``.py`` file holds more than 100 lines of literal content (multi-line strings and literal lists / dicts /
  tuples, docstrings aside): content lives in data files (``tools/demo_prompts.yaml``, ``tests/fixtures/``).
"""

from __future__ import annotations

import ast
import pathlib

from eagle_ext.algorithms import ALGORITHM_NAMES

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "eagle_ext"
REGISTRY = PACKAGE / "algorithms.py"


def _sources(*folders: pathlib.Path):
    for folder in folders:
        yield from sorted(folder.rglob("*.py"))


def _names_an_algorithm(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant):
        return node.value in ALGORITHM_NAMES
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return any(_names_an_algorithm(e) for e in node.elts)
    return False


def algorithm_dispatch(tree: ast.AST) -> list[int]:
    """Lines comparing something with an algorithm's name (``x == "eagle3"``, ``x in ("eagle3", ...)``)."""
    return [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Compare)
            and any(_names_an_algorithm(side) for side in (node.left, *node.comparators))]


def long_functions(tree: ast.AST, limit: int = 80) -> list[str]:
    return [f"{node.name}:{node.lineno} ({node.end_lineno - node.lineno + 1} lines)" for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > limit]


def _is_literal(node: ast.AST) -> bool:
    if isinstance(node, (ast.Constant, ast.JoinedStr)):
        return True
    if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
        return all(_is_literal(e) for e in node.elts)
    if isinstance(node, ast.Dict):
        return all(k is None or _is_literal(k) for k in node.keys) and all(_is_literal(v) for v in node.values)
    return False


def literal_lines(tree: ast.AST) -> int:
    """Source lines inside multi-line literals (strings, and lists / tuples / sets / dicts of literals), docstrings
    excluded."""
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    lines: set[int] = set()
    for node in ast.walk(tree):
        if id(node) in docstrings or node.__class__ not in (ast.Constant, ast.List, ast.Tuple, ast.Set, ast.Dict):
            continue
        multi_line = node.end_lineno > node.lineno
        if multi_line and (isinstance(node, ast.Constant) and isinstance(node.value, (str, bytes)) or
                           not isinstance(node, ast.Constant) and _is_literal(node)):
            lines.update(range(node.lineno, node.end_lineno + 1))
    return len(lines)


def test_the_rules_catch_what_they_name():
    tree = ast.parse('x = a == "eagle3"\ny = b in ("peagle", "z")\nz = c == "other"\n')
    assert algorithm_dispatch(tree) == [1, 2]
    body = "\n".join(f"    v{i} = {i}" for i in range(80))
    assert long_functions(ast.parse(f"def f():\n{body}\n")) == ["f:1 (81 lines)"]
    assert long_functions(ast.parse(f"def f():\n{body[: body.rindex(chr(10))]}\n")) == []
    text = 'def f():\n    """Doc\n    string."""\n\nX = [\n    "a",\n    "b",\n]\nS = """one\ntwo"""\nY = [f(x) for x in z]\n'
    assert literal_lines(ast.parse(text)) == 6


def test_algorithm_names_are_compared_only_in_the_registry():
    found = {str(path.relative_to(ROOT)): lines for path in _sources(PACKAGE, ROOT / "benchmarks", ROOT / "tools")
             if path != REGISTRY and (lines := algorithm_dispatch(ast.parse(path.read_text())))}
    assert found == {}


def test_no_function_in_train_serve_or_data_is_longer_than_80_lines():
    found = {str(path.relative_to(ROOT)): long for path in _sources(*(PACKAGE / p for p in ("train", "serve", "data")))
             if (long := long_functions(ast.parse(path.read_text())))}
    assert found == {}


def test_no_python_file_holds_more_than_100_lines_of_literal_content():
    folders = [PACKAGE, ROOT / "tests", ROOT / "benchmarks", ROOT / "tools"]
    found = {str(path.relative_to(ROOT)): n for path in _sources(*folders)
             if (n := literal_lines(ast.parse(path.read_text()))) > 100}
    assert found == {}
