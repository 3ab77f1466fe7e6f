"""Every boundary where untyped data (TOML, JSON) becomes attrs values, and back.

This is the only module that imports cattrs, so the rules for turning outside
data into our values live in one place and are the same for the config file,
webhook replies and REST bodies:

- Primitive types are strict. cattrs would happily turn ``"10"`` into ``10`` and
  ``"false"`` into ``True``; a PBX config that silently means the opposite of
  what it says is worse than one that refuses to start.
- Unknown keys are errors (RustPBX ignores typos; we name them), except where a
  caller explicitly asks for leniency (replies from servers we do not control).
- Every error carries the path of the bad key, in the form users see in their
  files: ``proxy.routes[2].match``, ``proxy.trunks.carrier1.max_calls``.

Classes opt into a few behaviours through ``attrs.field(metadata=...)`` so that
the modules defining them need not import cattrs: :data:`KEY` renames the
external key (``from`` for a ``from_`` attribute, camelCase for CDRs),
:data:`ONE_OR_MANY` accepts a bare value where a list is expected, and
:data:`OMIT_IF_DEFAULT` leaves a field out of the JSON output when it has its
default value. Tagged unions (a ``type`` or ``action`` key that selects the
class) are registered with :func:`register_tagged_union`.
"""

from __future__ import annotations

import collections.abc
import datetime as _dt
import typing
from collections.abc import Callable, Mapping
from typing import Any, Literal, TypeVar

import attrs
from cattrs import Converter
from cattrs.errors import (
    BaseValidationError,
    ClassValidationError,
    ForbiddenExtraKeysError,
    IterableValidationError,
    IterableValidationNote,
)
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override

from sdpbx.errors import ConfigError, PayloadError

__all__ = [
    "CHECK",
    "KEY",
    "OMIT_IF_DEFAULT",
    "ONE_OR_MANY",
    "register_tagged_union",
    "structure_config",
    "structure_json",
    "unstructure_config",
    "unstructure_json",
]

T = TypeVar("T")

KEY = "sdpbx.key"
"""Field metadata: the external (TOML/JSON) key when it differs from the attribute name."""

ONE_OR_MANY = "sdpbx.one_or_many"
"""Field metadata: a ``tuple[X, ...]`` field that also accepts a single ``X``."""

OMIT_IF_DEFAULT = "sdpbx.omit_if_default"
"""Field metadata: leave the field out of unstructured output when it equals its default."""

CHECK = "sdpbx.check"
"""Field metadata: ``check(value) -> [(relative_path, message), ...]``, run right after the
field is structured, so that a bad value is reported even when a sibling field (or
a nested table) is broken too and the class itself can never be built."""

CROSS_CHECK = "_sdpbx_cross_check"
"""Class attribute: ``cls._sdpbx_cross_check(values) -> [(relative_path, message), ...]``,
the class's rules that relate several keys, called with the keys that were read
(by attribute name) when other keys of the same table are broken. Without it a
file with a bad port would hide, until fixed, that a route names a missing trunk."""

_Hook = Callable[[Any, Any], Any]
_Errors = list[tuple[str, str]]


class _Mismatch(TypeError):
    """A value of the wrong kind; its text is the whole user-facing message."""


class _Broken:
    """Stands for a value that could not be read (see ``salvage``)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<broken>"


_BROKEN: Any = _Broken()


def _try(hook: Callable[[Any, Any], Any], raw: object, t: object) -> object:
    """``hook(raw, t)``, or :data:`_BROKEN` if it fails in any way (an error path:
    the failure is already reported by the first, strict pass)."""
    try:
        return hook(raw, t)
    except Exception:
        return _BROKEN


class _Invalid(ValueError):
    """A field's :data:`CHECK` found problems (paths relative to the field)."""

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        super().__init__(errors)
        self.errors = errors


class _KeyProblem(ValueError):
    """A problem with one key of a mapping that has no attrs field of its own."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key
        self.message = message


# -- paths -------------------------------------------------------------------------------------


def _join(path: str, rel: str) -> str:
    if not rel:
        return path
    if not path:
        return rel
    if rel.startswith("["):
        return path + rel
    return f"{path}.{rel}"


def _external_name(cl: type, name: str) -> str:
    if attrs.has(cl):
        field = attrs.fields_dict(cl).get(name)
        if field is not None:
            return str(field.metadata.get(KEY, name))
    return name


def _collect(exc: BaseException, path: str, out: _Errors) -> None:
    """Flatten a cattrs exception tree into ``(path, message)`` pairs.

    Like ``cattrs.transform_error`` but with the path syntax of our docs (dict keys
    as ``.key``, external key names) and messages that speak TOML, not Python.
    """
    if isinstance(exc, IterableValidationError):
        with_notes, without = exc.group_exceptions()
        for sub, note in with_notes:
            index = note.index
            sub_path = f"{path}[{index}]" if isinstance(index, int) else _join(path, str(index))
            _collect(sub, sub_path, out)
        for sub in without:
            _collect(sub, path, out)
    elif isinstance(exc, ClassValidationError):
        notes, others = exc.group_exceptions()
        for sub, attr_note in notes:
            _collect(sub, _join(path, _external_name(exc.cl, attr_note.name)), out)
        for sub in others:
            _collect(sub, path, out)
    elif isinstance(exc, ForbiddenExtraKeysError):
        for key in sorted(exc.extra_fields):
            out.append((_join(path, key), "unknown key"))
    elif isinstance(exc, (ConfigError, PayloadError, _Invalid)):
        # Raised by a class's own validation (``__attrs_post_init__``) with paths
        # relative to that class.
        for rel, message in exc.errors:
            out.append((_join(path, rel), message))
    elif isinstance(exc, _KeyProblem):
        out.append((_join(path, exc.key), exc.message))
    elif isinstance(exc, _Mismatch):
        out.append((path, str(exc)))
    elif isinstance(exc, KeyError):
        out.append((path, "missing required key"))
    else:
        out.append((path, f"invalid value ({exc})"))


def _errors_of(exc: BaseException) -> _Errors:
    out: _Errors = []
    _collect(exc, "", out)
    return [(path or "<root>", message) for path, message in out]


_STRUCTURE_ERRORS = (
    BaseValidationError,
    _Mismatch,
    _KeyProblem,
    KeyError,
    ConfigError,
    PayloadError,
    _Invalid,
)


# -- converters --------------------------------------------------------------------------------


def _is_seq(t: Any) -> bool:
    origin = typing.get_origin(t)
    if origin in (list, collections.abc.Sequence):
        return True
    if origin is tuple:
        args = typing.get_args(t)
        return len(args) == 2 and args[1] is Ellipsis
    return False


def _is_mapping(t: Any) -> bool:
    return typing.get_origin(t) in (dict, collections.abc.Mapping)


def _is_literal(t: Any) -> bool:
    return typing.get_origin(t) is Literal


def _is_datetime(t: Any) -> bool:
    return t is _dt.datetime


def _type_name(value: object) -> str:
    return type(value).__name__


class _Dialect:
    """The words a converter uses in messages: TOML says table/array, JSON object/array."""

    def __init__(self, table: str, array: str) -> None:
        self.table = table
        self.array = array


def _make_converter(*, forbid_extra_keys: bool, dialect: _Dialect) -> Converter:
    conv = Converter(
        detailed_validation=True,
        forbid_extra_keys=forbid_extra_keys,
        unstruct_collection_overrides={
            collections.abc.Sequence: list,
            collections.abc.MutableSequence: list,
            tuple: list,
        },
    )

    def structure_str(value: object, _: object) -> str:
        if isinstance(value, str):
            return value
        raise _Mismatch("expected a string")

    def structure_int(value: object, _: object) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _Mismatch("expected an integer")

    def structure_float(value: object, _: object) -> float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise _Mismatch("expected a number")

    def structure_bool(value: object, _: object) -> bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch("expected a boolean (true or false)")

    conv.register_structure_hook(str, structure_str)
    conv.register_structure_hook(int, structure_int)
    conv.register_structure_hook(float, structure_float)
    conv.register_structure_hook(bool, structure_bool)

    def structure_datetime(value: object, _: object) -> _dt.datetime:
        if isinstance(value, _dt.datetime):  # TOML has native datetimes
            return value
        if isinstance(value, str):
            try:
                return _dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                pass
        raise _Mismatch("expected an RFC 3339 date-time")

    def unstructure_datetime(value: _dt.datetime) -> str:
        text = value.isoformat()
        return text[:-6] + "Z" if text.endswith("+00:00") else text

    conv.register_structure_hook_factory(_is_datetime, lambda _: structure_datetime)
    conv.register_unstructure_hook(_dt.datetime, unstructure_datetime)

    def literal_factory(t: Any) -> _Hook:
        choices = typing.get_args(t)
        listing = ", ".join(repr(c) for c in choices)

        def structure_literal(value: object, _: object) -> object:
            for choice in choices:
                if type(value) is type(choice) and value == choice:
                    return choice
            raise _Mismatch(f"expected one of {listing}, got {value!r}")

        return structure_literal

    conv.register_structure_hook_factory(_is_literal, literal_factory)

    def seq_factory(t: Any) -> _Hook:
        item_type = typing.get_args(t)[0]
        as_tuple = typing.get_origin(t) is not list
        item_hook = conv.get_structure_hook(item_type)

        def structure_seq(value: object, _: object) -> object:
            if not isinstance(value, (list, tuple)):
                raise _Mismatch(f"expected {dialect.array}, got {_type_name(value)}")
            items: list[object] = []
            errors: list[Exception] = []
            for index, item in enumerate(value):
                try:
                    items.append(item_hook(item, item_type))
                except Exception as exc:
                    exc.__notes__ = [
                        *getattr(exc, "__notes__", []),
                        IterableValidationNote(f"@ index {index}", index, item_type),
                    ]
                    errors.append(exc)
            if errors:
                raise IterableValidationError(f"While structuring {t!r}", errors, t)
            return tuple(items) if as_tuple else items

        return structure_seq

    conv.register_structure_hook_factory(_is_seq, seq_factory)

    def mapping_factory(t: Any) -> _Hook:
        args = typing.get_args(t)
        value_type = args[1] if len(args) == 2 else Any
        value_hook = conv.get_structure_hook(value_type)

        def structure_mapping(value: object, _: object) -> dict[str, object]:
            if not isinstance(value, Mapping):
                raise _Mismatch(f"expected {dialect.table}, got {_type_name(value)}")
            out: dict[str, object] = {}
            errors: list[Exception] = []
            for key, item in value.items():
                try:
                    if not isinstance(key, str):
                        raise _Mismatch("keys must be strings")
                    out[key] = value_hook(item, value_type)
                except Exception as exc:
                    exc.__notes__ = [
                        *getattr(exc, "__notes__", []),
                        IterableValidationNote(f"@ key {key!r}", str(key), value_type),
                    ]
                    errors.append(exc)
            if errors:
                raise IterableValidationError(f"While structuring {t!r}", errors, t)
            return out

        return structure_mapping

    conv.register_structure_hook_factory(_is_mapping, mapping_factory)

    def one_or_many_hook(t: Any) -> _Hook:
        seq_hook = conv.get_structure_hook(t)

        def structure_one_or_many(value: object, _: object) -> object:
            if not isinstance(value, (list, tuple)):
                value = [value]
            return seq_hook(value, t)

        return structure_one_or_many

    def checked_hook(base: _Hook, check: Callable[[Any], _Errors]) -> _Hook:
        def structure_checked(value: object, target: object) -> object:
            result = base(value, target)
            problems = check(result)
            if problems:
                raise _Invalid(problems)
            return result

        return structure_checked

    def salvage_entries(t: Any, raw: object) -> object:
        """A broken array or table, entry by entry: what reads, and :data:`_BROKEN`
        in place of what does not (keeping indexes and names for cross-key rules)."""
        args = typing.get_args(t)
        if _is_mapping(t) and isinstance(raw, Mapping) and len(args) == 2:
            value_hook = conv.get_structure_hook(args[1])
            return {k: _try(value_hook, v, args[1]) for k, v in raw.items()}
        if _is_seq(t) and isinstance(raw, (list, tuple)) and args:
            item_hook = conv.get_structure_hook(args[0])
            return tuple(_try(item_hook, item, args[0]) for item in raw)
        return _BROKEN

    def attrs_structure_factory(cl: Any) -> _Hook:
        attrs.resolve_types(cl)
        overrides: dict[str, Any] = {}
        allowed: set[str] = set()
        readers: list[tuple[attrs.Attribute[Any], str, _Hook]] = []
        for field in attrs.fields(cl):
            kwargs: dict[str, Any] = {}
            if KEY in field.metadata:
                kwargs["rename"] = field.metadata[KEY]
            if field.metadata.get(ONE_OR_MANY):
                kwargs["struct_hook"] = one_or_many_hook(field.type)
            if CHECK in field.metadata:
                base = kwargs.get("struct_hook") or conv.get_structure_hook(field.type)
                kwargs["struct_hook"] = checked_hook(base, field.metadata[CHECK])
            if kwargs:
                overrides[field.name] = override(**kwargs)
            key = str(field.metadata.get(KEY, field.name))
            allowed.add(key)
            readers.append(
                (field, key, kwargs.get("struct_hook") or conv.get_structure_hook(field.type))
            )
        # Extra keys are checked here rather than by cattrs so that a typo does not
        # hide the other problems of the same table: cattrs gives up before the
        # class's own validation runs, we build the class without the stray keys.
        inner = make_dict_structure_fn(cl, conv, _cattrs_forbid_extra_keys=False, **overrides)
        cross_check = getattr(cl, CROSS_CHECK, None)

        def salvage(value: Mapping[str, object]) -> dict[str, object]:
            """The fields that read on their own (defaults for absent ones)."""
            out: dict[str, object] = {}
            for field, key, hook in readers:
                if key not in value:
                    default: Any = field.default
                    if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
                        if not default.takes_self:
                            out[field.name] = default.factory()
                    elif default is not attrs.NOTHING:
                        out[field.name] = default
                    continue
                read = _try(hook, value[key], field.type)
                if read is _BROKEN:
                    read = salvage_entries(field.type, value[key])
                if read is not _BROKEN:
                    out[field.name] = read
            return out

        def structure_attrs(value: object, target: object) -> object:
            if not isinstance(value, Mapping):
                raise _Mismatch(f"expected {dialect.table}, got {_type_name(value)}")
            extra = set(value) - allowed if forbid_extra_keys else set()
            known = {k: v for k, v in value.items() if k in allowed} if extra else value
            problems: list[Exception] = []
            if extra:
                problems.append(ForbiddenExtraKeysError("", cl, extra))
            try:
                built = inner(known, target)
            except ClassValidationError as exc:
                problems[:0] = exc.exceptions
                # A ConfigError inside means every key read and the class's own
                # validation refused it: its rules have run. Otherwise some keys
                # are broken, and the rules relating the others run now.
                validated = any(isinstance(e, (ConfigError, PayloadError)) for e in problems)
                if cross_check is not None and not validated:
                    found = cross_check(salvage(known))
                    if found:
                        problems.append(_Invalid(found))
                raise ClassValidationError(exc.message, problems, cl) from None
            except (ConfigError, PayloadError) as exc:
                # The class's own validation refused it (its cross-key rules).
                if not problems:
                    raise
                problems.insert(0, exc)
            if problems:
                raise ClassValidationError(f"While structuring {cl.__name__}", problems, cl)
            return built

        return structure_attrs

    conv.register_structure_hook_factory(attrs.has, attrs_structure_factory)

    def attrs_unstructure_factory(cl: Any) -> Callable[[Any], Any]:
        overrides: dict[str, Any] = {}
        for field in attrs.fields(cl):
            kwargs: dict[str, Any] = {}
            if KEY in field.metadata:
                kwargs["rename"] = field.metadata[KEY]
            if field.metadata.get(OMIT_IF_DEFAULT):
                kwargs["omit_if_default"] = True
            if kwargs:
                overrides[field.name] = override(**kwargs)
        return make_dict_unstructure_fn(cl, conv, **overrides)

    conv.register_unstructure_hook_factory(attrs.has, attrs_unstructure_factory)
    return conv


_TOML = _make_converter(forbid_extra_keys=True, dialect=_Dialect("a table", "an array"))
_JSON = _make_converter(forbid_extra_keys=True, dialect=_Dialect("an object", "an array"))
_JSON_LENIENT = _make_converter(forbid_extra_keys=False, dialect=_Dialect("an object", "an array"))
_ALL = (_TOML, _JSON, _JSON_LENIENT)


def register_tagged_union(union: object, key: str, tags: Mapping[str, type]) -> None:
    """Make ``union`` (de)serialisable with ``key`` naming the member class.

    ``tags`` maps each tag value (``"memory"``, ``"hangup"``) to its class. The
    tag is removed before the member class sees the data, and added back when
    unstructuring, so member classes need no field for it. Must be called before
    the first (un)structure of a class that contains the union, since cattrs
    caches the hooks it generates.
    """
    listing = ", ".join(tags)
    for conv in _ALL:
        hooks = {tag: conv.get_structure_hook(cl) for tag, cl in tags.items()}

        def structure_union(
            value: object,
            _: object,
            hooks: Mapping[str, _Hook] = hooks,
            conv: Converter = conv,
        ) -> object:
            if not isinstance(value, Mapping):
                word = "a table" if conv is _TOML else "an object"
                raise _Mismatch(f"expected {word}, got {_type_name(value)}")
            if key not in value:
                raise _KeyProblem(key, f"missing required key (one of: {listing})")
            tag = value[key]
            hook = hooks.get(tag) if isinstance(tag, str) else None
            if hook is None:
                raise _KeyProblem(key, f"unknown {key} {tag!r} (expected one of: {listing})")
            rest = {k: v for k, v in value.items() if k != key}
            return hook(rest, tags[tag])

        def structure_optional(
            value: object, target: object, structure_union: _Hook = structure_union
        ) -> object:
            return None if value is None else structure_union(value, target)

        conv.register_structure_hook(union, structure_union)
        # ``X | None`` flattens into a new, bigger union that cattrs would not
        # recognise as ours, so it needs its own hook.
        conv.register_structure_hook(typing.Optional[union], structure_optional)  # noqa: UP045
        for tag, cl in tags.items():
            base = conv.get_unstructure_hook(cl)

            def unstructure_member(
                obj: object, base: Callable[[Any], Any] = base, tag: str = tag
            ) -> object:
                return {key: tag, **base(obj)}

            conv.register_unstructure_hook(cl, unstructure_member)


def structure_config(data: object, cls: type[T]) -> T:
    """Build config values from parsed TOML; raise :class:`ConfigError` naming every bad key."""
    try:
        return _TOML.structure(data, cls)
    except _STRUCTURE_ERRORS as exc:
        raise ConfigError(_errors_of(exc)) from None


def unstructure_config(obj: object) -> object:
    """Turn config values back into plain data (``None`` values included)."""
    return _TOML.unstructure(obj)


def structure_json(data: object, cls: type[T], *, strict: bool = True) -> T:
    """Build a value from decoded JSON; raise :class:`PayloadError` naming every bad field.

    ``strict=False`` ignores unknown keys: replies from servers we do not control
    (webhooks) may carry fields that a newer or foreign implementation added.
    """
    conv = _JSON if strict else _JSON_LENIENT
    try:
        return conv.structure(data, cls)
    except _STRUCTURE_ERRORS as exc:
        raise PayloadError(_errors_of(exc)) from None


def unstructure_json(obj: object) -> object:
    """Turn a value into JSON-ready data (dicts, lists, str, numbers, bool, None)."""
    return _JSON.unstructure(obj)
