"""The layers import as DESIGN.md draws them.

* The drivers -- agent/, sim/ and benchmarks/ -- use protocol's public surface
  only: ``from protocol import Name`` with ``Name`` in ``protocol.__all__``; never
  a private module (``protocol._ledger``, ``from protocol import _ledger``).
* sim/ never imports agent/, and agent/ never imports sim/: each drives the same
  machine on its own.

Every module is parsed, not imported, and imports inside functions and under
``TYPE_CHECKING`` count too. (protocol/ itself is held to its own rules by
``test_protocol_purity.py``; tests/ may reach into the private modules they test.)
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import protocol

ROOT = Path(__file__).resolve().parent.parent
DRIVERS = ("agent", "sim", "benchmarks")
#: package -> the packages it must never import
APART = {"agent": ("sim",), "sim": ("agent",), "benchmarks": ()}


def _imports(tree: ast.AST) -> list[tuple[int, str, tuple[str, ...]]]:
    """(line, absolute module, names) of every absolute import in ``tree``."""
    out: list[tuple[int, str, tuple[str, ...]]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend((node.lineno, a.name, ()) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module, tuple(a.name for a in node.names)))
    return out


def findings(package: str, where: str, source: str) -> list[str]:
    """What is wrong with the imports of one module of ``package`` (``where`` names it)."""
    bad: list[str] = []
    public = set(protocol.__all__)
    for line, module, names in _imports(ast.parse(source)):
        top = module.split(".")[0]
        if top == "protocol":
            if module != "protocol":
                bad.append(f"{where}:{line}: imports {module}: use `from protocol import ...`")
                continue
            for name in names:
                if name.startswith("_"):
                    bad.append(f"{where}:{line}: imports the private module protocol.{name}")
                elif name != "*" and name not in public:
                    bad.append(f"{where}:{line}: imports protocol.{name}, which is not in "
                               "protocol.__all__ (export it there if a driver needs it)")
        elif top in APART[package]:
            bad.append(f"{where}:{line}: {package}/ imports {module}: {package}/ and {top}/ "
                       "never import each other")
    for node in ast.walk(ast.parse(source)):   # ``import protocol`` then ``protocol._x``
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                and node.value.id == "protocol" and node.attr.startswith("_") \
                and not node.attr.startswith("__"):
            bad.append(f"{where}:{node.lineno}: reaches into protocol.{node.attr}")
    return bad


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def test_the_drivers_are_found() -> None:
    assert len(_modules("agent")) > 20 and len(_modules("sim")) > 3
    assert _modules("benchmarks")


@pytest.mark.parametrize("package", DRIVERS)
def test_drivers_import_public_names_only_and_not_each_other(package: str) -> None:
    bad = [f for path in _modules(package)
           for f in findings(package, str(path.relative_to(ROOT)), path.read_text())]
    assert not bad, "\n".join(bad)


def test_the_public_surface_is_whole() -> None:
    names = protocol.__all__
    assert len(set(names)) == len(names), "a name is listed twice in protocol.__all__"
    missing = [n for n in names if not hasattr(protocol, n)]
    assert not missing, f"protocol.__all__ lists names protocol does not define: {missing}"
    assert not [n for n in names if n.startswith("_")]


# ---------------------------------------------------------------- the checker itself

@pytest.mark.parametrize(("package", "source", "expected"), [
    ("agent", "from protocol._ledger import Ledger", "use `from protocol import"),
    ("sim", "import protocol._codec", "use `from protocol import"),
    ("agent", "def f():\n    from protocol._node import NodeMachine", "protocol._node"),
    ("agent", "if TYPE_CHECKING:\n    from protocol._node import NodeMachine", "protocol._node"),
    ("agent", "from protocol import _codec", "private module"),
    ("agent", "from protocol import canonical", "not in protocol.__all__"),
    ("sim", "from agent._daemon.runtime import NodeRuntime", "never import each other"),
    ("sim", "import agent", "never import each other"),
    ("agent", "from sim import Fleet", "never import each other"),
    ("agent", "import protocol\nprotocol._ledger.Ledger", "reaches into protocol._ledger"),
    ("agent", "from protocol import Ledger, NodeMachine", None),
    ("agent", "import protocol\nprotocol.Ledger\nprotocol.__all__", None),
    ("agent", "from agent._config import AgentConfig\nfrom . import _errors", None),
    ("benchmarks", "from sim import Fleet\nfrom agent.client import Client", None),
])
def test_the_checker_catches_what_it_should(package: str, source: str,
                                           expected: str | None) -> None:
    found = findings(package, "x.py", source)
    if expected is None:
        assert not found
    else:
        assert any(expected in f for f in found), found
