"""Checkpoints: every rank's whole training state, every `checkpoint_every` steps, and resuming from the last good one.

A checkpoint is a folder `checkpoints/step-NNNNNNNN/` holding one file per rank (`rank-NNNNN.pt`, torch.save of
what that rank holds: sharded state stays sharded, each rank writes its own shard) and `manifest.json`, written
last by rank 0 with every file's size and sha256, as result folders are (dpkit.results). A folder without a
manifest, or a file whose size or checksum differs, is refused with CheckpointError, and resuming falls back to
the previous checkpoint that verifies.

What a rank's file holds, read off the strategy generically: the state dicts of `model` and `module` (whichever
it has), its optimizer `opt` (state, and the values of the parameters it steps: ZeRO's flat shards, a server's
shard), RNG states, the losses and learning rates so far, and whatever the strategy, or its gradient sync `sync`,
adds through an optional `checkpoint_extra()` / `load_checkpoint_extra(state)` pair (a server's clocks; error
feedback's residuals, once compression is wired into the gradient sync). The data position is the step:
every rank draws step s's batch from the step number (dpkit.workloads), so restoring the step restores it.

Saving and loading are outside every step: their time is its own timeline kind, `checkpoint`, never compute
or comm. torch.distributed.checkpoint is not used: dpkit's shards are plain per-rank tensors (ZeRO's flat
shards are not DTensors), so each rank torch.saves its own and resharding is done here (data parallel: any
replica's file; ZeRO: the flat shards concatenated and cut again).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ..config import RunConfig
from ..results import CHECKPOINTS, ResultFolderError, _fsync_dir, _write_atomic
from ..strategies.checkpoint_layout import reshard_kind
from .recorder import Recorder, Span

CHECKPOINT_KIND = "checkpoint"  # the timeline kind of saving and loading
CHECKPOINT_FORMAT = "dpkit-checkpoint"
CHECKPOINT_FORMAT_VERSION = 1
KEEP = 3  # checkpoints kept: the newest and two older ones to fall back to
#: fields a resumed run may change: they do not change what is computed
RESUMABLE_CHANGES = frozenset(
    {"checkpoint_every", "fail_rank", "fail_at_step", "timeout_s", "threads_per_rank", "gloo_loop", "steps", "profile"}
)


class CheckpointError(ResultFolderError):
    """A checkpoint that cannot be trusted: no manifest (an interrupted save), a truncated or edited file."""


def step_dir(root: Path, step: int) -> Path:
    return root / f"step-{step:08d}"


def rank_file(rank: int) -> str:
    return f"rank-{rank:05d}.pt"


# ---- what a rank holds ----------------------------------------------------------------------
def _local(t: torch.Tensor) -> torch.Tensor:
    """A plain CPU copy (a DTensor's local shard: FSDP2's parameters and optimizer state)."""
    if hasattr(t, "to_local"):
        t = t.to_local()
    return t.detach().to("cpu", copy=True)


def _held(t: torch.Tensor) -> bool:
    """Whether a tensor's bytes are there: ZeRO-3 frees a unit's flat buffer between uses (its shard is the state)."""
    t = t.to_local() if hasattr(t, "to_local") else t
    need = (t.storage_offset() + t.numel()) * t.element_size()
    return t.numel() == 0 or t.untyped_storage().nbytes() >= need


def _plain(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return _local(obj)
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_plain(v) for v in obj)
    return obj


def _opt_params(opt: torch.optim.Optimizer | None) -> list[torch.Tensor]:
    return [p for g in opt.param_groups for p in g["params"]] if opt is not None else []


def capture(strategy: Any) -> dict[str, Any]:
    """Everything this rank needs to go on exactly where it is, as plain CPU tensors."""
    opt = getattr(strategy, "opt", None)
    state: dict[str, Any] = {
        "modules": {
            name: {k: _local(v) for k, v in getattr(strategy, name).state_dict().items() if _held(v)}
            for name in ("module", "model")
            if hasattr(strategy, name)
        },
        "opt": _plain(opt.state_dict()) if opt is not None else None,
        "opt_params": [_local(p) for p in _opt_params(opt)],
        "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
    }
    if torch.cuda.is_available() and strategy.ctx.device.type == "cuda":
        state["rng"]["cuda"] = torch.cuda.get_rng_state(strategy.ctx.device)
    if hasattr(strategy, "checkpoint_extra"):
        state["extra"] = _plain(strategy.checkpoint_extra())
    if hasattr(getattr(strategy, "sync", None), "checkpoint_extra"):  # a gradient sync's own state (error feedback)
        state["sync"] = _plain(strategy.sync.checkpoint_extra())
    return state


def _copy_into(target: torch.Tensor, value: torch.Tensor) -> None:
    local = target.to_local() if hasattr(target, "to_local") else target
    if local.shape == value.shape and local.numel() > 0 and local.untyped_storage().nbytes() > 0:
        with torch.no_grad():
            local.copy_(value.to(local.device, local.dtype))


def _wrap_like(param: Any, value: torch.Tensor) -> torch.Tensor:
    """Optimizer state for a DTensor parameter is a DTensor laid out as the parameter."""
    if hasattr(param, "to_local") and value.dim() > 0 and value.shape == param.to_local().shape:
        from torch.distributed.tensor import DTensor

        return DTensor.from_local(value.to(param.to_local().device), param.device_mesh, param.placements, run_check=False)
    return value


def restore(strategy: Any, state: dict[str, Any]) -> None:
    """Put a rank's captured state back into a freshly built strategy of the same layout."""
    for name, saved in state["modules"].items():
        module = getattr(strategy, name, None)
        if module is None:
            continue
        live = module.state_dict(keep_vars=True)
        for key, value in saved.items():
            if key in live:
                _copy_into(live[key], value)
    opt = getattr(strategy, "opt", None)
    params = _opt_params(opt)
    for p, value in zip(params, state["opt_params"], strict=True):  # the optimizer's own parameters last: ZeRO-3's shards
        _copy_into(p, value)
    if opt is not None and state["opt"] is not None:
        opt.load_state_dict(state["opt"])
        for p in params:
            for key, value in list(opt.state.get(p, {}).items()):
                if isinstance(value, torch.Tensor):
                    opt.state[p][key] = _wrap_like(p, value)
    rng = state["rng"]
    torch.set_rng_state(rng["torch"])
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])
    if "cuda" in rng and strategy.ctx.device.type == "cuda":
        torch.cuda.set_rng_state(rng["cuda"], strategy.ctx.device)
    if "extra" in state and hasattr(strategy, "load_checkpoint_extra"):
        strategy.load_checkpoint_extra(state["extra"])
    if "sync" in state:
        strategy.sync.load_checkpoint_extra(state["sync"])


def reshard(states: list[dict[str, Any]], index: int, sizes: list[int], kind: str) -> dict[str, Any]:
    """Rank `index`'s state from the states of the ranks that saved (another number of them than now).

    kind 'replicated' (data parallel): every replica holds the same state, so the first one's is taken.
    kind 'flat' (ZeRO): optimizer parameter i of every rank is shard r of one zero-padded flat buffer, and its
    per-element optimizer state is laid out alike: the old shards end to end are that buffer, cut again into
    shards of `sizes[i]` elements, the new layout's (the zero padding moves but stays zero)."""
    first = states[0]
    if kind == "replicated":
        return first
    out = dict(first, opt_params=[], opt=None)
    out["opt_params"] = [_cut([s["opt_params"][i] for s in states], index, sizes[i]) for i in range(len(first["opt_params"]))]
    if first["opt"] is not None:
        opt = {"param_groups": first["opt"]["param_groups"], "state": {}}
        for i, entry in first["opt"]["state"].items():
            opt["state"][i] = {
                key: _cut([s["opt"]["state"][i][key] for s in states], index, sizes[i])
                if isinstance(value, torch.Tensor) and value.dim() == 1 and value.shape == first["opt_params"][i].shape
                else value
                for key, value in entry.items()
            }
        out["opt"] = opt
    return out


def _cut(shards: list[torch.Tensor], index: int, size: int) -> torch.Tensor:
    """Shard `index` of `size` elements of the old shards end to end, zero-padded past their end."""
    whole = torch.cat(shards)
    whole = torch.cat([whole, whole.new_zeros(max(0, (index + 1) * size - whole.numel()))])
    return whole[index * size : (index + 1) * size].clone()


def merged_losses(per_rank: list[list[tuple[float, int]]], rank: int) -> list[tuple[float, int]]:
    """The old ranks' (loss, samples) per step as one new rank's: the global mean on rank 0 with weight 1 (so the
    result's sample-weighted mean gives it back exactly), weight 0 elsewhere."""
    out = []
    for step in zip(*per_rank, strict=True):
        total = sum(n for _, n in step)
        mean = sum(loss * n for loss, n in step if n > 0) / total if total else float("nan")
        out.append((mean, int(rank == 0)))
    return out


# ---- files on disk --------------------------------------------------------------------------
def _manifest(folder: Path) -> dict[str, Any]:
    path = folder / "manifest.json"
    if not path.is_file():
        raise CheckpointError(folder, "manifest.json", "is missing: the save was interrupted before it completed")
    try:
        manifest = json.loads(path.read_text())
    except ValueError as exc:
        raise CheckpointError(folder, "manifest.json", f"is not valid JSON: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(folder, "manifest.json", f"is not a dpkit checkpoint manifest (format {CHECKPOINT_FORMAT!r})")
    return manifest


def verify(folder: str | Path) -> dict[str, Any]:
    """The manifest of a checkpoint folder, once every file it lists has its recorded size and sha256."""
    folder = Path(folder)
    manifest = _manifest(folder)
    for name, entry in manifest["files"].items():
        path = folder / name
        if not path.is_file():
            raise CheckpointError(folder, name, "is missing (manifest.json lists it)")
        blob = path.read_bytes()
        if len(blob) != entry["size"]:
            raise CheckpointError(folder, name, f"is {len(blob)} bytes, manifest.json says {entry['size']}: truncated")
        if hashlib.sha256(blob).hexdigest() != entry["sha256"]:
            raise CheckpointError(folder, name, "does not match its sha256 in manifest.json: corrupted or edited")
    return manifest


def write_manifest(folder: Path, step: int, cfg: RunConfig, entries: list[dict[str, Any]]) -> None:
    """Last, once every rank's file is written: the manifest's presence and checksums mark a complete checkpoint."""
    manifest = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "step": step,
        "world": len(entries),
        "config": cfg.to_dict(),
        "saved_at": time.time(),  # wall clock: a restart measures the time lost since
        "files": {rank_file(r): e for r, e in enumerate(entries)},
    }
    _write_atomic(folder / "manifest.json", json.dumps(manifest, indent=1).encode())
    _fsync_dir(folder)


def checkpoints(root: str | Path) -> list[Path]:
    """Checkpoint folders under `root` (a result folder's checkpoints/), oldest first."""
    root = Path(root)
    return sorted(p for p in root.glob("step-*") if p.is_dir()) if root.is_dir() else []


def last_good(root: str | Path, log: Any = print) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint under `root` that verifies, and its manifest; each refused one is said in one line."""
    for folder in reversed(checkpoints(root)):
        try:
            return folder, verify(folder)
        except CheckpointError as exc:
            log(f"dpkit: skipping checkpoint: {exc}")
    return None


def load_rank(folder: Path, rank: int) -> dict[str, Any]:
    verify_one(folder, rank_file(rank))
    return torch.load(folder / rank_file(rank), map_location="cpu", weights_only=False)


def verify_one(folder: Path, name: str) -> None:
    entry = _manifest(folder)["files"].get(name)
    blob = (folder / name).read_bytes() if (folder / name).is_file() else b""
    if entry is None or len(blob) != entry["size"] or hashlib.sha256(blob).hexdigest() != entry["sha256"]:
        raise CheckpointError(folder, name, "does not verify against manifest.json")


def compatibility_problem(saved: RunConfig, cfg: RunConfig, reshardable: str | None) -> str | None:
    """Why `cfg` cannot resume a checkpoint of `saved`, or None."""
    a, b = saved.to_dict(), cfg.to_dict()
    changed = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k) and k not in RESUMABLE_CHANGES)
    if "world_size" in changed and reshardable is not None:
        changed.remove("world_size")
    if changed:
        name = changed[0]
        return (
            f"RunConfig.{name}={b.get(name)!r} differs from the checkpoint's {a.get(name)!r}: a resumed run must "
            f"train the same model the same way (it may change only {', '.join(sorted(RESUMABLE_CHANGES))}"
            + (", and world_size for data parallel and ZeRO)" if reshardable is None else ")")
        )
    return None


# ---- run()'s side: where checkpoints go and come from, checked before any process starts ---
def _checkpoints_of(folder: str | Path) -> Path:
    folder = Path(folder)
    return folder if folder.name == CHECKPOINTS or not (folder / CHECKPOINTS).is_dir() else folder / CHECKPOINTS


def checkpoint_folder(cfg: RunConfig, out: str | Path | None, resume_from: str | Path | None, tmp: str) -> str | None:
    """Where the ranks write checkpoints: out/checkpoints, else resume_from's, else a temporary folder; None: never."""
    if cfg.checkpoint_every is None:
        return None
    if out is not None:
        return str(Path(out) / CHECKPOINTS)
    if resume_from is not None:
        return str(_checkpoints_of(resume_from))
    return str(Path(tmp) / CHECKPOINTS)


def resume_folder(cfg: RunConfig, resume_from: str | Path | None) -> str | None:
    """The checkpoints folder to resume from, once its last good checkpoint fits `cfg`; ValueError naming resume_from."""
    if resume_from is None:
        return None
    root = _checkpoints_of(resume_from)
    found = last_good(root)
    if found is None:
        raise ValueError(f"resume_from={str(resume_from)!r} is not allowed: no checkpoint under {root} verifies")
    folder, manifest = found
    saved = RunConfig.from_dict(manifest["config"])
    problem = compatibility_problem(saved, cfg, reshard_kind(saved))
    if problem is None and manifest["world"] != cfg.num_processes and reshard_kind(saved) is None:
        problem = f"{folder.name} was saved by {manifest['world']} processes, this run has {cfg.num_processes}: this strategy cannot reshard"
    if problem:
        raise ValueError(f"resume_from={str(resume_from)!r} is not allowed: {problem}")
    return str(root)


def elastic_payload(cfg: RunConfig, out: str, restarts: int) -> dict[str, Any]:
    """Under torchrun: checkpoint into out/checkpoints; after a restart, resume from there if one verifies."""
    if cfg.checkpoint_every is None:
        return {}
    root = str(Path(out) / CHECKPOINTS)
    return {
        "checkpoint_dir": root,
        "resume_dir": root if restarts > 0 else None,
        "resume_optional": True,  # a restart before the first checkpoint starts from the beginning
        "attempt_started_at": time.time(),
    }


# ---- the training loop's side ---------------------------------------------------------------
class Checkpointer:
    """Saves every `checkpoint_every` steps into `root` and resumes from `resume` (both checkpoints/ folders)."""

    def __init__(self, cfg: RunConfig, rank: int, world: int, recorder: Recorder, group: Any, payload: dict[str, Any]) -> None:
        self.cfg, self.rank, self.world, self.rec, self.group = cfg, rank, world, recorder, group
        root, resume = payload.get("checkpoint_dir"), payload.get("resume_dir")
        self.root = Path(root) if root else None
        self.resume_root = Path(resume) if resume else None
        self.optional = bool(payload.get("resume_optional"))  # torchrun's restart: no checkpoint yet, start over
        self.attempt_started_at = payload.get("attempt_started_at")  # torchrun: when this attempt began
        self.saved: list[dict[str, Any]] = []  # per save: step, seconds, bytes of this rank's file
        self.resumed: dict[str, Any] | None = None

    def _timed(self, name: str, step: int, fn: Any) -> Any:
        clock = self.rec.clock
        clock.sync()
        start = clock.mark()
        out = fn()
        end = clock.mark()
        clock.sync()
        a, b = clock.seconds(start), clock.seconds(end)  # type: ignore[arg-type]  # a mark of this clock, either kind
        self.rec.spans.append(Span(self.rank, step, CHECKPOINT_KIND, name, a, b))
        return out, b - a

    def due(self, steps_done: int) -> bool:
        every = self.cfg.checkpoint_every
        return self.root is not None and every is not None and steps_done % every == 0 and steps_done < self.cfg.steps

    def save(self, steps_done: int, strategy: Any, progress: dict[str, Any]) -> None:
        """Every rank writes its own file; rank 0 then writes the manifest (the checkpoint is complete)."""

        def write() -> int:
            assert self.root is not None
            folder = step_dir(self.root, steps_done)
            folder.mkdir(parents=True, exist_ok=True)
            buf = io.BytesIO()
            torch.save({"step": steps_done, "progress": progress, "state": capture(strategy)}, buf)
            entry = _write_atomic(folder / rank_file(self.rank), buf.getvalue())
            entries: list | None = [None] * self.world if self.rank == 0 else None
            dist.gather_object(entry, entries, dst=0, group=self.group)
            if entries is not None:
                write_manifest(folder, steps_done, self.cfg, entries)
                for old in checkpoints(self.root)[:-KEEP]:
                    shutil.rmtree(old, ignore_errors=True)
            dist.barrier(group=self.group)  # nobody goes on before the checkpoint is complete
            return entry["size"]

        size, seconds = self._timed("save checkpoint", steps_done, write)
        self.saved.append({"step": steps_done, "seconds": seconds, "bytes": size})

    def load(self, strategy: Any) -> dict[str, Any] | None:
        """Restore the last good checkpoint of `resume`, on every rank; its progress (step, losses, ...) or None."""
        if self.resume_root is None:
            return None

        def read() -> dict[str, Any]:
            assert self.resume_root is not None
            choice: list[Any] = [None]
            if self.rank == 0:
                found = last_good(self.resume_root)
                if found is None:
                    choice[0] = f"no checkpoint under {self.resume_root} verifies"
                else:
                    folder, manifest = found
                    saved = RunConfig.from_dict(manifest["config"])
                    problem = compatibility_problem(saved, self.cfg, reshard_kind(saved))
                    if manifest["world"] != self.world and reshard_kind(saved) is None and not problem:
                        problem = f"the checkpoint has {manifest['world']} processes, this run {self.world}: {saved.parallelism} cannot reshard"
                    choice[0] = problem or (str(folder), manifest["world"], manifest["saved_at"])
            dist.broadcast_object_list(choice, src=0, group=self.group)
            if isinstance(choice[0], str) and self.optional and choice[0].startswith("no checkpoint"):
                return {}
            if isinstance(choice[0], str):
                raise ValueError(f"resume: {choice[0]}")
            folder, saved_world, saved_at = Path(choice[0][0]), choice[0][1], choice[0][2]
            if saved_world == self.world:
                blob = load_rank(folder, self.rank)
                state = blob["state"]
            else:
                blobs = [load_rank(folder, r) for r in range(saved_world)]
                blob = dict(blobs[0], progress=dict(blobs[0]["progress"]))
                blob["progress"]["losses"] = merged_losses([b["progress"]["losses"] for b in blobs], self.rank)
                kind = reshard_kind(self.cfg) or "replicated"
                sizes = [p.numel() for p in _opt_params(getattr(strategy, "opt", None))]
                state = reshard([b["state"] for b in blobs], self.rank, sizes, kind)
            restore(strategy, state)
            return {
                **blob["progress"],
                "step": blob["step"],
                "folder": str(folder),
                "from_world": saved_world,
                "saved_at": saved_at,
            }

        progress, seconds = self._timed("load checkpoint", 0, read)
        if not progress:
            return None
        self.resumed = {k: progress[k] for k in ("step", "folder", "from_world", "saved_at")} | {"load_s": seconds}
        if self.attempt_started_at is not None:  # a restart: the work since the checkpoint, detecting, restarting
            self.resumed["lost_s"] = self.attempt_started_at - progress["saved_at"]
        return progress

    def extra(self) -> dict[str, Any]:
        return {"checkpoints": self.saved, "resumed": self.resumed}


# ---- a survivor's hand-over (ps_recovery='replicate') -----------------------------------------
def hand_over(folder: str | Path, rank: int, strategy: Any, progress: dict[str, Any]) -> None:
    """A rank whose peer died writes what it holds, as a checkpoint's rank file would (its `step`: the steps it
    finished, `steps_begun`, and the wall time its last finished step ended), into `folder`; the launcher composes
    the relaunch's checkpoint from these (runtime/recovery.py). Nothing collective: the group is broken. It never
    raises: the error that brought the rank here is the one to report."""
    try:
        rec = strategy.rec
        since = rec.clock.seconds(rec.clock.mark()) - rec.steps[-1]["end_s"] if rec.steps else None
        blob = {
            "step": len(progress["losses"]),
            "steps_begun": len(progress["lrs"]),
            "last_step_end_at": time.time() - since if since is not None else None,
            "progress": progress,
            "state": capture(strategy),
        }
        buf = io.BytesIO()
        torch.save(blob, buf)
        Path(folder).mkdir(parents=True, exist_ok=True)
        _write_atomic(Path(folder) / rank_file(rank), buf.getvalue())
    except Exception as exc:  # noqa: BLE001 - reported, and the original error goes on
        print(f"dpkit: rank {rank} could not hand over its state: {type(exc).__name__}: {exc}", flush=True)


def first_attempt(resuming: bool) -> bool:
    """Fault injection fires on a run's first attempt only: not when resuming, not in a torchrun restart."""
    return not resuming and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
