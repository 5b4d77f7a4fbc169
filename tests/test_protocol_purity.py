"""protocol/ stays sans-IO: it imports no I/O, clock or randomness, and holds no
process-wide mutable state.

Every module of protocol/ is parsed (not imported) and checked for:

* imports (anywhere in the module, inside functions too) of a module that does
  I/O, reads a clock, draws randomness or reaches into the process
  (:data:`FORBIDDEN`); of the drivers (agent, sim); or of a third-party package
  DESIGN.md does not list (:data:`THIRD_PARTY`);
* calls of the builtins that do I/O or import dynamically (``open``, ``print``,
  ``__import__``...), and of the key generators that draw the OS's randomness;
* module-level mutable state: a module-level (or class-level) binding to a
  dict/list/set/bytearray display, comprehension or constructor call
  (``dict()``, ``defaultdict()``, ``deque()``...), also nested in a tuple; a
  module-level augmented assignment or item/attribute store; a mutable default
  argument; a ``global`` statement; an ``lru_cache``/``cache`` decorator.
  ``__all__`` may be a list of strings. Immutable constants are fine: numbers,
  strings, tuples, ``frozenset(...)``, ``MappingProxyType({...})``.

Each module is then imported and its globals checked at run time, which catches
a mutable container built by a helper call the parse cannot see through.

The few exceptions are listed with their reason in :data:`ALLOWED`; an entry that
no longer matches anything fails too, so the list cannot go stale.
"""

from __future__ import annotations

import array
import ast
import collections
import functools
import importlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROTOCOL = ROOT / "protocol"
FILES = sorted(PROTOCOL.rglob("*.py"))

#: Modules protocol/ never imports (a dotted name also bans its submodules), and why.
FORBIDDEN: dict[str, str] = {
    # I/O, concurrency and the process: the drivers' business
    **dict.fromkeys(("trio", "anyio", "asyncio", "socket", "socketserver", "ssl", "select",
                     "selectors", "http", "urllib", "grpc", "zeroconf"), "network I/O"),
    **dict.fromkeys(("threading", "_thread", "multiprocessing", "concurrent", "subprocess",
                     "signal", "atexit"), "threads, processes or signals"),
    **dict.fromkeys(("os", "sys", "io", "pathlib", "shutil", "tempfile", "glob", "fcntl",
                     "mmap", "sqlite3", "dbm", "shelve", "logging", "ctypes", "resource",
                     "platform", "getpass", "builtins", "importlib"),
                    "the filesystem, the process or the host"),
    **dict.fromkeys(("psutil", "pynvml"), "hardware probing (agent/)"),
    # clocks: time is an input (``now``)
    **dict.fromkeys(("time", "datetime", "zoneinfo"), "a clock"),
    # randomness is an input (an injected ``Rng``, protocol/_rng.py)
    **dict.fromkeys(("random", "secrets", "uuid", "nacl.utils", "nacl.public"),
                    "randomness"),
    # the drivers: protocol never climbs back into them
    **dict.fromkeys(("agent", "sim", "tests", "benchmarks"), "a driver of protocol/"),
}

#: The third-party packages protocol/ may import (DESIGN.md: msgpack, pynacl, blake3,
#: fastcdc; cryptography for the session AEAD of the handshake).
THIRD_PARTY = frozenset({"msgpack", "nacl", "blake3", "fastcdc", "cryptography"})

#: Builtins that do I/O, or import or run code by name.
FORBIDDEN_CALLS = frozenset({"open", "print", "input", "breakpoint", "__import__", "exec",
                             "eval", "compile"})

#: ``X.generate()`` on these draws a key from the OS's randomness.
KEY_GENERATORS = frozenset({"SigningKey", "PrivateKey"})

#: Calls that build a mutable container.
MUTABLE_CALLS = frozenset({"dict", "list", "set", "bytearray", "defaultdict", "OrderedDict",
                           "Counter", "deque", "ChainMap", "array", "WeakValueDictionary",
                           "WeakKeyDictionary", "WeakSet", "SimpleNamespace"})
#: Calls that make an immutable value out of a display written in place.
FREEZERS = frozenset({"frozenset", "tuple", "MappingProxyType", "bytes"})
#: Decorators that keep a process-wide cache.
CACHES = frozenset({"cache", "lru_cache"})
#: Methods that change a container in place.
MUTATORS = frozenset({"add", "append", "clear", "discard", "extend", "insert", "pop",
                      "popitem", "remove", "setdefault", "update", "__setitem__",
                      "__delitem__"})

#: (module file, what) -> why it is allowed. "what" is a module-level name, or
#: "call:<qualified function>" for a forbidden call inside that function.
ALLOWED: dict[tuple[str, str], str] = {
    # the codec's type registry: filled by the @message / @struct class decorators as
    # the classes are defined (import time), read-only afterwards -- checked below:
    # nothing else in protocol/ writes them
    **{("_codec.py", name): "wire-type registry written only by @message/@struct"
       for name in ("_MESSAGE_BY_ID", "_ID_BY_MESSAGE", "_STRUCTS", "_SCHEMA", "_SIZED")},
    ("_identity.py", "call:SigningIdentity.generate"):
        "key generation for agent/ and the CLI (documented: never called inside protocol)",
}
#: The functions of _codec.py that may write its registry.
REGISTRY_WRITERS = frozenset({"struct", "message", "message.wrap", "_register"})


@dataclass(frozen=True, slots=True)
class Finding:
    file: str
    line: int
    what: str       # the allow-list key
    message: str

    def __str__(self) -> str:
        return f"protocol/{self.file}:{self.line}: {self.message}"


def _name(node: ast.expr) -> str:
    """The last name of a call target: ``f`` for ``f(...)`` and ``a.b.f(...)``."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return ""


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = _dotted(node.value)
        return f"{inner}.{node.attr}" if inner else ""
    return ""


def _mutable(expr: ast.expr | None, frozen: bool = False) -> ast.expr | None:
    """The first sub-expression of ``expr`` that builds a mutable container (``frozen``:
    ``expr`` is the argument of a freezer, so its own display is fine)."""
    if expr is None:
        return None
    if isinstance(expr, (ast.Dict, ast.List, ast.Set)):
        if not frozen:
            return expr
        parts = [*expr.values, *(k for k in expr.keys if k is not None)] if isinstance(
            expr, ast.Dict) else list(expr.elts)
        return next((m for p in parts if (m := _mutable(p)) is not None), None)
    if isinstance(expr, (ast.ListComp, ast.SetComp, ast.DictComp)):
        return None if frozen else expr
    if isinstance(expr, ast.Tuple):
        return next((m for p in expr.elts if (m := _mutable(p)) is not None), None)
    if isinstance(expr, ast.Call):
        name = _name(expr.func)
        if name in MUTABLE_CALLS:
            return expr
        if name in FREEZERS:
            return next((m for a in expr.args if (m := _mutable(a, frozen=True)) is not None),
                        None)
    return None


class _Checker(ast.NodeVisitor):
    def __init__(self, file: str) -> None:
        self.file = file
        self.found: list[Finding] = []
        self.scope: list[str] = []          # enclosing classes and functions
        self.functions = 0                  # how many of them are functions
        self.writes: dict[str, set[str]] = {}   # module-level name -> functions writing it

    def add(self, node: ast.AST, what: str, message: str) -> None:
        self.found.append(Finding(self.file, getattr(node, "lineno", 0), what, message))

    # ---------------------------------------------------------------- imports
    def _import(self, node: ast.AST, module: str) -> bool:
        """Check one imported module; False when it is not allowed."""
        parts = module.split(".")
        for i in range(len(parts), 0, -1):
            prefix = ".".join(parts[:i])
            if prefix in FORBIDDEN:
                self.add(node, module, f"imports {module}: {FORBIDDEN[prefix]}")
                return False
        root = parts[0]
        if root not in sys.stdlib_module_names and root not in THIRD_PARTY \
                and root not in ("protocol", "__future__"):
            self.add(node, module, f"imports {module}, a package DESIGN.md does not "
                     "allow protocol/ (add it there and to THIRD_PARTY if it is pure)")
            return False
        return True

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._import(node, alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level == 0 and node.module and self._import(node, node.module):
            for alias in node.names:   # ``from nacl import utils``
                self._import(node, f"{node.module}.{alias.name}")

    # ---------------------------------------------------------------- calls
    def visit_Call(self, node: ast.Call) -> None:
        where = ".".join(self.scope)
        if isinstance(node.func, ast.Name) and node.func.id in FORBIDDEN_CALLS:
            self.add(node, f"call:{where}", f"calls {node.func.id}() in {where or 'module'}")
        if isinstance(node.func, ast.Attribute) and node.func.attr == "generate" and \
                _name(node.func.value) in KEY_GENERATORS:
            self.add(node, f"call:{where}", f"draws a key from the OS's randomness "
                     f"({_dotted(node.func)}()) in {where or 'module'}")
        if isinstance(node.func, ast.Attribute) and node.func.attr in MUTATORS and \
                isinstance(node.func.value, ast.Name):
            self.writes.setdefault(node.func.value.id, set()).add(where)
        self.generic_visit(node)

    # ---------------------------------------------------------------- state
    def visit_Global(self, node: ast.Global) -> None:
        self.add(node, "global", f"`global {', '.join(node.names)}`: module state "
                 "changed from a function")

    def _binding(self, node: ast.stmt, targets: list[ast.expr], value: ast.expr | None
                 ) -> None:
        at_module = not self.scope
        in_class = bool(self.scope) and self.functions == 0
        if not (at_module or in_class):
            return
        names = [t.id for t in targets if isinstance(t, ast.Name)]
        for t in targets:
            if not isinstance(t, ast.Name) and at_module:
                self.add(node, ast.unparse(t), f"module-level store into {ast.unparse(t)}")
        if names == ["__all__"] and isinstance(value, (ast.List, ast.Tuple)) and all(
                isinstance(e, ast.Constant) and isinstance(e.value, str) for e in value.elts):
            return
        if names == ["__slots__"] and in_class:
            return
        bad = _mutable(value)
        if bad is not None:
            where = "module" if at_module else f"class {'.'.join(self.scope)}"
            what = names[0] if at_module and names else ".".join([*self.scope, *names])
            self.add(node, what, f"{where}-level mutable state: {', '.join(names) or '?'} = "
                     f"{ast.unparse(bad)[:60]}")

    def visit_Assign(self, node: ast.Assign) -> None:
        self._binding(node, node.targets, node.value)
        self._stores(node.targets)
        self.generic_visit(node)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        self._binding(node, [node.target], node.value)
        self._stores([node.target])
        self.generic_visit(node)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        if not self.scope:
            self.add(node, ast.unparse(node.target),
                     f"module-level augmented assignment to {ast.unparse(node.target)}")
        self._stores([node.target])
        self.generic_visit(node)

    def visit_Delete(self, node: ast.Delete) -> None:
        self._stores(node.targets)
        self.generic_visit(node)

    def _stores(self, targets: list[ast.expr]) -> None:
        for t in targets:
            if isinstance(t, ast.Subscript) and isinstance(t.value, ast.Name):
                self.writes.setdefault(t.value.id, set()).add(".".join(self.scope))

    # ---------------------------------------------------------------- scopes
    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        for dec in node.decorator_list:
            target = dec.func if isinstance(dec, ast.Call) else dec
            if _name(target) in CACHES:
                self.add(dec, f"cache:{node.name}", f"@{_dotted(target)} on {node.name}: "
                         "a process-wide cache")
        args = node.args
        for default in [*args.defaults, *(d for d in args.kw_defaults if d is not None)]:
            if _mutable(default) is not None:
                self.add(default, f"default:{node.name}",
                         f"mutable default argument of {node.name}: {ast.unparse(default)}")
        self.scope.append(node.name)
        self.functions += 1
        self.generic_visit(node)
        self.functions -= 1
        self.scope.pop()

    visit_FunctionDef = _function
    visit_AsyncFunctionDef = _function

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self.scope.append(node.name)
        self.generic_visit(node)
        self.scope.pop()


def _check(path: Path) -> _Checker:
    checker = _Checker(path.relative_to(PROTOCOL).as_posix())
    checker.visit(ast.parse(path.read_text(), str(path)))
    return checker


def _static_findings() -> Iterator[Finding]:
    for path in FILES:
        yield from _check(path).found


def _module_names() -> list[str]:
    out = []
    for path in FILES:
        parts = path.relative_to(ROOT).with_suffix("").parts
        out.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return out


MUTABLE_TYPES = (dict, list, set, bytearray, collections.deque, array.array)


def _runtime_findings() -> Iterator[Finding]:
    for name in _module_names():
        module = importlib.import_module(name)
        file = Path(module.__file__ or "").relative_to(PROTOCOL).as_posix()
        for attr, value in vars(module).items():
            if attr.startswith("__") and attr.endswith("__"):
                continue
            if isinstance(value, MUTABLE_TYPES):
                yield Finding(file, 0, attr, f"module global {attr} is a mutable "
                              f"{type(value).__name__} at run time")
            elif isinstance(value, functools._lru_cache_wrapper):
                yield Finding(file, 0, f"cache:{attr}", f"{attr} keeps a process-wide cache")


def _unexplained(findings: list[Finding]) -> list[str]:
    return [str(f) for f in findings if (f.file, f.what) not in ALLOWED]


def test_protocol_is_found() -> None:
    assert len(FILES) > 10 and (PROTOCOL / "_node.py") in FILES


def test_no_io_clock_randomness_or_mutable_module_state() -> None:
    bad = _unexplained(list(_static_findings()))
    assert not bad, "protocol/ must stay sans-IO and stateless:\n" + "\n".join(bad)


def test_no_mutable_module_globals_at_run_time() -> None:
    bad = _unexplained(list(_runtime_findings()))
    assert not bad, "protocol/ must hold no process-wide state:\n" + "\n".join(bad)


def test_every_exception_is_still_needed() -> None:
    seen = {(f.file, f.what) for f in [*_static_findings(), *_runtime_findings()]}
    stale = sorted(set(ALLOWED) - seen)
    assert not stale, f"ALLOWED lists what no longer occurs, remove it: {stale}"


def test_the_codec_registry_is_written_only_by_its_decorators() -> None:
    writes = _check(PROTOCOL / "_codec.py").writes
    registry = {name for (file, name) in ALLOWED if file == "_codec.py"}
    for name in sorted(registry):
        assert writes.get(name), f"{name} is never written: is it still a registry?"
        assert writes[name] <= REGISTRY_WRITERS, (
            f"_codec.{name} written outside the class decorators: {writes[name]}")
    for path in FILES:
        if path.name != "_codec.py":
            text = path.read_text()
            assert not any(name in text for name in registry), (
                f"{path.name} reaches into the codec's registry")


# ---------------------------------------------------------------- the checker itself

@pytest.mark.parametrize(("source", "expected"), [
    ("import time", "a clock"),
    ("from random import Random", "randomness"),
    ("import os.path", "the filesystem"),
    ("from nacl import utils", "randomness"),
    ("def f():\n    import trio", "network I/O"),
    ("from agent import _runtime", "a driver"),
    ("import requests", "does not allow"),
    ("X = {}", "mutable state"),
    ("X: dict[str, int] = dict()", "mutable state"),
    ("X = (1, [2])", "mutable state"),
    ("X = frozenset({1, 2}) | {3}", None),
    ("X = MappingProxyType({'a': []})", "mutable state"),
    ("X = defaultdict(list)", "mutable state"),
    ("X = [i for i in range(3)]", "mutable state"),
    ("class C:\n    seen = set()", "class C-level mutable state"),
    ("X = 1\nX += 1", "augmented assignment"),
    ("Y[1] = 2", "module-level store"),
    ("def f():\n    global X", "global X"),
    ("def f(x=[]):\n    pass", "mutable default"),
    ("@functools.lru_cache(maxsize=None)\ndef f():\n    pass", "process-wide cache"),
    ("def f():\n    print('x')", "calls print()"),
    ("def f():\n    return SigningKey.generate()", "OS's randomness"),
    ("__all__ = ['a', 'b']", None),
    ("X = MappingProxyType({'a': 1})", None),
    ("X = frozenset({'a'})", None),
    ("X = (1, 'a', b'x', None)", None),
    ("def f():\n    seen = {}\n    return seen", None),
    ("@dataclass\nclass C:\n    x: list[int] = field(default_factory=list)", None),
    ("import msgpack\nfrom collections.abc import Mapping\nfrom . import _codec", None),
])
def test_the_checker_catches_what_it_should(source: str, expected: str | None) -> None:
    checker = _Checker("x.py")
    checker.visit(ast.parse(source))
    messages = [f.message for f in checker.found]
    if expected is None:
        assert not messages
    else:
        assert any(expected in m for m in messages), messages
