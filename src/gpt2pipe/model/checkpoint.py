"""Model snapshots (evaluated later) and training states (for --resume), in one safe file format.

Both are torch.save'd dicts holding only tensors and plain values (numbers, strings, lists, dicts), written
atomically, and read with `torch.load(weights_only=True)`: loading a file someone hands you never runs code
(pickled objects are refused). Loading checks the format tag and that the model shape matches before any
tensor is used.
"""

from __future__ import annotations

import codecs
import dataclasses
import pickle
import re
import zipfile
from pathlib import Path
from typing import NoReturn

import torch

from gpt2pipe import Gpt2pipeError
from gpt2pipe.config import ModelConfig
from gpt2pipe.files import atomic_path, free_bytes, size_text
from gpt2pipe.model.gpt import GPT

FORMAT = "gpt2pipe-checkpoint"
VERSION = 2  # 2: loadable with weights_only=True (version 1 pickled RNG and numpy objects)


def save(path: str | Path, model: GPT, step: int, weights: dict | None = None, **extra) -> None:
    """weights: the model's state_dict as gathered by the caller (a sharded model's own state_dict holds only
    this process's shards); by default the model's own."""
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "model_config": dataclasses.asdict(model.config),
        "step": step,
        "model": weights if weights is not None else {k: v.detach().cpu() for k, v in model.state_dict().items()},
        **extra,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    needed = write_size(payload)
    if needed > (free := free_bytes(path.parent)):  # refused before a byte is written, not midway
        raise Gpt2pipeError(f"{path}: not written: it needs ~{size_text(needed)} and {path.parent} has "
                            f"{size_text(free)} free (the files already there are kept)")
    try:
        with atomic_path(path) as tmp:  # on error the partial file is removed and nothing is replaced
            torch.save(payload, tmp)
    except (OSError, RuntimeError) as e:  # e.g. a full disk or quota: torch's "unexpected pos" RuntimeError
        first = (str(e).strip().splitlines() or [""])[0]
        raise Gpt2pipeError(f"{path}: writing it failed ({type(e).__name__}: {first[:200]}); it needs "
                            f"~{size_text(needed)} and {path.parent} has {size_text(free_bytes(path.parent))} "
                            "free (the files already there are kept)") from None


def write_size(payload) -> int:
    """About the bytes torch.save writes for `payload`: each tensor storage once and whole (a view saves all of
    its storage), plus slack for the pickled plain values and the zip's per-record headers and alignment."""
    storages: dict = {}

    def walk(x) -> None:
        if isinstance(x, torch.Tensor):
            s = x.untyped_storage()
            storages[(s.device, s.data_ptr())] = s.nbytes()
        elif isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v)

    walk(payload)
    total = sum(storages.values())
    return total + total // 100 + (1 << 20)


def read(path: str | Path, mmap: bool = False) -> dict:
    """The checkpoint's dict, without executing anything in the file. mmap: tensors stay on disk until read."""
    path = Path(path)
    if not path.is_file():
        raise Gpt2pipeError(f"{path}: checkpoint not found")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; torch.load's errors on others are cryptic
        unreadable(path, _not_zip(path))
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # truncated, foreign or code-carrying files all end here
        unreadable(path, _load_error(e))
    if not isinstance(ck, dict) or ck.get("format") != FORMAT:
        unreadable(path, "a torch file without gpt2pipe's format tag; `gpt2pipe import` reads Hugging Face and "
                   "llm.c models")
    if ck.get("version") != VERSION:
        unreadable(path, f"format version {ck.get('version')}, this gpt2pipe reads version {VERSION}")
    return ck


def unreadable(path: Path, why: str) -> NoReturn:
    raise Gpt2pipeError(f"{path}: not a checkpoint gpt2pipe can read ({why})") from None


def _not_zip(path: Path) -> str:
    with path.open("rb") as f:
        head = f.read(512)
    if not head:
        return "an empty file"
    try:  # incremental: a character cut at byte 512 is not an error
        text = codecs.getincrementaldecoder("utf-8")().decode(head)
    except UnicodeDecodeError:
        text = ""
    if text and all(c.isprintable() or c.isspace() for c in text):
        return "a text file, not one torch.save wrote"
    return "not a zip archive as torch.save writes: another format, or cut short"


def _load_error(e: Exception) -> str:
    """torch.load's failure in a few words. Its own message can advise loading with weights_only=False, which
    would run code from the file: that advice is never passed on."""
    message = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
    if isinstance(e, pickle.UnpicklingError) or "weights_only" in message:
        found = re.search(r"GLOBAL ([\w.]+)", message)
        what = f" ({found.group(1)})" if found else ""
        return f"it holds Python objects{what} besides tensors and plain values, which gpt2pipe never unpickles"
    first = (message.strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {first[:200]}" if first else type(e).__name__


def check_shape(path: str | Path, got: ModelConfig, expected: ModelConfig) -> None:
    """One line naming every field in which the model at `path` differs from the configured one (n_kv_head
    and mlp_hidden compared as resolved: null and the width it stands for are the same model)."""
    got, expected = got.resolved(), expected.resolved()
    if got != expected:
        diff = ", ".join(f"{f.name} {getattr(got, f.name)} != {getattr(expected, f.name)}"
                         for f in dataclasses.fields(ModelConfig) if getattr(got, f.name) != getattr(expected, f.name))
        raise Gpt2pipeError(f"{path}: checkpoint is for another model shape (checkpoint vs config: {diff})")


def model_config(path: str | Path, ck: dict) -> ModelConfig:
    try:
        cfg = ModelConfig(**ck["model_config"])
    except (KeyError, TypeError) as e:
        unreadable(Path(path), f"no valid model config: {type(e).__name__} {e}")
    if problem := cfg.problem():  # a shape no model can have: refused before anything is built
        unreadable(Path(path), f"its model config: {problem}")
    return cfg


def load_model(path: str | Path, expected: ModelConfig | None = None) -> tuple[GPT, dict]:
    """A GPT built from the checkpoint's own config (checked against `expected` if given), fp32 weights."""
    ck = read(path)
    cfg = model_config(path, ck)
    if expected is not None:
        check_shape(path, cfg, expected)
    model = GPT(cfg)
    try:
        model.load_state_dict({k: v.float() for k, v in ck["model"].items()})
    except (KeyError, AttributeError, RuntimeError) as e:  # load_state_dict's message spans lines: joined, cut
        unreadable(Path(path), f"its weights do not fit its model config: {' '.join(str(e).split())[:200]}")
    return model, ck
