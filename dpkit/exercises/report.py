"""CheckReport: what check() answers: passed or not, why in a sentence or two, the cases, and the timing."""

from __future__ import annotations

import html
from dataclasses import dataclass, field

import pandas as pd


@dataclass
class CheckReport:
    """`passed`; `message` (on failure: which rank, which step, expected vs got); `cases` (one row per case
    and rank); `timing` (the learner's version against the built-in one, measured on this machine) or None."""

    exercise: str
    passed: bool
    message: str
    cases: pd.DataFrame = field(default_factory=pd.DataFrame)
    timing: dict | None = None
    checked: str = ""  # whose function this is, in words: a saved output of the reference solution must say so

    @property
    def timing_text(self) -> str:
        """The timing in one sentence ('' when nothing was timed)."""
        t = self.timing
        if not t:
            return ""
        ratio = t["yours_s"] / t["builtin_s"] if t["builtin_s"] > 0 else float("nan")
        return (
            f"Time per call, median of {t['repeats']} (slowest rank each), measured on this machine "
            f"({t['world_size']} ranks on {t['cpu_count']} CPU cores, {t['size']}): yours {t['yours_s'] * 1e3:.3g} ms, "
            f"{t['builtin']} {t['builtin_s'] * 1e3:.3g} ms ({ratio:.2g}x)."
        )

    def __str__(self) -> str:
        head = f"{self.exercise}: {'PASSED' if self.passed else 'FAILED'}"
        parts = [head + (f" (checked: {self.checked})" if self.checked else ""), self.message]
        if self.timing_text:
            parts.append(self.timing_text)
        if not self.cases.empty:
            failed = self.cases[~self.cases["passed"].astype(bool)]
            parts.append(f"{len(self.cases)} cases checked, {len(failed)} failed (all of them: report.cases)")
            if not failed.empty:  # the message has the first problem; the table says where else
                parts.append(failed.drop(columns=["problem"], errors="ignore").to_string(index=False))
        return "\n".join(parts)

    def __repr__(self) -> str:
        return f"CheckReport({self.exercise!r}, passed={self.passed}" + (f", checked: {self.checked})" if self.checked else ")")

    def _repr_html_(self) -> str:
        colour, word = ("#1a7f37", "passed") if self.passed else ("#cf222e", "failed")
        out = [
            f'<div style="border-left: 4px solid {colour}; padding-left: 8px">',
            f'<b style="color: {colour}">{html.escape(self.exercise)}: {word}</b>'
            + (f" <small>(checked: {html.escape(self.checked)})</small>" if self.checked else ""),
            f"<p>{html.escape(self.message)}</p>",
        ]
        if self.timing_text:
            out.append(f"<p><i>{html.escape(self.timing_text)}</i></p>")
        if not self.cases.empty:
            table = self.cases.to_html(index=False, escape=True)
            out.append(f"<details><summary>cases ({len(self.cases)} rows)</summary>{table}</details>")
        out.append("</div>")
        return "\n".join(out)
