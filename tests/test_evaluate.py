import json

from gpt2pipe.eval import hellaswag
from gpt2pipe.train import loop as train
from gpt2pipe.eval.evaluate import evaluate_checkpoint


def test_evaluate_a_checkpoint(tiny, tiny_shards, tmp_path):
    train.train(tiny, tiny_shards, tmp_path / "run", progress=False)
    hs = tmp_path / "hs.bin"
    hellaswag.write_bin(hs, hellaswag.read_jsonl(hellaswag.demo_jsonl(), max_examples=8))
    out = tmp_path / "eval" / "step_000006.json"
    result = evaluate_checkpoint(tiny, tmp_path / "run" / "train" / "model_000006.pt", tiny_shards, hs, out)
    assert json.loads(out.read_text()) == result
    assert result["step"] == 6 and result["hellaswag_examples"] == 8
    assert 0 <= result["hellaswag_acc_norm"] <= 1
    # the in-training val loss at step 6 used the same budget and the same tokens
    log = (tmp_path / "run" / "train" / "train.log").read_text()
    assert f"s:6 tel:{result['val_loss']:.4f}" in log


def test_val_budget_past_the_split_scores_it_once(tiny, tiny_shards):
    """A val budget larger than the val split (the default 10M tokens on a small corpus) reads the split once,
    as llm.c caps its val batches, instead of scoring the same tokens again and again (found: hours of CPU)."""
    import torch

    from gpt2pipe.data.loader import ShardLoader
    from gpt2pipe.eval.val import val_loss
    from gpt2pipe.model.gpt import GPT

    val = sorted(tiny_shards.glob("*_val_*.bin"))
    loader = ShardLoader(val, 2, tiny.train.seq_len)
    model = GPT(tiny.model)
    calls = []
    real = loader.next_batch
    loader.next_batch = lambda: calls.append(1) or real()
    three_passes = 3 * loader.per_epoch * 2 * tiny.train.seq_len
    whole = val_loss(model, loader, three_passes, torch.device("cpu"), torch.autocast("cpu", enabled=False))
    assert len(calls) == loader.per_epoch
    calls.clear()
    exact = val_loss(model, loader, loader.per_epoch * 2 * tiny.train.seq_len, torch.device("cpu"),
                     torch.autocast("cpu", enabled=False))
    assert len(calls) == loader.per_epoch and exact == whole


def test_an_rl_checkpoint_of_another_shape_is_evaluated_with_its_own(tiny, tiny_shards, tmp_path, capsys):
    """The workflow's rl_evaluate: an RL policy has rl.init_from's shape, which need not be the run's model
    section; --own-shape takes it from the checkpoint (without it, the shape check refuses the file)."""
    import dataclasses

    import yaml

    from gpt2pipe.cli import main
    from gpt2pipe.model import checkpoint
    from gpt2pipe.model.gpt import GPT

    other = GPT(dataclasses.replace(tiny.model, n_layer=1))
    ck = tmp_path / "rl" / "model_000002.pt"
    checkpoint.save(ck, other, 2, rl_step=2)  # as the rl stage writes its checkpoints
    hs = tmp_path / "hs.bin"
    hellaswag.write_bin(hs, hellaswag.read_jsonl(hellaswag.demo_jsonl(), max_examples=8))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(tiny.raw))
    args = ["evaluate", "-c", str(cfg), "--checkpoint", str(ck), "--shards", str(tiny_shards), "--hellaswag", str(hs),
            "--out", str(tmp_path / "rl" / "evaluate_000002.json")]
    assert main(args) == 2 and "checkpoint is for another model shape" in capsys.readouterr().err
    assert main([*args, "--own-shape"]) == 0
    result = json.loads((tmp_path / "rl" / "evaluate_000002.json").read_text())
    assert result["step"] == 2 and result["val_loss"] > 0 and result["hellaswag_examples"] == 8
