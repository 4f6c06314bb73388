"""Preference pairs: rows {prompt, chosen, rejected} of three strings.

- `read(path)`: a .jsonl file the user gives; every row is checked before any model exists and a bad one is
  named by file and line (a row without "rejected" ends the stage in one line, nothing written).
- `from_samples(...)`: the issue's check without a download or a human: pairs of continuations of each
  prompt sampled from the starting model, the more positive by VADER chosen, ties and pairs closer than
  `margin` dropped.
- `from_text(...)`: a known preference taken from text alone: a line of a corpus with its next line as the
  continuation, against a line of the opposite sentiment from elsewhere (VADER-positive chosen over
  VADER-negative); half the pairs have the natural continuation rejected, so "the next line" is not the label.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from gpt2pipe import Gpt2pipeError
from gpt2pipe.files import jsonl_objects

FIELDS = ("prompt", "chosen", "rejected")


@dataclass(frozen=True)
class Pair:
    prompt: str
    chosen: str
    rejected: str


def read(path: str | Path) -> list[Pair]:
    """The file's pairs, each row checked: an object with prompt, chosen and rejected strings."""
    path = Path(path)
    if not path.is_file():
        raise Gpt2pipeError(f"{path}: preference pair file not found")
    pairs = []
    try:
        for n, row in jsonl_objects(path, "an object with prompt, chosen and rejected strings"):
            missing = [k for k in FIELDS if not isinstance(row.get(k), str)]
            if missing:
                raise Gpt2pipeError(f"{path}:{n}: no {' / '.join(missing)} string (a pair is "
                                    "{\"prompt\", \"chosen\", \"rejected\"})")
            pairs.append(Pair(row["prompt"], row["chosen"], row["rejected"]))
    except UnicodeDecodeError as e:
        raise Gpt2pipeError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if len(pairs) < 2:
        raise Gpt2pipeError(f"{path}: {len(pairs)} preference pair(s): at least 2 are needed (one held out)")
    return pairs


def write(path: str | Path, pairs: list[Pair]) -> None:
    from gpt2pipe.files import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(asdict(p)) + "\n" for p in pairs))


def split(pairs: list[Pair], n_eval: int) -> tuple[list[Pair], list[Pair]]:
    """(train, held out): about n_eval pairs held out (never more than half), whole prompts at a time taken in
    the order they first appear, so no held-out prompt is trained on (a prompt may have several pairs)."""
    k = min(n_eval, len(pairs) // 2)
    counts: dict[str, int] = {}
    for p in pairs:
        counts[p.prompt] = counts.get(p.prompt, 0) + 1
    held, n = set(), 0
    for p in pairs:
        if n >= k:
            break
        if p.prompt not in held:
            held.add(p.prompt)
            n += counts[p.prompt]
    train, out = [p for p in pairs if p.prompt not in held], [p for p in pairs if p.prompt in held]
    if not train or not out:  # one prompt for every pair: hold out pairs, not prompts
        return pairs[k:], pairs[:k]
    return train, out


def vader():
    """VADER's compound score (-1 .. 1) of each text."""
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    analyzer = SentimentIntensityAnalyzer()
    return lambda texts: [analyzer.polarity_scores(t)["compound"] for t in texts]


def label(prompts: list[str], a: list[str], b: list[str], margin: float, score=None) -> list[Pair]:
    """Pairs of continuations a[i], b[i] of prompts[i], the more positive chosen; pairs whose scores differ by
    less than margin (ties, mostly: most text is neutral to VADER) are dropped."""
    score = score or vader()
    sa, sb = score(a), score(b)
    return [Pair(p, x, y) if s >= t else Pair(p, y, x)
            for p, x, y, s, t in zip(prompts, a, b, sa, sb) if abs(s - t) >= margin and s != t and x != y]


def from_samples(model, prompts: list[list[int]], response_tokens: int, temperature: float, margin: float,
                 seed: int, per_prompt: int = 1, batch: int = 512, score=None) -> list[Pair]:
    """2 x per_prompt sampled continuations of each prompt (token lists starting with <|endoftext|>), paired
    two by two and labelled by VADER."""
    import torch

    from gpt2pipe.data.tokenizer import EOT, gpt2
    from gpt2pipe.model.decode import sample

    enc = gpt2()
    device = next(model.parameters()).device
    gen = torch.Generator(device).manual_seed(seed)
    text = lambda toks: enc.decode([t for t in toks if t != EOT])  # noqa: E731
    rows = [p for p in prompts for _ in range(2 * per_prompt)]
    out_texts = []
    for i in range(0, len(rows), batch):
        out = sample(model, rows[i : i + batch], response_tokens, temperature, None, gen, EOT, pad=EOT)
        out_texts += [text(r[:n]) for r, n in zip(out.tokens.tolist(), out.lengths.tolist())]
    return label([text(p) for p in rows[0::2]], out_texts[0::2], out_texts[1::2], margin, score)


def from_text(text: str, n: int, seed: int, min_score: float = 0.5, max_chars: int = 200) -> list[Pair]:
    """Up to n pairs from the lines of a corpus (see the module's doc): positive lines score >= min_score,
    negative ones <= -min_score, and every line comes from the text itself."""
    lines = [ln.strip() for ln in text.splitlines()]
    steps = [(lines[i], lines[i + 1]) for i in range(len(lines) - 1)
             if lines[i] and lines[i + 1] and not lines[i + 1].endswith(":") and len(lines[i + 1]) <= max_chars]
    scores = vader()([c for _, c in steps])
    pos = [s for s, v in zip(steps, scores) if v >= min_score]
    neg = [s for s, v in zip(steps, scores) if v <= -min_score]
    rng = random.Random(seed)
    rng.shuffle(pos)
    rng.shuffle(neg)
    pairs = []
    for k in range(min(n, len(pos), len(neg))):
        (pp, pc), (np_, nc) = pos[k], neg[k]
        pairs.append(Pair(pp, pc, nc) if k % 2 == 0 else Pair(np_, pc, nc))  # the natural one chosen, or rejected
    return pairs
