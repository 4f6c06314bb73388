"""Preference pairs from a corpus with a known preference, no download: a line of the text with its next line
as the continuation, against a line of the opposite VADER sentiment from elsewhere in the text (the
VADER-positive one chosen; gpt2pipe.reward_model.pairs.from_text). Wrote tests/data/sentiment_pairs.jsonl:

    PYTHONPATH=src python dev/rl/make_pairs.py data/demo/tiny_shakespeare.txt 1000 tests/data/sentiment_pairs.jsonl
"""

import sys
from pathlib import Path

from gpt2pipe.reward_model import pairs

if __name__ == "__main__":
    text, n, out = Path(sys.argv[1]).read_text(encoding="utf-8"), int(sys.argv[2]), Path(sys.argv[3])
    made = pairs.from_text(text, n, seed=0)
    pairs.write(out, made)
    print(f"{out}: {len(made)} pairs")
