"""`dpkit run|sweep|demo|bench`: every RunConfig field is an option (--world-size 4 ...)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .config_args import add_config_options, config_from_args
from .runtime import gloo_loop


def _print_summary(result) -> None:
    width = max(len(k) for k in result.summary)
    for k, v in result.summary.items():
        print(f"  {k:<{width}}  {v:.6g}" if isinstance(v, float) else f"  {k:<{width}}  {v}")


def cmd_run(args: argparse.Namespace) -> None:
    from .api import run

    cfg = config_from_args(args)
    out = Path(args.out or f"results/run-{cfg.run_id()}")
    result = run(cfg, out=out)
    print(repr(result))
    _print_summary(result)
    print(f"losses: {' '.join(f'{v:.4f}' for v in result.losses)}")
    print(f"result folder: {out} (trace.json opens in https://ui.perfetto.dev)")


def cmd_sweep(args: argparse.Namespace) -> None:
    from .api import sweep

    grid = {}
    for item in args.grid:
        name, _, values = item.partition("=")
        field = name.replace("-", "_")
        parser = argparse.ArgumentParser()
        add_config_options(parser)
        grid[field] = [getattr(parser.parse_args([f"--{name}", v]), field) for v in values.split(",")]
    cfg = config_from_args(args)
    out = Path(args.out or "results/sweep")
    frame = sweep(cfg, out=out, **grid)
    cols = ["run_id", *grid, "step_time_s", "samples_per_s", "comm_s", "exposed_comm_s", "final_loss"]
    print(frame[cols].to_string(index=False))
    frame.to_csv(out / "sweep.csv", index=False)
    print(f"results: {out}/sweep.csv")


def cmd_demo(args: argparse.Namespace) -> None:
    from .demo import main as demo_main

    demo_main(Path(args.out), quick=args.quick)


def cmd_bench(args: argparse.Namespace) -> None:
    from .benchmarks import run_benchmark

    if args.gloo_loop is not None:  # launch() and RunConfig read their default from it
        os.environ[gloo_loop.ENV_VAR] = args.gloo_loop
    print(f"gloo I/O threads: {gloo_loop.default_mode()} (dpkit/gloo_loop.py)")
    run_benchmark(args.what, Path(args.out or f"results/bench-{args.what}"), args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dpkit", description="distributed training you can run, measure and plot")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="one run: prints the summary, writes the result folder")
    add_config_options(p)
    p.add_argument("--out", help="result folder (default results/run-<id>)")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("sweep", help="a grid of runs, e.g. dpkit sweep world-size=1,2,4 --parallelism data")
    add_config_options(p)
    p.add_argument("grid", nargs="+", help="field=v1,v2,... (field names as options, without --)")
    p.add_argument("--out", help="folder for the runs and sweep.csv (default results/sweep); reruns resume")
    p.set_defaults(func=cmd_sweep)
    p = sub.add_parser("demo", help="the default job: data parallel at world sizes 1, 2, 4 -> table, CSV, PNG")
    p.add_argument("--out", default="results/demo", help="folder for demo.csv and speedup.png")
    p.add_argument("--quick", action="store_true", help="fewer steps (for tests)")
    p.set_defaults(func=cmd_demo)
    from .benchmarks import available

    p = sub.add_parser("bench", help="benchmarks: " + ", ".join(available()))
    p.add_argument("what", choices=available())
    p.add_argument("--out", default=None, help="folder for the CSV and plots (default results/bench-<what>)")
    p.add_argument("--max-world-size", type=int, default=4)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="a small grid (for tests)")
    p.add_argument(
        "--gloo-loop",
        choices=gloo_loop.GLOO_LOOP_MODES,
        default=None,
        help="scheduling of gloo's I/O threads in every run (default idle)",
    )
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, NotImplementedError) as exc:
        print(f"dpkit: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
