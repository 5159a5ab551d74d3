"""Packaging and the command line: pyproject and environment.yml agree, the CLI works end to end."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent
CONDA_NAMES = {"pytorch": "torch"}  # conda-forge name -> PyPI name


def _toml():
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        from pip._vendor import tomli as tomllib
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _split(req: str) -> tuple[str, str]:
    m = re.match(r"\s*([A-Za-z0-9_.\-]+)\s*(.*)", req)
    assert m, req
    return m.group(1).lower(), m.group(2).replace(" ", "")


def test_environment_yml_lists_the_same_dependencies_as_pyproject() -> None:
    project = _toml()["project"]
    wanted = dict(_split(r) for r in project["dependencies"] + project["optional-dependencies"]["test"])
    conda = {}
    text = (ROOT / "environment.yml").read_text()
    for line in text[text.index("dependencies:") :].splitlines():
        m = re.match(r"\s*-\s+([A-Za-z][A-Za-z0-9_.\-]*)(.*)$", line)
        if m and m.group(1) not in ("python", "pip", "-e"):
            name, spec = _split(m.group(1) + m.group(2))
            conda[CONDA_NAMES.get(name, name)] = spec
    assert conda == wanted


def test_console_script_and_readme_commands() -> None:
    assert _toml()["project"]["scripts"]["dpkit"] == "dpkit.cli:main"
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    for command in ("bash scripts/quickstart.sh run", "bash scripts/quickstart.sh test"):
        assert command in readme
        assert command in ci


def _cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dpkit.cli", *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


@pytest.mark.slow
def test_cli_run_prints_summary_and_writes_folder(tmp_path: Path) -> None:
    done = _cli("run", "--parallelism", "data", "--world-size", "2", "--hidden", "32", "--steps", "3",
                "--global-batch", "16", "--threads-per-rank", "1", "--out", str(tmp_path / "r"))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "step_time_s" in done.stdout and "losses:" in done.stdout
    assert (tmp_path / "r" / "summary.json").exists()


@pytest.mark.slow
def test_cli_bad_value_is_a_clear_error() -> None:
    done = _cli("run", "--parallelism", "data", "--world-size", "3", "--global-batch", "64")
    assert done.returncode == 2
    assert "RunConfig.global_batch=64" in done.stderr and "multiple of" in done.stderr


@pytest.mark.slow
def test_demo_writes_table_csv_and_plot(tmp_path: Path) -> None:
    done = _cli("demo", "--quick", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    frame = pd.read_csv(tmp_path / "demo.csv")
    assert list(frame.world_size) == [1, 2, 4]
    assert (frame.step_time_s > 0).all()
    withheld = frame.withheld.fillna("").astype(str) != ""
    assert (frame.speedup[0] == 1.0) != withheld[0]  # the baseline's 1.0, or blank with the reason (a busy machine)
    assert (frame.speedup.isna() == withheld).all(), frame[["world_size", "speedup", "withheld"]]
    assert (tmp_path / "speedup.png").stat().st_size > 10_000
    assert "speedup" in done.stdout


@pytest.mark.slow
def test_bench_launch_writes_medians(tmp_path: Path) -> None:
    done = _cli("bench", "launch", "--quick", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    frame = pd.read_csv(tmp_path / "launch.csv")
    assert {"forkserver", "spawn"} == set(frame.start_method)
    assert (frame.median_s > 0).all()
    assert (tmp_path / "launch.png").stat().st_size > 10_000
    assert "dpkit/runtime/gloo_loop.py" in done.stdout and "dpkit/gloo_loop.py" not in done.stdout


@pytest.mark.slow  # 4 runs on an emulated 1 GbE link: over a minute on a busy 2-core machine
def test_bench_overlap_writes_csv_and_png(tmp_path: Path) -> None:
    done = _cli("bench", "overlap", "--quick", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    frame = pd.read_csv(tmp_path / "overlap.csv")
    assert list(frame.grad_sync) == ["flat", "bucketed"] and (frame.step_time_s > 0).all()
    assert (tmp_path / "overlap.png").stat().st_size > 10_000


@pytest.mark.slow
def test_gpu_check_refuses_clearly_without_a_gpu(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        import pytest

        pytest.skip("this machine has a GPU: the check itself runs in `dpkit bench gpu_check`")
    done = _cli("bench", "gpu_check", "--out", str(tmp_path))
    assert done.returncode != 0
    assert "needs a CUDA GPU" in done.stderr
    assert not list(tmp_path.iterdir())


def test_every_listed_benchmark_has_a_main() -> None:
    """`dpkit bench NAME` lists every module of dpkit/benchmarks: each must be runnable (overlap once was not)."""
    import importlib

    from dpkit.benchmarks import available

    missing = [n for n in available() if not callable(getattr(importlib.import_module(f"dpkit.benchmarks.{n}"), "main", None))]
    assert not missing
