"""A regular (non-editable) install runs the kit: the wheel carries the package data, and nothing reads the checkout.

The wheel is built from this checkout and installed into a fresh virtual environment outside it.
Dependencies (torch, pandas, ...) come from the test's own environment through a .pth line, so the
test downloads nothing; dpkit itself is importable only from the wheel (the editable install's finder
is not activated by that line, and the working directory is outside the checkout).
"""

from __future__ import annotations

import site
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

JOB = """
import sys
import dpkit
from dpkit import RunConfig, run
assert "{venv}" in dpkit.__file__, dpkit.__file__
result = run(RunConfig(parallelism="data", world_size=2, model="mlp", hidden=16, layers=2, global_batch=16, steps=2,
                       warmup=1, threads_per_rank=1, timeout_s=120))
assert len(result.losses) == 2 and result.summary["num_processes"] == 2
print("wheel ok", dpkit.__file__, result.losses)
"""


@pytest.mark.slow
def test_wheel_installs_outside_the_checkout_and_runs_two_ranks(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = dist.glob("dpkit-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "dpkit/data/digits.csv.gz" in names, "the digits data is not package data"
    assert not [n for n in names if n.startswith(("tests/", "notebooks/"))]

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    purelib = Path(
        subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], check=True, capture_output=True,
                       text=True).stdout.strip()
    )  # fmt: skip
    deps = [p for p in [*site.getsitepackages(), sysconfig.get_paths()["purelib"]] if Path(p).is_dir()]
    (purelib / "dpkit_test_deps.pth").write_text("\n".join(dict.fromkeys(deps)) + "\n")
    # install the wheel's files into the new environment (pip of the test's environment, aimed at it)
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-compile", "-q", "--target", str(purelib), str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    done = subprocess.run([python, "-c", JOB.format(venv=str(venv))], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "wheel ok" in done.stdout
