"""RunConfig <-> command-line options: every field is an option (--world-size 4 ...).

Shared by the `dpkit` command and the torchrun entry, so both accept exactly the same options.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing

from .config import RunConfig

_HELP = {
    "parallelism": "none | data | pipeline | tensor | hybrid",
    "sync": "allreduce | ps | ps-async (data parallelism)",
    "model": "mlp | cnn | transformer",
    "grad_sync": "per-tensor | flat | bucketed | ddp",
    "allreduce_algo": "native | ring | ring-whole | reduce-broadcast | tree",
    "schedule": "naive | gpipe | 1f1b",
    "gloo_loop": "idle | normal: scheduling of gloo's busy-polling I/O thread (dpkit/gloo_loop.py)",
    "freeze": "comma-separated parameter-name prefixes to freeze",
}


def _parse_tuple(item: type):
    def parse(text: str) -> tuple:
        return tuple(item(v) for v in text.split(",") if v.strip()) if text else ()

    return parse


def _optional(convert):
    def parse(text: str):
        return None if text.lower() in ("", "none") else convert(text)

    return parse


def add_config_options(parser: argparse.ArgumentParser) -> None:
    hints = typing.get_type_hints(RunConfig)
    for f in dataclasses.fields(RunConfig):
        hint, flag = hints[f.name], "--" + f.name.replace("_", "-")
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
        help_text = f"{_HELP.get(f.name, '')} (default: {default!r})".strip()
        if hint is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
            continue
        args = typing.get_args(hint)
        if typing.get_origin(hint) is tuple:
            convert = _parse_tuple(args[0])
        elif type(None) in args:
            convert = _optional(next(a for a in args if a is not type(None)))
        else:
            convert = hint
        parser.add_argument(flag, type=convert, default=None, help=help_text)


def config_from_args(args: argparse.Namespace, **overrides) -> RunConfig:
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(RunConfig) if getattr(args, f.name, None) is not None}
    given.update(overrides)
    return RunConfig(**given)


def config_parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_config_options(parser)
    return parser
