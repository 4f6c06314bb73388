"""Saved states of other settings, kept rather than refused (what the workflow asks for with --retrain-on-change).

When a run's settings change what is trained, its states in `<state>/` (saved under the old settings) move to
`<state>/other/<digest of their settings>/` and training starts from step 0; when a later run has those settings
again, they move back and it resumes where they stopped. Nothing is deleted, so going back costs nothing.
Only process 0 moves files (the caller waits on a barrier before any process reads the state folder).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from gpt2pipe.config import digest
from gpt2pipe.train.state import newest_state, saved_states

OTHER = "other"


def _files(folder: Path, log: str) -> list[Path]:
    """What belongs to one run's states: the states, the snapshots they published and the log."""
    return [*saved_states(folder), *folder.glob("model_*.pt"), *[p for p in [folder / log] if p.exists()]]


def _move(files: list[Path], dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for f in files:
        os.replace(f, dest / f.name)  # same filesystem: a rename, no copy


def _free_folder(base: Path) -> Path:
    n, folder = 1, base
    while folder.exists():  # an earlier set-aside of the same settings (after a --restart): keep both
        n += 1
        folder = base.with_name(f"{base.name}-{n}")
    return folder


def keep_aside(state_dir: Path, log: str, kind: str, differences: Callable[[dict], list[str]],
               say: Callable[[str], None]) -> None:
    """Set the states of other settings aside, then bring back those of the current settings if kept.
    `differences(saved)`: the settings that differ between a saved state and this run (empty: same)."""
    saved = newest_state(state_dir, say, kind)
    if saved is not None and (diff := differences(saved)):
        dest = _free_folder(state_dir / OTHER / digest(saved.get("identity", {})))
        _move(_files(state_dir, log), dest)
        say(f"the saved run at step {saved['step']} has other settings ({'; '.join(diff)}): "
            f"kept in {dest}")
    if saved_states(state_dir) or not (state_dir / OTHER).is_dir():
        return  # states of these settings (or unreadable ones, refused by the caller) are in place
    for folder in sorted(p for p in (state_dir / OTHER).iterdir() if p.is_dir()):
        kept = newest_state(folder, say, kind)
        if kept is not None and not differences(kept):
            _move(_files(folder, log), state_dir)
            folder.rmdir()
            say(f"{folder} holds a run of these settings at step {kept['step']}: resuming it")
            return
