"""Benchmarks behind `dpkit bench NAME`: each module NAME here has main(out: Path, args) and writes CSV/PNG to out."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
from pathlib import Path


def available() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def run_benchmark(name: str, out: Path, args: argparse.Namespace) -> None:
    if name not in available():
        raise ValueError(f"benchmark {name!r} is not allowed: choose one of {available()}")
    out.mkdir(parents=True, exist_ok=True)
    importlib.import_module(f"{__name__}.{name}").main(out, args)
