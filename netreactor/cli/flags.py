"""Command-line flags for engine options, made from :class:`netreactor.Options`:
a new option gets its flag, type and ``--help`` text (the field's doc) with
no change here. Values are validated by the engine itself, so the command
line and the Python API reject the same things with the same words."""

from __future__ import annotations

import argparse
import dataclasses
import re
from typing import Any, Callable, Dict, List, Tuple

from .. import options as _options_module
from ..options import Options, option_docs

__all__ = ["NO_FLAG", "option_fields", "add_option_flags", "options_from_args"]

#: Options that have no command-line form.
NO_FLAG = frozenset({"logger", "tls"})  # tls: built from the --ssl-* flags


def option_fields() -> List[dataclasses.Field[Any]]:
    """The Options fields that have a flag."""
    return [f for f in dataclasses.fields(Options) if f.name not in NO_FLAG]


def _base_type(annotation: Any) -> Tuple[str, bool]:
    """``"Optional[int]"`` -> ``("int", True)``; annotations are strings here."""
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    text = text.replace("typing.", "").strip()
    match = re.fullmatch(r"Optional\[(.+)\]", text) or re.fullmatch(r"(.+?)\s*\|\s*None", text)
    if match:
        return match.group(1).strip(), True
    return text, False


_SIZE_SUFFIXES = {"k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mb": 1 << 20,
                  "mib": 1 << 20, "g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30}


def _int_arg(text: str) -> int:
    """An integer, with an optional binary size suffix: ``64k``, ``4MiB``, ``1g``."""
    match = re.fullmatch(r"\s*(\d+)\s*([A-Za-z]*)\s*", text)
    if match:
        number, suffix = int(match.group(1)), match.group(2).lower()
        if not suffix:
            return number
        if suffix in _SIZE_SUFFIXES:
            return number * _SIZE_SUFFIXES[suffix]
    raise argparse.ArgumentTypeError(f"expected an integer (sizes may end in k, m or g), got {text!r}")


def _float_arg(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None


def _optional(convert: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        return None if text.strip().lower() in ("none", "off") else convert(text)

    parse.__name__ = convert.__name__
    return parse


def add_option_flags(group: Any) -> None:
    """One flag per engine option: its type, default and help from the Options field."""
    docs = option_docs()
    choices = {"lb": _options_module.LOAD_BALANCERS, "poller": _options_module.POLLERS,
               "proxy_protocol": _options_module.PROXY_PROTOCOLS,
               "asyncio_loop": _options_module.ASYNCIO_LOOPS}
    for f in option_fields():
        flag = "--" + f.name.replace("_", "-")
        help_text = (docs.get(f.name) or f"the engine option {f.name!r}").replace("``", "'")
        help_text = help_text.replace("%", "%%")
        default = None if f.default is dataclasses.MISSING else f.default
        base, optional = _base_type(f.type)
        common = {"dest": f.name, "default": argparse.SUPPRESS}
        if base == "bool":
            group.add_argument(flag, action=argparse.BooleanOptionalAction,
                               help=f"{help_text} (default: {'on' if default else 'off'})", **common)
            continue
        convert: Callable[[str], Any]
        if base == "int":
            sized = any(word in f.name for word in ("buffer", "cap", "water", "rss"))
            convert, metavar = _int_arg, ("BYTES" if sized else "N")
        elif base == "float":
            convert, metavar = _float_arg, "SECONDS"
        else:
            convert, metavar = str, f.name.rsplit("_", 1)[-1].upper()
        if optional:
            convert = _optional(convert)
        shown = "none" if default is None else default
        extra = "; 'none' turns it off" if optional and "None" not in help_text else ""
        kwargs: Dict[str, Any] = {"type": convert, "metavar": metavar,
                                  "help": f"{help_text} (default: {shown}{extra})", **common}
        if f.name in choices:
            kwargs["choices"] = choices[f.name]
            kwargs["metavar"] = "{" + ",".join(choices[f.name]) + "}"
        group.add_argument(flag, **kwargs)


def options_from_args(args: argparse.Namespace) -> Dict[str, Any]:
    """The engine options given on the command line (those not given are absent)."""
    return {f.name: getattr(args, f.name) for f in option_fields() if hasattr(args, f.name)}
