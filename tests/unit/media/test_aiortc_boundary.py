"""Only services/media/webrtc/aiortc_compat.py may touch aiortc/aioice/pylibsrtp internals.

The private names are taken from the compat module itself (every ``x._name`` it reads or
writes on a library object, and every name-mangled ``_Class__name`` string), minus the names our
own code defines (its methods and ``self._name`` attributes), which are ours to use. Any other
module under services/ that spells one of them, a name-mangled aiortc name, or imports a
private submodule of those libraries fails this test.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
SERVICES = ROOT / "services"
COMPAT = SERVICES / "media" / "webrtc" / "aiortc_compat.py"
LIBRARIES = ("aiortc", "aioice", "pylibsrtp")
MANGLED = re.compile(r"^_(RTC\w+|Connection|StunProtocol|Session)__\w+$")


def private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def tree_of(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), str(path))


def accessed_privates(tree: ast.AST) -> set[str]:
    """Private attribute names read or written on something other than ``self``/``cls``."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and private(node.attr):
            if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                found.add(node.attr)
    return found


def own_names(trees: list[ast.Module]) -> set[str]:
    """Private names our code defines: methods, class attributes, ``self._x = ...``."""
    names = set()
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) \
                    and isinstance(node.value, ast.Name) and node.value.id == "self":
                names.add(node.attr)
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names.add(node.target.id)
    return names


def string_constants(tree: ast.AST) -> set[str]:
    return {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}


def modules() -> dict[Path, ast.Module]:
    return {path: tree_of(path) for path in sorted(SERVICES.rglob("*.py"))}


def library_privates() -> set[str]:
    others = [tree for path, tree in modules().items() if path != COMPAT]
    compat = tree_of(COMPAT)
    mangled = {s for s in string_constants(compat) if MANGLED.match(s)}
    mangled |= {n.attr for n in ast.walk(compat) if isinstance(n, ast.Attribute) and MANGLED.match(n.attr)}
    return (accessed_privates(compat) - own_names(others)) | mangled


def test_the_compat_module_names_the_internals_it_relies_on() -> None:
    names = library_privates()
    # the check below is only as good as this set: the hooks' own internals must be in it
    assert {"_rx_srtp", "_tx_srtp", "_codecs", "_ssrc", "_nominated", "_protocols", "_queue",
            "_RTCPeerConnection__iceTransports", "_RTCIceTransport__monitor_task"} <= names


def test_no_module_but_compat_touches_aiortc_internals() -> None:
    names = library_privates()
    offences = []
    for path, tree in modules().items():
        if path == COMPAT:
            continue
        where = path.relative_to(ROOT)
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and (node.attr in names or MANGLED.match(node.attr)):
                offences.append(f"{where}:{node.lineno}: .{node.attr}")
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) \
                    and (node.value in names or MANGLED.match(node.value)):
                offences.append(f"{where}:{node.lineno}: {node.value!r}")
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                parts = node.module.split(".")
                if parts[0] in LIBRARIES and (any(map(private, parts)) or any(private(a.name) for a in node.names)):
                    offences.append(f"{where}:{node.lineno}: from {node.module} import ...")
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    parts = alias.name.split(".")
                    if parts[0] in LIBRARIES and any(map(private, parts)):
                        offences.append(f"{where}:{node.lineno}: import {alias.name}")
    assert offences == [], "aiortc/aioice internals outside aiortc_compat.py:\n" + "\n".join(offences)


def test_the_check_catches_a_private_use() -> None:
    sample = ast.parse("def f(dtls, pc):\n    return dtls._rx_srtp, getattr(pc, '_RTCPeerConnection__cname')\n")
    names = library_privates()
    hits = [n for n in ast.walk(sample) if isinstance(n, ast.Attribute) and n.attr in names]
    hits += [n for n in ast.walk(sample) if isinstance(n, ast.Constant) and n.value in names]
    assert len(hits) == 2
