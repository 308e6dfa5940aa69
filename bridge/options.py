"""Options declared once: a default, its documentation and its bounds, on a
dataclass field; read from a TOML file (:mod:`bridge.sensor.config`) and, where
a field names a command-line flag, from the command line (:func:`add_arguments`,
:func:`from_arguments`).  Both check values with :func:`check`, so a value the
configuration file refuses is refused on the command line too."""

from __future__ import annotations

import argparse
from dataclasses import MISSING, Field, field, fields
from typing import Any, TypeVar

T = TypeVar("T")


def option(default: Any, doc: str, *, choices: tuple[Any, ...] = (), low: float | None = None,
           high: float | None = None, flag: str | None = None, metavar: str | None = None,
           negate: str | None = None, negate_doc: str | None = None) -> Any:
    """A documented option.  ``flag``: its command-line flag (``--key-wait``);
    ``negate``: for a boolean that defaults to true, the flag that turns it off
    (``negate_doc`` its help)."""
    metadata = {"doc": doc, "choices": choices, "low": low, "high": high, "flag": flag, "metavar": metavar,
                "negate": negate, "negate_doc": negate_doc}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def default_of(spec: Field) -> Any:
    return spec.default_factory() if spec.default is MISSING else spec.default  # type: ignore[misc]


def check(spec: Field, value: Any) -> tuple[Any, str | None]:
    """(the value converted, or an error message) for an option's declared type and bounds."""
    default = default_of(spec)
    meta = spec.metadata
    if isinstance(default, bool):
        if not isinstance(value, bool):
            return value, f"expected true or false, got {value!r}"
    elif isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            return value, f"expected an integer{describe_range(meta)}, got {value!r}"
    elif isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return value, f"expected a number{describe_range(meta)}, got {value!r}"
        value = float(value)
    elif isinstance(default, str):
        if not isinstance(value, str):
            return value, f"expected a string, got {value!r}"
    elif isinstance(default, list):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            return value, f"expected a list of strings, got {value!r}"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if (meta["low"] is not None and value < meta["low"]) or (meta["high"] is not None and value > meta["high"]):
            return value, f"expected a value{describe_range(meta)}, got {value!r}"
    if meta["choices"] and value not in meta["choices"]:
        return value, f"expected one of {', '.join(map(str, meta['choices']))}, got {value!r}"
    return value, None


def describe_range(meta: Any) -> str:
    if meta["low"] is not None and meta["high"] is not None:
        return f" from {meta['low']:g} to {meta['high']:g}"
    if meta["low"] is not None:
        return f" of at least {meta['low']:g}"
    return ""


def _argument_type(spec: Field):  # type: ignore[no-untyped-def]
    default = default_of(spec)
    kind = int if isinstance(default, int) and not isinstance(default, bool) else float

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}")
        value, error = check(spec, value)
        if error:
            raise argparse.ArgumentTypeError(error)
        return value

    return parse


def add_arguments(parser: argparse.ArgumentParser | Any, cls: type) -> None:
    """A flag for each option of ``cls`` that names one (defaults from the declaration)."""
    for spec in fields(cls):
        meta = spec.metadata
        default = default_of(spec)
        if isinstance(default, bool):
            if meta.get("negate"):
                parser.add_argument(meta["negate"], dest=f"opt_{spec.name}", action="store_false", default=default,
                                    help=meta.get("negate_doc") or f"the opposite of: {meta['doc']}")
            elif meta.get("flag"):
                parser.add_argument(meta["flag"], dest=f"opt_{spec.name}", action="store_true", default=default,
                                    help=meta["doc"])
            continue
        if not meta.get("flag"):
            continue
        if isinstance(default, str):
            parser.add_argument(meta["flag"], dest=f"opt_{spec.name}", default=default,
                                choices=meta["choices"] or None, metavar=meta.get("metavar") or spec.name.upper(),
                                help=f"{meta['doc']} (default: {default})")
            continue
        parser.add_argument(meta["flag"], dest=f"opt_{spec.name}", type=_argument_type(spec), default=default,
                            metavar=meta.get("metavar") or spec.name.upper(),
                            help=f"{meta['doc']} (default: {default:g})" if isinstance(default, float)
                            else f"{meta['doc']} (default: {default})")


def from_arguments(cls: type[T], args: argparse.Namespace, **given: Any) -> T:
    """An instance of ``cls`` from the flags :func:`add_arguments` added (and ``given``)."""
    values = {spec.name: getattr(args, f"opt_{spec.name}") for spec in fields(cls)  # type: ignore[arg-type]
              if hasattr(args, f"opt_{spec.name}")}
    values.update(given)
    return cls(**values)
