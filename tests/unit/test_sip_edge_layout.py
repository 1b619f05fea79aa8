"""The sip-edge package keeps its shape: no import cycle, no module over 400 lines of code, and
sippy's private names and event classes only where they belong.

Reads the package's source with `ast` (nothing is imported: importing the SIP modules would import
sippy on the test thread). Each check also runs on a small bad example, so it is known to fail.
"""

from __future__ import annotations

import ast
import io
import tokenize
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "services" / "sip-edge" / "callcenter_sip_edge"
PACKAGE_NAME = "callcenter_sip_edge"
MAX_LINES_OF_CODE = 400
# attributes, config keys and reactor fields of sippy that are not its public API
SIPPY_PRIVATE_NAMES = frozenset({
    "pending_tr", "global_config", "tlisteners", "twasted", "my_ident", "_sip_tm", "_sip_address",
    "_sip_port", "_sip_logger", "l4r", "cache_l2s", "uopts", "rTarget", "lSDP", "rSDP", "equeue",
    "uasResp", "recv_request_handlers", "recv_event_handlers", "session_sdp_before_update",
})
# sippy modules whose classes are its dialog states and event types
SIPPY_STATE_MODULE_PREFIXES = ("sippy.Ua", "sippy.Uac", "sippy.Uas", "sippy.Core.")
EVENTS_MODULE = "sippy.CCEvents"
# where sippy's event classes may be imported: the adapter, and the adaptation layer
EVENT_CLASSES_ALLOWED = {"sip_events", "sippy.patches", "sippy.dialog"}


def _modules() -> dict[str, Path]:
    """Dotted name inside the package (e.g. `sippy.dialog`) -> file."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts) or "__init__"
        found[name] = path
    return found


def _is_type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imports(tree: ast.AST) -> list[str]:
    """Modules imported when the module runs (also inside functions), not those for type checkers."""
    names: list[str] = []

    def visit(node: ast.AST) -> None:
        if _is_type_checking_block(node):
            return
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
            names.extend(f"{node.module}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return names


def _edges(sources: dict[str, str]) -> dict[str, set[str]]:
    """Import graph between the package's own modules."""
    graph: dict[str, set[str]] = {name: set() for name in sources}
    for name, text in sources.items():
        for imported in _imports(ast.parse(text)):
            if imported.startswith(PACKAGE_NAME + "."):
                target = imported.removeprefix(PACKAGE_NAME + ".")
                if target in sources and target != name:
                    graph[name].add(target)
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}   # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)) is not None:
            return cycle
    return None


def _lines_of_code(text: str) -> int:
    """Lines with code on them: no blank lines, comments or docstrings."""
    docstring_lines: set[int] = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                docstring_lines.update(range(body[0].lineno, (body[0].end_lineno or body[0].lineno) + 1))
    code_lines: set[int] = set()
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if token.type in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
                          tokenize.ENDMARKER):
            continue
        code_lines.update(range(token.start[0], token.end[0] + 1))
    return len(code_lines - docstring_lines)


def _sippy_private_uses(text: str) -> set[str]:
    """Sippy private names used as attributes, names, strings or keywords; private sippy imports."""
    found: set[str] = set()
    tree = ast.parse(text)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in SIPPY_PRIVATE_NAMES:
            found.add(node.attr)
        elif isinstance(node, ast.Name) and node.id in SIPPY_PRIVATE_NAMES:
            found.add(node.id)
        elif isinstance(node, ast.Constant) and node.value in SIPPY_PRIVATE_NAMES:
            found.add(str(node.value))
        elif isinstance(node, ast.keyword) and node.arg in SIPPY_PRIVATE_NAMES:
            found.add(str(node.arg))
    for imported in _imports(tree):
        if imported.startswith(SIPPY_STATE_MODULE_PREFIXES):
            found.add(imported)
    return found


def _imports_sippy_events(text: str) -> bool:
    return any(name == EVENTS_MODULE or name.startswith(EVENTS_MODULE + ".") for name in _imports(ast.parse(text)))


@pytest.fixture(scope="module")
def sources() -> dict[str, str]:
    modules = {name: path.read_text(encoding="utf-8") for name, path in _modules().items()}
    assert {"call", "router", "facts", "sip_events", "sippy.patches", "sippy.transport", "sippy.dialog"} <= set(modules)
    return modules


def test_the_package_has_no_import_cycle(sources: dict[str, str]) -> None:
    assert _find_cycle(_edges(sources)) is None


def test_the_cycle_check_finds_a_cycle() -> None:
    sources = {
        "a": "from callcenter_sip_edge.b import x\n",
        "b": "def f():\n    from callcenter_sip_edge import a\n",
        "c": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from callcenter_sip_edge.a import y\n",
    }
    assert _find_cycle(_edges(sources)) == ["a", "b", "a"]
    assert _edges(sources)["c"] == set()   # an import for type checkers only is no cycle


def test_no_module_has_more_than_400_lines_of_code(sources: dict[str, str]) -> None:
    too_long = {name: n for name, text in sources.items() if (n := _lines_of_code(text)) > MAX_LINES_OF_CODE}
    assert too_long == {}


def test_lines_of_code_leave_out_docstrings_comments_and_blank_lines() -> None:
    text = '"""Doc\nstring."""\n\n# a comment\ndef f(\n    x,\n):\n    """Doc."""\n    return x  # why\n'
    assert _lines_of_code(text) == 4


def test_sippy_private_names_only_in_the_sippy_folder(sources: dict[str, str]) -> None:
    outside = {name: uses for name, text in sources.items()
               if not name.startswith("sippy") and (uses := _sippy_private_uses(text))}
    assert outside == {}


def test_the_private_name_check_finds_each_kind_of_use() -> None:
    text = ('from sippy.UaStateConnected import UaStateConnected\n'
            'def f(ua):\n    ua.global_config["_sip_tm"].sendACK(ua.pending_tr)\n    ED2.tlisteners = []\n')
    assert _sippy_private_uses(text) == {"sippy.UaStateConnected", "sippy.UaStateConnected.UaStateConnected",
                                         "global_config", "_sip_tm", "pending_tr", "tlisteners"}


def test_only_the_adapter_imports_sippy_event_classes(sources: dict[str, str]) -> None:
    importers = {name for name, text in sources.items() if _imports_sippy_events(text)}
    assert importers <= EVENT_CLASSES_ALLOWED
    assert "sip_events" in importers
