"""The prompts RL continues, as token lists that start with <|endoftext|> (a document start, as pre-training
saw every document begin):

- a file the user gives: `.jsonl` (one object per line with a "prompt" string) or `.parquet` (a `prompt`
  column); every row is checked before any model exists, and a bad one is named by file and row;
- else prefixes drawn from the run's validation shard: `rl.prompt_tokens` tokens at document starts (seeded),
  so the demo needs nothing new. The first `rl.eval_prompts` of them are held out for evaluation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gpt2pipe import Gpt2pipeError
from gpt2pipe.files import jsonl_objects
from gpt2pipe.data.tokenizer import EOT, gpt2


def from_file(path: str | Path, max_tokens: int) -> list[list[int]]:
    """Token lists of the file's prompts (each longer one keeps its last max_tokens tokens)."""
    path = Path(path)
    if not path.is_file():
        raise Gpt2pipeError(f"{path}: prompt file not found")
    texts = _read_parquet(path) if path.suffix == ".parquet" else _read_jsonl(path)
    if not texts:
        raise Gpt2pipeError(f"{path}: no prompts in the file")
    enc = gpt2()
    return [[EOT, *enc.encode_ordinary(t)[-(max_tokens - 1):]] for t in texts]


def _read_jsonl(path: Path) -> list[str]:
    texts = []
    for n, row in jsonl_objects(path, 'an object with a "prompt" string'):
        if not isinstance(row.get("prompt"), str):
            raise Gpt2pipeError(f"{path}:{n}: expected an object with a \"prompt\" string")
        texts.append(row["prompt"])
    return texts


def _read_parquet(path: Path) -> list[str]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow's errors name no file
        raise Gpt2pipeError(f"{path}: not a readable parquet file ({e})") from None
    if "prompt" not in table.column_names:
        raise Gpt2pipeError(f"{path}: no 'prompt' column (columns: {', '.join(table.column_names)})")
    texts = table.column("prompt").to_pylist()
    if (bad := next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)) is not None:
        raise Gpt2pipeError(f"{path}: row {bad} of column 'prompt' is not a string")
    return texts


def from_shard(tokens: np.ndarray, n: int, length: int, seed: int, where: str = "val shard") -> list[list[int]]:
    """n prompts of EOT + `length` tokens, each the start of a different document at least that long, drawn
    without replacement (seeded); fewer documents than n: all of them."""
    ends = np.flatnonzero(tokens == EOT)
    starts = ends + 1
    # a document qualifies when its first `length` tokens hold no EOT
    nxt = np.append(ends[1:], len(tokens))
    starts = starts[(nxt - starts) >= length]
    if len(starts) == 0:
        raise Gpt2pipeError(f"{where}: no document of {length} tokens or more to draw prompts from "
                            f"(lower rl.prompt_tokens or give rl.prompts)")
    rng = np.random.default_rng(seed)
    chosen = rng.choice(starts, size=min(n, len(starts)), replace=False)
    return [[EOT, *tokens[s : s + length].tolist()] for s in chosen]


def split(prompts: list[list[int]], n_eval: int) -> tuple[list[list[int]], list[list[int]]]:
    """(train prompts, held-out eval prompts): the first n_eval are held out, but never all of them."""
    if len(prompts) < 2 and n_eval:
        raise Gpt2pipeError(f"rl: {len(prompts)} prompt(s): too few to hold out rl.eval_prompts for evaluation")
    k = min(n_eval, len(prompts) // 2)
    return prompts[k:], prompts[:k]


def batch_of(prompts: list[list[int]], step: int, size: int, seed: int) -> list[list[int]]:
    """The prompts of step `step`: consecutive slices of a seeded permutation per pass over the prompts, so
    any step's batch follows from (seed, step) alone and a resumed run draws exactly what it would have."""
    n, perms, out = len(prompts), {}, []
    for i in range(step * size, (step + 1) * size):
        epoch, k = divmod(i, n)
        if epoch not in perms:
            perms[epoch] = np.random.default_rng([seed, epoch]).permutation(n)
        out.append(prompts[perms[epoch][k]])
    return out
