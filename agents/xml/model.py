"""Declarative XML elements: one declaration per XML fact, one generic render and parse.

An `Element` subclass names its tag and declares each fact it knows as a typed field whose
default is a marker saying where the fact lives relative to the element:

    class Disk(Element, tag="disk"):
        bus: str = Attr("target/@bus")           # attribute of a (created on demand) <target>
        readonly: bool = Flag("readonly")        # empty <readonly/> present when True
        boot_order: int | None = Attr("boot/@order", default=None)
        address: DriveAddress | PciAddress | None = Child(default=None)

The subclass becomes a keyword-only dataclass. `render()` walks the declarations in order,
so declaration order is document order; `parse()` reads the same declarations back, so the
two directions cannot drift apart. ElementTree does all escaping; there is no string XML.

A subclass without `tag=` is an abstract base: its declarations are shared by every subclass
and written after the subclass's own (the domain's `Device` declares `<boot>`, `<alias>` and
`<address>` once for every device).

Path grammar (deliberately tiny): `a/b/@c` is attribute `c` of sub-element `a/b`, `@c` an
attribute of the element itself, `a/b` the text of sub-element `a/b`, and `.` the element's
own text. Sub-elements named by several declarations are shared (the first declaration
decides their position). A sub-element with only `None` values is not written.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
import xml.etree.ElementTree as ET
from typing import Any, ClassVar, Literal, Self

_MISSING: Any = dataclasses.MISSING


class _Decl:
    """Base of the field markers; `path` is relative to the declaring element."""

    def __init__(self, path: str | None, default: Any = _MISSING, factory: Any = _MISSING) -> None:
        self.path = path
        self.default = default
        self.factory = factory
        self.name = ""


class Attr(_Decl):
    """A scalar stored in an attribute (`.../@name`) or an element's text (no `@`).

    `true`/`false` spell booleans (`yes`/`no` by default, `on`/`off` where libvirt wants it).
    """

    def __init__(self, path: str, default: Any = _MISSING, true: str = "yes", false: str = "no") -> None:
        super().__init__(path, default)
        self.true = true
        self.false = false


class Flag(_Decl):
    """A boolean told by the presence of an empty element (`<readonly/>`, `<acpi/>`)."""

    def __init__(self, path: str, default: bool = False) -> None:
        super().__init__(path, default)


class Child(_Decl):
    """One nested Element (or None); `path` optionally names a wrapper element."""

    def __init__(self, path: str | None = None, default: Any = _MISSING) -> None:
        super().__init__(path, default)


class Children(_Decl):
    """A list of nested Elements, kept in order; `path` optionally names a wrapper element."""

    def __init__(self, path: str | None = None) -> None:
        super().__init__(path, factory=list)


class Element:
    """Base of every declared element. Subclasses pass `tag=` (and `match=` to tell apart
    elements sharing a tag by fixed attributes, e.g. `<address type='pci'>`)."""

    TAG: ClassVar[str]
    MATCH: ClassVar[dict[str, str]] = {}
    _own: ClassVar[tuple[_Decl, ...]] = ()  # declared by concrete classes, in order
    _tail: ClassVar[tuple[_Decl, ...]] = ()  # declared by abstract bases, written last
    _decls: ClassVar[tuple[_Decl, ...]] = ()  # render and parse order: _own, then _tail
    _hints: ClassVar[dict[str, Any] | None] = None

    def __init_subclass__(cls, tag: str | None = None, match: dict[str, str] | None = None, **kw: Any) -> None:
        """`tag=None` declares an abstract base (e.g. the sub-elements every device shares):
        its declarations follow each subclass's own, and it is never rendered itself."""
        super().__init_subclass__(**kw)
        if tag is not None:
            cls.TAG = tag
        cls.MATCH = dict(match or {})
        decls: list[_Decl] = []
        for name in inspect.get_annotations(cls):
            marker = cls.__dict__.get(name)
            if not isinstance(marker, _Decl):
                raise TypeError(f"{cls.__name__}.{name}: declare it with Attr/Flag/Child/Children")
            marker.name = name
            decls.append(marker)
            setattr(cls, name, dataclasses.field(default=marker.default, default_factory=marker.factory))
        for decl in decls:
            if any(d.name == decl.name for d in cls._decls):
                raise TypeError(f"{cls.__name__}.{decl.name}: already declared by a base")
        for key in cls.MATCH:
            if any(isinstance(d, Attr) and d.path == f"@{key}" for d in decls):
                raise TypeError(f"{cls.__name__}: @{key} is fixed by match= and declared again")
        if tag is None:
            cls._tail = (*cls._tail, *decls)
        else:
            cls._own = (*cls._own, *decls)
        cls._decls = (*cls._own, *cls._tail)
        cls._hints = None
        dataclasses.dataclass(kw_only=True)(cls)

    # -- type information -------------------------------------------------------------------

    @classmethod
    def _hint(cls, name: str) -> Any:
        if cls._hints is None:
            # Resolved lazily: annotations may name element classes declared further down.
            cls._hints = typing.get_type_hints(cls)
        return cls._hints[name]

    @classmethod
    def _element_types(cls, decl: _Decl) -> list[type[Element]]:
        hint = cls._hint(decl.name)
        if typing.get_origin(hint) is list:
            (hint,) = typing.get_args(hint)
        return [t for t in _union_members(hint) if isinstance(t, type) and issubclass(t, Element)]

    @classmethod
    def _scalar_type(cls, decl: _Decl) -> type:
        members = [t for t in _union_members(cls._hint(decl.name)) if t is not type(None)]
        if len(members) == 1 and typing.get_origin(members[0]) is Literal:
            return str
        return members[0] if len(members) == 1 and isinstance(members[0], type) else str

    # -- render -----------------------------------------------------------------------------

    def render(self) -> ET.Element:
        node = ET.Element(self.TAG, dict(self.MATCH))
        made: dict[str, ET.Element] = {}
        for decl in self._decls:
            value = getattr(self, decl.name)
            if isinstance(decl, Attr):
                if value is None:
                    continue
                target, attr = _split(decl.path or ".")
                text = _format(value, decl)
                where = _ensure(node, made, target)
                if attr is None:
                    where.text = text
                else:
                    where.set(attr, text)
            elif isinstance(decl, Flag):
                if value:
                    _ensure(node, made, decl.path or ".")
            elif isinstance(decl, Child):
                if value is not None:
                    _ensure(node, made, decl.path or ".").append(value.render())
            elif isinstance(decl, Children) and value:
                where = _ensure(node, made, decl.path or ".")
                where.extend(child.render() for child in value)
        return node

    def to_xml(self) -> str:
        root = self.render()
        ET.indent(root)
        return ET.tostring(root, encoding="unicode")

    # -- parse ------------------------------------------------------------------------------

    @classmethod
    def matches(cls, node: ET.Element) -> bool:
        return node.tag == cls.TAG and all(node.get(k) == v for k, v in cls.MATCH.items())

    @classmethod
    def parse(cls, node: ET.Element) -> Self:
        values: dict[str, Any] = {}
        for decl in cls._decls:
            if isinstance(decl, Attr):
                target, attr = _split(decl.path or ".")
                where = node if target == "." else node.find(target)
                raw = None if where is None else (where.text if attr is None else where.get(attr))
                if raw is not None:
                    values[decl.name] = _convert(raw.strip(), cls._scalar_type(decl), decl)
            elif isinstance(decl, Flag):
                values[decl.name] = node.find(decl.path or ".") is not None
            else:
                where = node if decl.path is None else node.find(decl.path)
                kinds = cls._element_types(decl)
                found = [] if where is None else [
                    kind.parse(sub) for sub in where for kind in kinds if kind.matches(sub)
                ]
                if isinstance(decl, Child):
                    if found:
                        values[decl.name] = found[0]
                    elif decl.default is not _MISSING:
                        values[decl.name] = decl.default
                else:
                    values[decl.name] = found
        return cls(**values)

    @classmethod
    def from_xml(cls, text: str) -> Self:
        return cls.parse(ET.fromstring(text))


def _union_members(hint: Any) -> tuple[Any, ...]:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,)


def _split(path: str) -> tuple[str, str | None]:
    """`a/b/@c` → (`a/b`, `c`); `@c` → (`.`, `c`); `a/b` → (`a/b`, None)."""
    head, _, last = path.rpartition("/")
    if last.startswith("@"):
        return head or ".", last[1:]
    return path, None


def _ensure(node: ET.Element, made: dict[str, ET.Element], path: str) -> ET.Element:
    """The sub-element at `path`, created (once per render) on first use."""
    if path == ".":
        return node
    if path not in made:
        head, _, tag = path.rpartition("/")
        parent = _ensure(node, made, head) if head else node
        made[path] = ET.SubElement(parent, tag)
    return made[path]


def _format(value: Any, decl: Attr) -> str:
    if isinstance(value, bool):
        return decl.true if value else decl.false
    return str(value)


def _convert(raw: str, kind: type, decl: Attr) -> Any:
    if kind is bool:
        if raw not in (decl.true, decl.false):
            raise ValueError(f"{decl.name}: expected {decl.true!r} or {decl.false!r}, got {raw!r}")
        return raw == decl.true
    if kind is int:
        return int(raw, 0)
    return raw
