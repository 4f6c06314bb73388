"""The whole training state as one object, saved and restored as one.

A state file holds the model's weights, the optimizer's whole-model state (fp32 master weights and moments),
the data loader's position, the fp8 scaling history, the update guards, the RNG states and the config's
training identity — only tensors and plain values, so it loads with `weights_only=True`. States are written
as `train_state/state_NNNNNN.pt` (atomic, fsync'ed) and older ones are deleted only after the new one is
complete, so a crash at any moment leaves at least one complete state; resume takes the newest that loads.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from gpt2pipe import Gpt2pipeError, distributed
from gpt2pipe.config import LATER_TRAIN_KEYS, ModelConfig, training_identity, validate, with_sets
from gpt2pipe.data.prefetch import DeviceBatches
from gpt2pipe.distributed import World
from gpt2pipe.model import checkpoint
from gpt2pipe.model.gpt import GPT
from gpt2pipe.ops import fp8
from gpt2pipe.train.guards import UpdateGuard
from gpt2pipe.train.optimizer_protocol import Optimizer

STATE_NAME = re.compile(r"state_(\d{6})\.pt")


def rng_state() -> dict:
    """Every RNG the run touches, as tensors and plain values (no pickled numpy objects)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def identity_diff(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """`key: saved -> current` for every leaf that differs between two nested identities."""
    out = []
    for k in sorted(set(saved) | set(current)):
        a, b = saved.get(k), current.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += identity_diff(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return out


def with_new_defaults(saved: dict) -> dict:
    """An identity with the keys added to the schema since it was saved, at their defaults: a new key's default
    trains as before it existed (e.g. train.optimizer: adamw), so it never blocks a resume. The train keys that
    identities leave out at their neutral value (config.LATER_TRAIN_KEYS) are written in, so a change of one
    reads `train.lr_schedule: 'cosine' -> 'wsd'`: apply this to both identities compared."""
    defaults = training_identity(validate({}))
    defaults["train"] = {**LATER_TRAIN_KEYS, **defaults.get("train", {})}
    saved = with_sets(saved)  # saved before set-valued keys were sorted: in the config's order
    return {**defaults, **{s: {**defaults.get(s, {}), **v} if isinstance(v, dict) else v for s, v in saved.items()}}


def saved_states(state_dir: Path) -> list[Path]:
    """Complete state files, newest first (temporary files of an interrupted write never match)."""
    found = [p for p in state_dir.glob("state_*.pt") if STATE_NAME.fullmatch(p.name)]
    return sorted(found, key=lambda p: int(STATE_NAME.fullmatch(p.name).group(1)), reverse=True)


def newest_state(state_dir: Path, say=tqdm.write, kind: str = "train-state") -> dict | None:
    """The newest state of this kind that loads (memory-mapped: each process reads only what it uses); a
    damaged newest file is reported and the one before it used."""
    for path in saved_states(state_dir):
        try:
            ck = checkpoint.read(path, mmap=True)
        except Gpt2pipeError as e:
            say(f"{e}; trying the previous state")
            continue
        if ck.get("kind") == kind:
            ck["path"] = str(path)
            return ck
    return None


def newest_or_refuse(state_dir: Path, say=tqdm.write, kind: str = "train-state") -> dict | None:
    """newest_state, or None for a folder without states; states that exist but none loads are refused in
    one line naming them (starting over would delete them, with the snapshots and the log: only --restart)."""
    saved = newest_state(state_dir, say, kind)
    if saved is None and (unreadable := saved_states(state_dir)):
        raise Gpt2pipeError(f"{state_dir}: no saved state loads ({', '.join(p.name for p in unreadable)}): "
                            "pass --restart to delete them and start over")
    return saved


@dataclass
class TrainState:
    model: GPT
    optimizer: Optimizer
    loader: DeviceBatches
    guard: UpdateGuard
    identity: dict
    step: int = 0

    def save(self, state_dir: Path, world: World, tokens_per_step: int, keep: int,
             weights: dict[str, torch.Tensor] | None) -> Path | None:
        """Write state_NNNNNN.pt (collective: the optimizer gathers its shards into process 0), then delete
        all but the newest `keep` states. `weights`: the optimizer's model_weights(), gathered by the caller
        (a checkpoint step writes them into the snapshot too). Returns the file on process 0."""
        optimizer = self.optimizer.whole_state()
        # each process measures fp8 amax on its own data: keep every process's scaling state
        fp8_states = distributed.gather_objects(fp8.state_of(self.model), world)
        if not world.main:
            return None
        path = state_dir / f"state_{self.step:06d}.pt"
        checkpoint.save(path, self.model, self.step, weights=weights, kind="train-state", optimizer=optimizer,
                        loader=self.loader.state_dict(), guard=self.guard.state_dict(), rng=rng_state(),
                        fp8=fp8_states if fp8_states[0] is not None else None, identity=self.identity,
                        tokens_seen=self.step * tokens_per_step)
        for old in saved_states(state_dir)[max(1, keep):]:
            old.unlink()
        return path

    def restore(self, saved: dict, world: World, say=tqdm.write) -> None:
        """Continue exactly where `saved` left off. Weights come from the saved model tensors when the running
        model keeps the same dtype (bit-exact), otherwise from the fp32 master weights (e.g. a kernels-path
        state, bf16 weights, resumed on the torch path, fp32 weights). A kernels-path fp8 state resumed where
        the model is not converted (torch path) drops its fp8 scales, with a note."""
        current = self.model.state_dict()
        same_dtype = all(saved["model"][k].dtype == v.dtype for k, v in current.items())
        if same_dtype:
            self.optimizer.load_model_weights(saved["model"])
        self.optimizer.load_whole_state(saved["optimizer"], weights_from_master=not same_dtype)
        self.loader.load_state_dict(saved["loader"])
        self.guard.load_state_dict(saved["guard"])
        if saved.get("fp8") is not None and not fp8.is_fp8(self.model):
            # train.fp8 off the kernels path (ops torch/compile, no CUDA or CuPy): these GEMMs run in bf16, and
            # scales kept over those steps would be stale: a later fp8 resume calibrates afresh, as a new run does
            say(f"{saved.get('path', 'the saved state')}: its fp8 scaling state is dropped: this run does not "
                "convert the model to fp8 (kernels path only); a later fp8 run calibrates its scales afresh")
        elif saved.get("fp8") is not None:  # this process's own, or process 0's on another process count
            states = saved["fp8"]
            fp8.load_state(self.model, states[world.rank] if len(states) == world.size else states[0])
        set_rng_state(saved["rng"])
        self.step = int(saved["step"])


def check_resumable(saved: dict, model: ModelConfig, identity: dict) -> None:
    """Refuse, in one line, a state of another model shape, or one saved under settings that change what is
    trained (naming each key that differs); settings that don't (device, threads, cadences) may change."""
    checkpoint.check_shape(saved["path"], checkpoint.model_config(saved["path"], saved), model)
    if diff := settings_changed(saved, identity):
        raise Gpt2pipeError(f"{saved['path']}: saved by a run with other settings ({'; '.join(diff)}): restore "
                            "them to resume it, set another run_name to train these beside it, or pass --restart to "
                            "delete it and start over")


def settings_changed(saved: dict, identity: dict) -> list[str]:
    """`key: saved -> current` for each setting that changes the trained weights (empty: it resumes)."""
    return identity_diff(with_new_defaults(saved.get("identity", {})), with_new_defaults(identity))
