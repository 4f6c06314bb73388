"""Stage 4: evaluate one model snapshot — validation loss on a fixed token budget and HellaSwag."""

from __future__ import annotations

import time
from pathlib import Path


from gpt2pipe.model.load import load_any
from gpt2pipe.config import Config
from gpt2pipe.eval.hellaswag import load as load_hellaswag
from gpt2pipe.eval.hellaswag import score as score_hellaswag
from gpt2pipe.files import write_json
from gpt2pipe.data.loader import ShardLoader
from gpt2pipe.eval.val import val_loss
from gpt2pipe.device import autocast, autocast_dtype, pick_device
from gpt2pipe.data.llmc_format import ShardSet


def evaluate_checkpoint(cfg: Config, ckpt: Path, shards_dir: Path | None, hellaswag_file: Path | None,
                        out: Path) -> dict:
    """Val loss (unless shards_dir is None) and HellaSwag (unless hellaswag_file is None) of one model."""
    device = pick_device(cfg.train.device)
    ctx = autocast(device, autocast_dtype(device, cfg.train.dtype))
    # read every input before the model touches the device: bad input fails fast
    shards = ShardSet.open(shards_dir) if shards_dir is not None else None
    examples = load_hellaswag(hellaswag_file, cfg.eval.hellaswag_max_examples) if hellaswag_file else None
    model, ck = load_any(ckpt, cfg.model)
    model.to(device)
    t0 = time.time()
    result = {"step": ck["step"], "checkpoint": str(ckpt), "tokens_seen": ck.get("tokens_seen"), "val_loss": None}
    if shards is not None:
        seq_len = min(cfg.train.seq_len, model.config.block_size)
        loader = ShardLoader(shards.val, cfg.eval.batch_size, seq_len, vocab_size=model.config.vocab_size)
        result["val_loss"] = val_loss(model, loader, cfg.eval.val_tokens, device, ctx)
    if examples is not None:
        result.update(score_hellaswag(model, examples, device, ctx, batch_examples=max(1, cfg.eval.batch_size // 4)))
    result["eval_seconds"] = round(time.time() - t0, 2)
    write_json(out, result)
    return result
