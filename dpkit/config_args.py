"""RunConfig <-> command-line options: every field is an option (--world-size 4 ...).

Shared by the `dpkit` command and the torchrun entry, so both accept exactly the same options.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Callable
from typing import Any

from .config import FIELD_HELP, RunConfig

_WORDS = {int: "an integer", float: "a number"}


def _convert(item: type, text: str) -> Any:
    """`text` as `item`, or an ArgumentTypeError that argparse prints after the option's name."""
    try:
        return item(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {_WORDS.get(item, item.__name__)}") from None


def _parse_tuple(item: type) -> Callable[[str], tuple]:
    def parse(text: str) -> tuple:
        return tuple(_convert(item, v) for v in text.split(",") if v.strip())

    return parse


def _optional(item: type) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        return None if text.strip().lower() in ("", "none") else _convert(item, text)

    return parse


def _plain(item: type) -> Callable[[str], Any]:
    return lambda text: _convert(item, text)


def add_config_options(parser: argparse.ArgumentParser) -> None:
    hints = typing.get_type_hints(RunConfig)
    for f in dataclasses.fields(RunConfig):
        hint, flag = hints[f.name], "--" + f.name.replace("_", "-")
        # FIELD_HELP says what None and a default_factory mean; calling the factory here (gloo_loop's reads an
        # environment variable) would make a bad variable break even `--help`
        shown = "" if f.default is dataclasses.MISSING or f.default is None else f" (default: {f.default!r})"
        help_text = FIELD_HELP.get(f.name, "") + shown  # tests/test_validation.py checks that every field has one
        if hint is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
            continue
        args = typing.get_args(hint)
        if typing.get_origin(hint) is tuple:
            convert = _parse_tuple(args[0])
        elif type(None) in args:
            convert = _optional(next(a for a in args if a is not type(None)))
        else:
            convert = _plain(hint)
        parser.add_argument(flag, type=convert, default=None, help=help_text)


def config_from_args(args: argparse.Namespace, **overrides) -> RunConfig:
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(RunConfig) if getattr(args, f.name, None) is not None}
    given.update(overrides)
    return RunConfig(**given)


def config_parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_config_options(parser)
    return parser
