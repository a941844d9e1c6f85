"""Does a plain value (from a config or an encoder file's JSON) fit a parameter's type annotation?

Used to check config nodes against the signature of what they build, and encoder-file options
against the signature of their architecture's builder, before anything is built. Values are
plain: None, bool, int, float, str, lists and dicts. An annotation this cannot judge (a
callable, a type variable, a protocol) accepts any value; a class that a plain value can never
be (a Tensor, a Callback) accepts none.
"""

from __future__ import annotations

import collections.abc as abc
import inspect
import types
import typing
from collections.abc import Callable
from typing import Any, Literal, Union, get_args, get_origin

_SEQUENCES = (list, tuple, abc.Sequence, abc.MutableSequence, abc.Iterable, abc.Collection)
_MAPPINGS = (dict, abc.Mapping, abc.MutableMapping)


def fits(value: Any, annotation: Any) -> bool:
    """Whether ``value`` is acceptable for a parameter annotated ``annotation``."""
    if annotation is Any or annotation is inspect.Parameter.empty:
        return True
    if annotation is None or annotation is type(None):
        return value is None
    origin = get_origin(annotation)
    args = get_args(annotation)
    if origin is Union or origin is types.UnionType:
        return any(fits(value, a) for a in args)
    if origin is Literal:
        # 32 and "32" are different choices: compare the type too.
        return any(value == a and type(value) is type(a) for a in args)
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if origin in _SEQUENCES or annotation in _SEQUENCES:
        if not isinstance(value, list | tuple):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(fits(v, a) for v, a in zip(value, args, strict=True))
        return all(fits(v, args[0]) for v in value) if args else True
    if origin in _MAPPINGS or annotation in _MAPPINGS:
        if not isinstance(value, dict):
            return False
        return all(fits(v, args[1]) for v in value.values()) if len(args) == 2 else True
    if origin is None and isinstance(annotation, type):
        return isinstance(value, annotation)
    return True


def describe(annotation: Any) -> str:
    """A short human name for an annotation: 'int', 'float or None', 'list of int', 'one of [...]'."""
    if annotation is None or annotation is type(None):
        return "None"
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Union or origin is types.UnionType:
        return " or ".join(dict.fromkeys(describe(a) for a in args))
    if origin is Literal:
        return f"one of {list(args)}"
    if origin in _SEQUENCES or annotation in _SEQUENCES:
        item = describe(args[0]) if args else ""
        return f"list of ({item})" if " or " in item else f"list of {item}" if item else "list"
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def parameter_types(fn: Callable[..., Any]) -> dict[str, inspect.Parameter]:
    """The parameters of ``fn`` (a class: its constructor) with annotations resolved where possible."""
    signature = inspect.signature(fn)
    target = fn.__init__ if isinstance(fn, type) else fn
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # noqa: BLE001 - a forward reference we cannot resolve: judge what we can
        hints = {}
    return {
        name: p.replace(annotation=hints.get(name, Any if isinstance(p.annotation, str) else p.annotation))
        for name, p in signature.parameters.items()
    }
