"""The all-reduce and calibration benchmarks run end to end in --quick mode and write what they promise.
(Speed is not asserted: the numbers are the lead's to measure on a quiet machine.)"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from dpkit.benchmarks.allreduce import TIMED_ALGOS
from dpkit.cli import main as cli_main
from dpkit.comm import ALGORITHMS


@pytest.fixture(scope="module")
def bench_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bench")


def test_calibrate_quick_saves_a_fit_with_the_machine(bench_root: Path, capsys) -> None:
    assert cli_main(["bench", "calibrate", "--quick", "--max-world-size", "2", "--out", str(bench_root / "bench-calibrate")]) == 0
    saved = json.loads((bench_root / "bench-calibrate" / "calibration.json").read_text())
    assert saved["alpha"] >= 0 and saved["bandwidth"] > 0 and saved["gamma"] >= 0
    for key in ("hostname", "cpu_count", "torch_version", "date", "fit"):
        assert key in saved["meta"]
    samples = pd.read_csv(bench_root / "bench-calibrate" / "calibration.csv")
    assert set(samples.pattern) == {"p2p", "copy", *TIMED_ALGOS} and (samples.time_s > 0).all()
    host = saved["meta"]["single_host"]  # the single-host view: one fit per world size measured
    assert set(host) == {"2"} and host["2"]["bandwidth"] > 0 and host["2"]["mu"] >= 0
    assert saved["meta"]["fit"]["samples"] == len(samples)
    assert (bench_root / "bench-calibrate" / "calibration.png").stat().st_size > 1000
    assert "fit error" in capsys.readouterr().out


def test_allreduce_quick_measures_every_algorithm(bench_root: Path, capsys) -> None:
    out = bench_root / "bench-allreduce"
    assert cli_main(["bench", "allreduce", "--quick", "--max-world-size", "2", "--out", str(out)]) == 0
    frame = pd.read_csv(out / "allreduce.csv")
    assert set(frame.algo) == set(TIMED_ALGOS) and set(frame.world_size) == {2}
    assert len(frame) == len(TIMED_ALGOS) * frame.size_bytes.nunique() >= len(TIMED_ALGOS) * 2
    assert (frame.time_s > 0).all() and (frame.repeats == 2).all()
    n = frame.world_size
    pd.testing.assert_series_equal(frame.algbw_GBps, frame.size_bytes / frame.time_s / 1e9, check_names=False)
    pd.testing.assert_series_equal(frame.busbw_GBps, frame.algbw_GBps * 2 * (n - 1) / n, check_names=False)
    assert (frame.predicted_s > 0).all() and frame.threads_per_rank.notna().all()
    assert (out / "allreduce.png").stat().st_size > 1000
    printed = capsys.readouterr().out
    assert "predicted" in printed and str(bench_root / "bench-calibrate" / "calibration.json") in printed  # used the calibration


def test_benchmarks_time_every_algorithm_but_the_one_that_needs_nodes() -> None:
    """Without emulated nodes "hierarchical" runs the ring: the benchmarks (which emulate none) leave it out."""
    assert set(ALGORITHMS) - set(TIMED_ALGOS) == {"hierarchical"}


def test_bench_rejects_a_world_of_one(tmp_path: Path, capsys) -> None:
    assert cli_main(["bench", "allreduce", "--quick", "--max-world-size", "1", "--out", str(tmp_path)]) == 2
    assert "max-world-size" in capsys.readouterr().err


@pytest.mark.slow
def test_whatif_writes_the_crossover_table(bench_root: Path) -> None:
    out = bench_root / "bench-whatif"
    if not (bench_root / "bench-calibrate" / "calibration.json").exists():  # the slow tier alone: no calibration yet
        assert (
            cli_main(["bench", "calibrate", "--quick", "--max-world-size", "2", "--out", str(bench_root / "bench-calibrate")])
            == 0
        )
    assert cli_main(["bench", "whatif", "--out", str(out)]) == 0
    table = pd.read_csv(out / "crossover.csv")
    assert {"10GbE", "100GbE", "NVLink", "this machine"} <= set(table.link)  # this machine: the calibration above
    assert (out / "crossover_10GbE.png").exists() and (out / "scan_NVLink.png").exists()


@pytest.mark.slow
def test_predict_quick_puts_model_and_runs_side_by_side(bench_root: Path, capsys) -> None:
    out = bench_root / "bench-predict"
    assert cli_main(["bench", "predict", "--quick", "--out", str(out)]) == 0
    frame = pd.read_csv(out / "predict.csv")
    assert {"data/allreduce/flat/native", "data/allreduce/bucketed/native"} <= set(frame.strategy)
    assert (frame.measured_step_time_s > 0).all() and (frame.predicted_step_time_s > 0).all()
    err = (frame.predicted_step_time_s - frame.measured_step_time_s) / frame.measured_step_time_s
    pd.testing.assert_series_equal(frame.rel_error, err, check_names=False)
    assert (out / "predict.png").stat().st_size > 1000
    assert "median |relative error|" in capsys.readouterr().out


def test_repeats_are_spread_over_launches_and_merged_back() -> None:
    from dpkit.benchmarks.allreduce import merge_launches, split_repeats

    assert split_repeats(15, 3) == [5, 5, 5] and split_repeats(7, 3) == [3, 2, 2]
    assert split_repeats(2, 3) == [1, 1] and split_repeats(1, 3) == [1]
    rows = [
        {"algo": "ring", "size_bytes": 4, "world_size": 2, "times_s": [1.0, 2.0]},
        {"algo": "tree", "size_bytes": 4, "world_size": 2, "times_s": [5.0]},
        {"algo": "ring", "size_bytes": 4, "world_size": 2, "times_s": [3.0]},
    ]
    merged = merge_launches(rows, ("algo", "size_bytes", "world_size"))
    assert [(r["algo"], r["times_s"]) for r in merged] == [("ring", [1.0, 2.0, 3.0]), ("tree", [5.0])]
    assert rows[0]["times_s"] == [1.0, 2.0]  # the input rows are left as they were
