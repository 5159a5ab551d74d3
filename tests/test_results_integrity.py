"""Result folders verify before they are trusted: corrupt, truncated or foreign folders are named, never half-loaded.

One real run per module is saved once; each test corrupts its own copy of that folder.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

import dpkit.api
from dpkit import RunConfig, RunResult, load_sweep, run, sweep
from dpkit.results import MANIFEST, RESULT_FILES, ResultFolderError

BASE = RunConfig(model="mlp", hidden=16, layers=2, global_batch=8, steps=2, warmup=1, threads_per_rank=1, timeout_s=60)


@pytest.fixture(scope="module")
def result() -> RunResult:
    """One data-parallel run on 2 ranks: its summary has NaN fields (no pipeline, so no bubble formula)."""
    return run(BASE.replace(parallelism="data", world_size=2))


@pytest.fixture(scope="module")
def saved(result: RunResult, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return result.save(tmp_path_factory.mktemp("saved") / "run")


@pytest.fixture
def copy(saved: Path, tmp_path: Path) -> Path:
    """A private copy of the saved folder, for a test to damage."""
    return Path(shutil.copytree(saved, tmp_path / "run"))


def same(a: Any, b: Any) -> bool:
    """Equality that counts NaN as equal to NaN (a summary's formula fields are NaN outside pipelines)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def flip_a_byte(path: Path) -> None:
    """Same size, other content: only the checksum can tell."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_round_trip_keeps_losses_state_summary_and_timeline(result: RunResult, saved: Path) -> None:
    nan_keys = {k for k, v in result.summary.items() if isinstance(v, float) and math.isnan(v)}
    assert nan_keys  # the case under test: strict JSON writes these as null, load() must give NaN back
    written = json.loads((saved / "summary.json").read_text())
    assert all(written[k] is None for k in nan_keys)
    back = RunResult.load(saved)
    assert back.config == result.config and back.losses == result.losses
    assert same(back.summary, result.summary), (back.summary, result.summary)
    assert same(back.meta, result.meta)
    assert set(back.final_state_dict) == set(result.final_state_dict)
    for k, v in result.final_state_dict.items():
        assert torch.equal(back.final_state_dict[k], v)
    pd.testing.assert_frame_equal(back.timeline, result.timeline, check_dtype=False)
    pd.testing.assert_frame_equal(back.steps, result.steps, check_dtype=False)


def test_manifest_lists_every_file_with_size_and_checksum(result: RunResult, saved: Path) -> None:
    manifest = json.loads((saved / MANIFEST).read_text())
    assert manifest["run_id"] == result.config.run_id() and manifest["format_version"] == 1
    assert set(manifest["files"]) == set(RESULT_FILES)
    for name, entry in manifest["files"].items():
        assert entry["size"] == (saved / name).stat().st_size and len(entry["sha256"]) == 64
    assert not [p.name for p in saved.iterdir() if p.name.startswith(".")]  # no temp files left behind


def test_saved_json_is_strict(saved: Path) -> None:
    def reject(token: str) -> None:
        raise AssertionError(f"{token} in saved JSON")

    for path in saved.glob("*.json"):
        json.loads(path.read_text(), parse_constant=reject)


def test_nested_non_finite_values_come_back(result: RunResult, tmp_path: Path) -> None:
    extra = {"per_rank": {"0": [1.0, math.inf, -math.inf], "1": [math.nan]}, "ok": 2}
    odd = RunResult(**{**vars(result), "extra": extra, "summary": dict(result.summary)})
    folder = odd.save(tmp_path / "odd")
    assert json.loads((folder / "extra.json").read_text())["per_rank"]["0"] == [1.0, None, None]  # strict JSON on disk
    back = RunResult.load(folder)
    assert back.extra["per_rank"]["0"] == [1.0, math.inf, -math.inf] and math.isnan(back.extra["per_rank"]["1"][0])
    assert back.extra["ok"] == 2


@pytest.mark.parametrize(
    "name, damage",
    [
        ("losses.csv", truncate),
        ("summary.json", truncate),
        ("timeline.csv", Path.unlink),
        ("state_dict.npz", flip_a_byte),
    ],
)
def test_damaged_file_is_refused_by_name(copy: Path, name: str, damage) -> None:
    damage(copy / name)
    with pytest.raises(ResultFolderError, match=name) as info:
        RunResult.load(copy)
    assert str(copy) in str(info.value) and info.value.file == name


def test_folder_without_manifest_is_refused_with_advice_to_rerun(copy: Path) -> None:
    (copy / MANIFEST).unlink()  # what a folder saved by the previous version looks like
    with pytest.raises(ResultFolderError, match="manifest.json.*rerun"):
        RunResult.load(copy)


def test_unknown_format_version_is_refused(copy: Path) -> None:
    manifest = json.loads((copy / MANIFEST).read_text())
    (copy / MANIFEST).write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(ResultFolderError, match="format version 99"):
        RunResult.load(copy)


def test_save_refuses_a_folder_holding_another_run(result: RunResult, copy: Path, tmp_path: Path) -> None:
    other = RunResult(**{**vars(result), "config": result.config.replace(seed=7), "summary": dict(result.summary)})
    with pytest.raises(ResultFolderError, match="holds run"):
        other.save(copy)
    assert RunResult.load(copy).config == result.config  # untouched
    other.save(copy, overwrite=True)
    assert RunResult.load(copy).config.seed == 7

    result.save(copy := tmp_path / "again")  # the same run to its own folder: idempotent
    before = (copy / MANIFEST).read_bytes()
    result.save(copy)
    assert (copy / MANIFEST).read_bytes() == before

    (foreign := tmp_path / "notes").mkdir()
    (foreign / "thesis.tex").write_text("mine")
    with pytest.raises(ResultFolderError, match="thesis.tex"):
        result.save(foreign)


def counting_run(monkeypatch: pytest.MonkeyPatch) -> list[RunConfig]:
    """Replace dpkit.api.run by the real one, counted: the configs that really launched."""
    calls: list[RunConfig] = []
    real = dpkit.api.run
    monkeypatch.setattr(dpkit.api, "run", lambda cfg, out=None: calls.append(cfg) or real(cfg, out))
    return calls


def test_sweep_reruns_only_the_corrupted_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    first = sweep(BASE, out=tmp_path, progress=False, seed=[0, 1, 2])
    assert not first.resumed.any()
    victim = tmp_path / BASE.replace(seed=1).run_id()
    truncate(victim / "losses.csv")
    capsys.readouterr()

    calls = counting_run(monkeypatch)
    again = sweep(BASE, out=tmp_path, progress=False, seed=[0, 1, 2])
    assert [c.seed for c in calls] == [1]
    assert list(again.resumed) == [True, False, True]
    said = capsys.readouterr().out
    assert str(victim) in said and "losses.csv" in said and said.count("rerunning") == 1
    assert RunResult.load(victim).losses == run(BASE.replace(seed=1)).losses  # repaired in place
    assert again.final_loss.tolist() == first.final_loss.tolist()


def test_sweep_reruns_a_folder_missing_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sweep(BASE, out=tmp_path, progress=False, seed=[0])
    (tmp_path / BASE.run_id() / "timeline.csv").unlink()
    calls = counting_run(monkeypatch)
    again = sweep(BASE, out=tmp_path, progress=False, seed=[0])
    assert len(calls) == 1 and not again.resumed.any()
    RunResult.load(tmp_path / BASE.run_id())


def test_load_sweep_skips_junk_and_corrupt_folders_with_a_warning(saved: Path, tmp_path: Path) -> None:
    good = shutil.copytree(saved, tmp_path / "good")
    bad = shutil.copytree(saved, tmp_path / "bad")
    truncate(bad / "summary.json")
    (junk := tmp_path / "junk").mkdir()
    (junk / "summary.json").write_text("{not json")
    (junk / "random.bin").write_bytes(b"\x00\x01")
    with pytest.warns(UserWarning) as caught:
        frame = load_sweep(tmp_path)
    said = " ".join(str(w.message) for w in caught)
    assert str(bad) in said and "summary.json" in said and str(junk) in said
    assert frame.run_id.tolist() == [good.name]


def test_link_is_recorded_also_when_none(result: RunResult) -> None:
    """meta["link"] and the summary's `link` say which link a run had, also without an emulated one."""
    assert result.config.link == "none"
    assert result.meta["link"]["key"] == "none" and "no emulated link" in result.meta["link"]["description"]
    assert result.summary["link"] == "none"
