"""HellaSwag, completion style, scored the way llm.c and build-nanogpt score it.

Each example is a context and 4 endings. For every ending we compute the cross-entropy of its tokens
given the context; the prediction is the ending with the lowest mean per-token loss (acc_norm, the
number llm.c reports) — `acc` uses the summed loss instead.

Inputs: the HellaSwag jsonl (`ctx`, `endings`, `label`) or llm.c's eval `.bin` (header 20240522).
"""

from __future__ import annotations

import hashlib
import json
import urllib.request
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from gpt2pipe import Gpt2pipeError
from gpt2pipe.files import atomic_path
from gpt2pipe.data.tokenizer import gpt2
from gpt2pipe.progress import tqdm

MAGIC, VERSION = 20240522, 1
HEADER_INTS = 256
START = 2**16 - 1
FULL_URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl"
FULL_ROWS = 10042
# sha256 of the llm.c-format .bin that encode_bin makes from the validation split whose tokens equal
# llm.c's hellaswag_val.bin: a downloaded jsonl is accepted only if it tokenizes to exactly these tokens
# (the check that matters for numbers comparable with llm.c, whatever the file's whitespace or key order)
FULL_BIN_SHA256 = "59509ba401e820f2cd8b579141354e8ebc14a20f8e2cc181f1836f1d0e59eb99"
DEMO_SHA256 = "bf2b442240d7b37166331464256682cb2f021a546b7fa7a917a23055c5736018"


@dataclass(frozen=True)
class Example:
    index: int
    label: int
    context: list[int]
    endings: list[list[int]]


def _ending_text(ending: str) -> str:
    # llm.c encodes " " + ending; files decoded from llm.c's .bin already carry that space
    return ending if ending[:1].isspace() else " " + ending


def read_jsonl(path: str | Path, max_examples: int | None = None) -> list[Example]:
    enc, out = gpt2(), []
    path = Path(path)
    if not path.is_file():
        raise Gpt2pipeError(f"{path}: HellaSwag file not found")
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if max_examples is not None and len(out) >= max_examples:
                break
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                ctx, endings, label = row["ctx"], row["endings"], int(row["label"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                raise Gpt2pipeError(f"{path}:{lineno}: not a HellaSwag row ({type(e).__name__}: {e})") from None
            if not isinstance(ctx, str):
                raise Gpt2pipeError(f"{path}:{lineno}: ctx must be a string, got {type(ctx).__name__}")
            if not isinstance(endings, list) or len(endings) != 4 or not all(isinstance(e, str) for e in endings):
                got = f"a list of {len(endings)}" if isinstance(endings, list) else f"a {type(endings).__name__}"
                raise Gpt2pipeError(f"{path}:{lineno}: endings must be a list of 4 strings, got {got}")
            if not 0 <= label < 4:
                raise Gpt2pipeError(f"{path}:{lineno}: label must be 0..3, got {label}")
            out.append(Example(len(out), label, enc.encode_ordinary(ctx),
                               [enc.encode_ordinary(_ending_text(e)) for e in endings]))
    if not out:
        raise Gpt2pipeError(f"{path}: no HellaSwag examples")
    return out


def encode_bin(examples: list[Example]) -> bytes:
    """llm.c's eval file: 256-int32 header, then per example a uint16 stream
    START, nbytes, index, label, n_endings, len(ctx), ctx..., then len(ending), ending... per ending."""
    stream: list[int] = []
    longest = 0
    for ex in examples:
        s = [START, 0, ex.index, ex.label, len(ex.endings), len(ex.context), *ex.context]
        for e in ex.endings:
            s += [len(e), *e]
        s[1] = 2 * len(s)
        if s[1] >= 2**16:
            raise ValueError(f"example {ex.index} is too long for the .bin format")
        longest = max(longest, s[1])
        stream += s
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:4] = (MAGIC, VERSION, len(examples), longest)
    return header.tobytes() + np.asarray(stream, dtype="<u2").tobytes()


def write_bin(path: str | Path, examples: list[Example]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(encode_bin(examples))


def read_bin(path: str | Path, max_examples: int | None = None) -> list[Example]:
    path = Path(path)
    if not path.is_file():
        raise Gpt2pipeError(f"{path}: HellaSwag file not found")
    raw = path.read_bytes()
    if len(raw) < HEADER_INTS * 4:
        raise Gpt2pipeError(f"{path}: corrupt eval file, shorter than its header")
    header = np.frombuffer(raw, dtype="<i4", count=HEADER_INTS)
    if header[0] != MAGIC or header[1] != VERSION:
        raise Gpt2pipeError(f"{path}: not an llm.c eval file (magic {header[0]} version {header[1]}, expected {MAGIC} {VERSION})")
    n = int(header[2])
    data = np.frombuffer(raw, dtype="<u2", offset=HEADER_INTS * 4).tolist()
    out, pos = [], 0
    try:
        for _ in range(n if max_examples is None else min(n, max_examples)):
            if data[pos] != START:
                raise ValueError(f"missing example delimiter at uint16 {pos}")
            nbytes, index, label, k = data[pos + 1 : pos + 5]
            p = pos + 5
            ctx_len = data[p]
            ctx = data[p + 1 : p + 1 + ctx_len]
            p += 1 + ctx_len
            endings = []
            for _ in range(k):
                endings.append(data[p + 1 : p + 1 + data[p]])
                p += 1 + data[p]
            if 2 * (p - pos) != nbytes or p > len(data):
                raise ValueError(f"example {index} has {2 * (p - pos)} bytes, header says {nbytes}")
            out.append(Example(index, label, ctx, endings))
            pos = p
    except (IndexError, ValueError) as e:
        raise Gpt2pipeError(f"{path}: corrupt eval file ({e})") from None
    return out


def load(path: str | Path, max_examples: int | None = None) -> list[Example]:
    return (read_bin if str(path).endswith(".bin") else read_jsonl)(path, max_examples)


def demo_jsonl() -> Path:
    return Path(str(resources.files("gpt2pipe") / "assets" / "hellaswag_val_demo.jsonl"))


def fetch_full(dest: str | Path, url: str = FULL_URL) -> Path:
    """Download the official validation jsonl and accept it only if it tokenizes to llm.c's exact .bin."""
    dest = Path(dest)
    with atomic_path(dest) as tmp:
        try:
            urllib.request.urlretrieve(url, tmp)
        except OSError as e:
            raise Gpt2pipeError(f"{url}: download failed ({e})") from None
        check_full(tmp)
    return dest


def check_full(path: str | Path) -> None:
    examples = read_jsonl(path)
    if len(examples) != FULL_ROWS:
        raise Gpt2pipeError(f"{path}: {len(examples)} rows, the HellaSwag validation split has {FULL_ROWS}")
    got = hashlib.sha256(encode_bin(examples)).hexdigest()
    if got != FULL_BIN_SHA256:
        raise Gpt2pipeError(f"{path}: tokenizes to sha256 {got}, not llm.c's hellaswag_val.bin ({FULL_BIN_SHA256})")


def fit_row(context: list[int], ending: list[int], block_size: int) -> tuple[list[int], int]:
    """One row of at most block_size tokens and how many of its last tokens are the (scored) ending.

    The ending is kept whole and the context loses tokens from its start (its end, next to the ending, is
    what the ending's first token is predicted from). An ending that alone leaves no room for one context
    token is cut at its end to block_size - 1 tokens: only its first tokens are scored then, which is the
    best a model with this block_size can do, and it keeps scoring from crashing on an odd row."""
    if len(ending) >= block_size and context:
        ending = ending[: block_size - 1]
    ending = ending[:block_size]
    room = block_size - len(ending)
    return (context[-room:] if room else []) + ending, len(ending)


def render(examples: list[Example], block_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows of context+ending tokens (4 per example, right-padded), the ending mask, and the labels.
    A row longer than block_size loses tokens from the front of its context (see fit_row)."""
    rows, masks = [], []
    for ex in examples:
        for e in ex.endings:
            toks, n_ending = fit_row(list(ex.context), list(e), block_size)
            rows.append(toks)
            masks.append([0] * (len(toks) - n_ending) + [1] * n_ending)
    L = max(map(len, rows))
    tokens = torch.zeros(len(rows), L, dtype=torch.long)
    mask = torch.zeros(len(rows), L, dtype=torch.long)
    for i, (r, m) in enumerate(zip(rows, masks)):
        tokens[i, : len(r)] = torch.tensor(r)
        mask[i, : len(m)] = torch.tensor(m)
    return tokens, mask, torch.tensor([ex.label for ex in examples])


def ending_losses(logits: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed and mean cross-entropy of each row's ending tokens (a position predicts the next token)."""
    losses = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), tokens[:, 1:], reduction="none")
    m = mask[:, 1:].to(losses.dtype)
    total = (losses * m).sum(1)
    return total, total / m.sum(1)


@torch.no_grad()
def score(model, examples: list[Example], device: torch.device, autocast_ctx, batch_examples: int = 4,
          progress: bool = True) -> dict:
    """acc_norm (mean loss), acc (summed loss) and the number of examples scored."""
    model.eval()
    correct = correct_norm = 0
    block = model.config.block_size
    for i in tqdm(range(0, len(examples), batch_examples), desc="hellaswag", unit="batch",
                  disable=not progress, leave=False):
        chunk = examples[i : i + batch_examples]
        tokens, mask, labels = render(chunk, block)
        with autocast_ctx:
            logits, _ = model(tokens.to(device))
        total, mean = ending_losses(logits, tokens.to(device), mask.to(device))
        correct += int((total.view(-1, 4).argmin(1).cpu() == labels).sum())
        correct_norm += int((mean.view(-1, 4).argmin(1).cpu() == labels).sum())
    n = len(examples)
    return {"hellaswag_acc_norm": correct_norm / n, "hellaswag_acc": correct / n, "hellaswag_examples": n}
