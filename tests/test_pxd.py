"""Each .pxd declares its classes as their Python source defines them.

A class compiled from ``name.py`` takes its attributes and C methods from
``name.pxd``: an attribute the .pxd lacks is refused by the compiled class
only, and one the source's ``__slots__`` lacks by the pure one only. The
pure-Python twin of a compiled ``_name.pyx`` (``name.py``, as ``rusage.py``
is ``_rusage.pyx``'s) must match its ``_name.pxd`` the same way. The
sources are read with ``ast``, not imported, so that this runs the same in
both builds.
"""

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "pynba"

# Attributes a .pxd declares for what a Python class has without __slots__
# (``__dict__``) or lists in them (``__weakref__``).
SPECIAL_ATTRIBUTES = {"__dict__", "__weakref__"}

_CLASS = re.compile(r"cdef\s+class\s+(\w+)")
# cdef [public|readonly] <type> <name>[, <name>...]: an attribute (no parenthesis)
_ATTRIBUTE = re.compile(
    r"cdef\s+(?:(?:public|readonly)\s+)?[\w.\[\]]+(?:\s+[\w.\[\]]+)*[\s*]+(\w+(?:\s*,\s*\w+)*)$"
)
# cdef/cpdef [inline] [(ctuple)] [type] <name>(...: a function or method
_FUNCTION = re.compile(
    r"c(?:p)?def\s+(?:inline\s+)?(?:\([^()]*\)\s*)?(?:[\w.\[\]*]+\s+)*?\**(\w+)\s*\("
)


@dataclass
class Declared:
    """What a .pxd declares of one ``cdef class``."""

    attributes: set[str] = field(default_factory=set)
    methods: set[str] = field(default_factory=set)


@dataclass
class Declarations:
    """What a .pxd declares: its classes, and its module-level functions."""

    classes: dict[str, Declared] = field(default_factory=dict)
    functions: set[str] = field(default_factory=set)
    #: Lines of a class body this reader does not understand.
    unread: list[str] = field(default_factory=list)


def read_pxd(path: Path) -> Declarations:
    """The classes (attributes, methods) and module-level functions ``path`` declares."""
    declarations = Declarations()
    current = None
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].rstrip()
        if not line.strip():
            continue
        indented = line[0].isspace()
        text = line.strip()
        if not indented:
            current = None
            match = _CLASS.match(text)
            if match:
                current = declarations.classes.setdefault(match.group(1), Declared())
                continue
        if text.startswith(("@", "ctypedef", "cdef struct", "cdef extern", "from ", "cimport")):
            continue
        if current is None:
            if not indented:
                function = _FUNCTION.match(text)
                if function:
                    declarations.functions.add(function.group(1))
            continue
        function = _FUNCTION.match(text)
        if function:
            current.methods.add(function.group(1))
            continue
        if text == "pass":  # a class declaring nothing of its own (a subclass)
            continue
        attribute = _ATTRIBUTE.match(text)
        if attribute:
            current.attributes.update(re.split(r"\s*,\s*", attribute.group(1)))
        else:
            declarations.unread.append(text)
    return declarations


def slots_of(node: ast.ClassDef) -> set[str] | None:
    """The names a class body's ``__slots__`` lists (``=`` and ``+=``), or None without any."""
    slots = None
    for statement in node.body:
        if isinstance(statement, ast.Assign):
            targets, value = statement.targets, statement.value
        elif isinstance(statement, (ast.AugAssign, ast.AnnAssign)):
            targets, value = [statement.target], statement.value
        else:
            continue
        if not any(isinstance(t, ast.Name) and t.id == "__slots__" for t in targets):
            continue
        names = ast.literal_eval(value)
        names = {names} if isinstance(names, str) else set(names)
        if isinstance(statement, ast.AugAssign) and slots is not None:
            names |= slots
        slots = names
    return slots


def assigned_attributes(node: ast.ClassDef) -> set[str]:
    """The ``self.<name>`` a class's methods assign."""
    names = set()
    for sub in ast.walk(node):
        targets = []
        if isinstance(sub, ast.Assign):
            targets = sub.targets
        elif isinstance(sub, (ast.AugAssign, ast.AnnAssign)):
            targets = [sub.target]
        for target in targets:
            for element in ast.walk(target):
                if (
                    isinstance(element, ast.Attribute)
                    and isinstance(element.value, ast.Name)
                    and element.value.id == "self"
                ):
                    names.add(element.attr)
    return names


def functions_of(body: list[ast.stmt]) -> set[str]:
    return {s.name for s in body if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef))}


def python_source(pxd: Path) -> tuple[Path, bool] | None:
    """The Python source a .pxd declares, and whether it is the compiled twin's pure source.

    ``name.pxd`` declares ``name.py``; ``_name.pxd`` beside ``_name.pyx``
    (compiled from its own source) declares, for its classes, the pure
    twin ``name.py``.
    """
    source = pxd.with_suffix(".py")
    if source.exists():
        return source, False
    twin = pxd.with_name(pxd.stem.lstrip("_") + ".py")
    if pxd.stem.startswith("_") and pxd.with_suffix(".pyx").exists() and twin.exists():
        return twin, True
    return None


def mismatches(pxd: Path, source: Path, twin: bool) -> list[str]:
    """How ``pxd`` and ``source`` disagree: one line per difference, none when they agree."""
    declared = read_pxd(pxd)
    tree = ast.parse(source.read_text(encoding="utf-8"))
    classes = {node.name: node for node in ast.walk(tree) if isinstance(node, ast.ClassDef)}
    found = [f"{pxd.name}: cannot read {line!r}" for line in declared.unread]
    for name, cdef in declared.classes.items():
        where = f"{pxd.name}: class {name}"
        node = classes.get(name)
        if node is None:
            found.append(f"{where} is not defined in {source.name}")
            continue
        slots = slots_of(node)
        if slots is None:
            # No __slots__: the pure class takes any attribute, so must the compiled one.
            if "__dict__" not in cdef.attributes:
                found.append(f"{where} has no __slots__ in {source.name}, nor a __dict__ here")
            unset = cdef.attributes - SPECIAL_ATTRIBUTES - assigned_attributes(node)
            if unset:
                found.append(f"{where} declares {sorted(unset)}, never set in {source.name}")
        else:
            if cdef.attributes - slots:
                found.append(f"{where} declares {sorted(cdef.attributes - slots)}, not slots")
            if slots - cdef.attributes:
                found.append(f"{where} lacks the slots {sorted(slots - cdef.attributes)}")
        missing = cdef.methods - functions_of(node.body)
        if missing:
            found.append(f"{where} declares methods {sorted(missing)} not in {source.name}")
    if not twin:  # a twin's functions are the .pyx's own, checked by Cython
        missing = declared.functions - functions_of(tree.body)
        if missing:
            found.append(f"{pxd.name} declares functions {sorted(missing)} not in {source.name}")
    return found


PAIRS = [(pxd, *pair) for pxd in sorted(PACKAGE.rglob("*.pxd")) if (pair := python_source(pxd))]


def test_the_pxd_files_are_found():
    checked = {pxd.name for pxd, _, _ in PAIRS}
    assert {"reporter.pxd", "_rusage.pxd"} <= checked


@pytest.mark.parametrize(
    ("pxd", "source", "twin"), PAIRS, ids=[str(p.relative_to(PACKAGE)) for p, _, _ in PAIRS]
)
def test_pxd_declares_its_classes_as_the_source_defines_them(pxd, source, twin):
    assert mismatches(pxd, source, twin) == []


def test_the_reader_finds_every_kind_of_declaration(tmp_path):
    pxd = tmp_path / "example.pxd"
    pxd.write_text(
        "cimport cython\n"
        "cdef bint _FLAG\n"
        "cdef class Point:\n"
        "    cdef dict __dict__  # a comment\n"
        "    cdef public double x, y\n"
        "    cdef readonly unsigned long long count\n"
        "    cdef object _private\n"
        "    cdef public rusage.ThreadCPU cpu\n"
        "    cdef void _advance(self, double user) noexcept\n"
        "    cpdef (double, double) begin(self) except *\n"
        "    @cython.locals(n=Py_ssize_t)\n"
        "    cpdef tuple hand_over(self)\n"
        "    cdef (double, double) pair\n"
        "\n"
        "cpdef Point new_point(x, y=*)\n"
        "cdef _flatten(name, list out)\n"
    )
    declared = read_pxd(pxd)
    assert declared.classes["Point"].attributes == {
        "__dict__",
        "x",
        "y",
        "count",
        "_private",
        "cpu",
    }
    assert declared.classes["Point"].methods == {"_advance", "begin", "hand_over"}
    assert declared.functions == {"new_point", "_flatten"}
    assert declared.unread == ["cdef (double, double) pair"]
