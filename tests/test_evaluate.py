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
