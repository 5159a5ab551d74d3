"""`dpkit run|sweep|demo|bench`: every RunConfig field is an option (--world-size 4 ...)."""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, NoReturn

from .config import RunConfig, UnknownFieldError, unknown_fields_message
from .config_args import add_config_options, config_from_args
from .runtime import gloo_loop
from .runtime.launch import RankFailedError, RunTimeoutError


class _Parser(argparse.ArgumentParser):
    """argparse whose errors (an unknown option, `--world-size two`) are one line like every other dpkit error,
    not a usage block: 'dpkit: error: argument --world-size: 'two' is not an integer (see dpkit run --help)'."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"dpkit: error: {message} (see {self.prog} --help)\n")


def check_out(out: Path) -> Path:
    """Refuse, before anything runs, a result folder that cannot be written: found only at save time, it
    would throw the finished run away. Permission bits do not tell (root may write anywhere by them, and
    /proc refuses new files whatever they say), so a probe file is created and removed in the folder, or in
    its nearest existing parent if the folder is not there yet (nothing is left behind). Returns `out`."""
    if out.exists():
        if not out.is_dir():
            raise ValueError(f"--out {out} is an existing file, not a folder: pass a folder for the results")
        _probe(out, f"--out {out} is a folder this user cannot write in")
        return out
    parent = next(p for p in out.absolute().parents if p.exists())
    if not parent.is_dir():
        raise ValueError(f"--out {out} cannot be created: {parent} is a file, not a folder")
    _probe(parent, f"--out {out} cannot be created: this user cannot create folders in {parent}")
    return out


def _probe(folder: Path, message: str) -> None:
    """ValueError(message + why) unless a folder can be created (and is removed again) in `folder`."""
    try:
        made = tempfile.mkdtemp(prefix=".dpkit-probe-", dir=folder)
    except OSError as exc:
        raise ValueError(f"{message} ({exc.strerror or exc})") from None
    os.rmdir(made)


def _print_summary(result) -> None:
    width = max(len(k) for k in result.summary)
    for k, v in result.summary.items():
        print(f"  {k:<{width}}  {v:.6g}" if isinstance(v, float) else f"  {k:<{width}}  {v}")


def cmd_run(args: argparse.Namespace) -> None:
    from .api import run

    cfg = config_from_args(args)
    out = check_out(Path(args.out or args.resume or f"results/run-{cfg.run_id()}"))
    result = run(cfg, out=out, resume_from=args.resume)
    print(repr(result))
    _print_summary(result)
    print(f"losses: {' '.join(f'{v:.4f}' for v in result.losses)}")
    print(f"result folder: {out} (trace.json opens in https://ui.perfetto.dev)")


def cmd_sweep(args: argparse.Namespace) -> None:
    from .api import sweep

    grid: dict[str, Any] = {}
    parser = _Parser(prog="dpkit sweep")  # parses each grid value as its option would be
    add_config_options(parser)
    known = [f.name for f in dataclasses.fields(RunConfig)]
    for item in args.grid:
        name, eq, values = item.partition("=")
        field = name.strip().replace("-", "_")
        if not eq or not values:
            raise ValueError(f"sweep grid item {item!r} is not allowed: field=v1,v2,... such as world-size=1,2,4")
        if field not in known:
            raise UnknownFieldError(unknown_fields_message([field], known))
        flag = "--" + field.replace("_", "-")
        grid[field] = [getattr(parser.parse_args([flag, v]), field) for v in values.split(",")]
    cfg = config_from_args(args)
    out = check_out(Path(args.out or "results/sweep"))
    frame = sweep(cfg, out=out, **grid)
    if "world_size" in grid and len(set(grid["world_size"])) > 1:  # speedups follow the one rule: withheld, with the reason
        from .viz.plots import scaling_frame

        frame = scaling_frame(frame)
    cols = ["run_id", *grid, "step_time_s", "samples_per_s", "cpu_s", "waiting_for_core_s", "exposed_comm_s", "final_loss"]
    cols += [c for c in ("speedup", "efficiency", "withheld") if c in frame.columns] + ["noisy", "noise_reason"]
    print(frame[[c for c in cols if c in frame.columns]].to_string(index=False, na_rep="-"))
    frame.to_csv(out / "sweep.csv", index=False)
    print(f"results: {out}/sweep.csv")


def cmd_demo(args: argparse.Namespace) -> None:
    from .demo import main as demo_main

    demo_main(check_out(Path(args.out)), quick=args.quick)


def cmd_bench(args: argparse.Namespace) -> None:
    from .benchmarks import run_benchmark

    if args.gloo_loop is not None:  # launch() and RunConfig read their default from it
        os.environ[gloo_loop.ENV_VAR] = args.gloo_loop
    print(f"gloo I/O threads: {gloo_loop.default_mode()} (dpkit/runtime/gloo_loop.py)")
    run_benchmark(args.what, check_out(Path(args.out or f"results/bench-{args.what}")), args)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="dpkit", description="distributed training you can run, measure and plot")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="one run: prints the summary, writes the result folder")
    add_config_options(p)
    p.add_argument("--out", help="result folder (default results/run-<id>, or --resume's)")
    p.add_argument("--resume", metavar="FOLDER", help="continue from the last good checkpoint in FOLDER (see --checkpoint-every)")
    p.set_defaults(func=cmd_run, parser=p)
    p = sub.add_parser("sweep", help="a grid of runs, e.g. dpkit sweep world-size=1,2,4 --parallelism data")
    add_config_options(p)
    p.add_argument("grid", nargs="+", help="field=v1,v2,... (field names as options, without --)")
    p.add_argument("--out", help="folder for the runs and sweep.csv (default results/sweep); reruns resume")
    p.set_defaults(func=cmd_sweep, parser=p)
    p = sub.add_parser("demo", help="the default job: data parallel at world sizes 1, 2, 4 -> table, CSV, PNG")
    p.add_argument("--out", default="results/demo", help="folder for demo.csv and speedup.png")
    p.add_argument("--quick", action="store_true", help="fewer steps (for tests)")
    p.set_defaults(func=cmd_demo, parser=p)
    from .benchmarks import available

    p = sub.add_parser("bench", help="benchmarks: " + ", ".join(available()))
    p.add_argument("what", choices=available())
    p.add_argument("--out", default=None, help="folder for the CSV and plots (default results/bench-<what>)")
    p.add_argument("--max-world-size", type=int, default=4, help="largest world size in the grid (default: 4)")
    p.add_argument("--repeats", type=int, default=5, help="timed repetitions per measurement (default: 5)")
    p.add_argument("--quick", action="store_true", help="a small grid (for tests)")
    p.add_argument("--dry-run", action="store_true", help="gpu_check only: run the GPU script on the CPU (labelled a dry run)")
    p.add_argument(
        "--gloo-loop",
        choices=gloo_loop.GLOO_LOOP_MODES,
        default=None,
        help="scheduling of gloo's I/O threads in every run (default low)",
    )
    p.set_defaults(func=cmd_bench, parser=p)
    return parser


def main(argv: list[str] | None = None) -> int:
    """0 on success; 2 for a bad option, value or path (nothing was run); 1 when a run failed (a rank died,
    the timeout passed, a file could not be written). Either way one 'dpkit: error:' line, no Python traceback
    (a failed rank's own traceback follows its line); 130 after Ctrl-C, with one line."""
    args, extra = build_parser().parse_known_args(argv)
    if extra:  # said by the subcommand's parser, which knows the options a misspelt one was meant to be
        options = [o for action in args.parser._actions for o in action.option_strings]
        guess = difflib.get_close_matches(extra[0].partition("=")[0], options, n=1)
        args.parser.error(f"unrecognized arguments: {' '.join(extra)}" + (f" (did you mean {guess[0]}?)" if guess else ""))
    try:
        args.func(args)
    except (ValueError, NotImplementedError) as exc:
        print(f"dpkit: error: {exc}", file=sys.stderr)
        return 2
    except (RankFailedError, RunTimeoutError, OSError) as exc:
        print(f"dpkit: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C: the ranks are gone already (launch kills them); one line, no traceback
        print("dpkit: interrupted (Ctrl-C): the run was stopped and its processes ended", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
