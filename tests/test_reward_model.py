"""The reward-model stage (gpt2pipe reward-model) and its use in RL: Bradley–Terry training on real pairs
(tests/data/sentiment_pairs.jsonl, VADER-labelled lines of Tiny Shakespeare), the head reading the last real
token whatever the padding, bad pair files refused in one line before any training, and PPO with the reward
model as its reward and its value model's start."""

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from gpt2pipe import Gpt2pipeError, config
from gpt2pipe.cli import main
from gpt2pipe.config import ModelConfig
from gpt2pipe.model import checkpoint
from gpt2pipe.model.gpt import GPT
from gpt2pipe.reward_model import model as rm_mod, pairs as pairs_mod
from gpt2pipe.reward_model.train import run as train_rm
from conftest import tiny_config

PAIRS = Path(__file__).parent / "data" / "sentiment_pairs.jsonl"
SMALL = {"n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 64}


def random_init(path, seed=0, **shape):
    torch.manual_seed(seed)
    checkpoint.save(path, GPT(ModelConfig(**{**SMALL, **shape})), 0)
    return path


@pytest.fixture
def rm_setup(tmp_path):
    """(raw config with a reward_model section on the real pairs, run folder)."""
    raw = tiny_config(tmp_path, model=SMALL)
    raw["reward_model"] = {"init_from": str(random_init(tmp_path / "init.pt")), "pairs": str(PAIRS),
                           "eval_pairs": 200, "epochs": 2, "batch_size": 32, "forward_batch": 32,
                           "learning_rate": 3e-3, "max_tokens": 64}
    return raw, tmp_path / "run"


def test_the_pairs_file_is_the_one_documented():
    pairs = pairs_mod.read(PAIRS)
    assert len(pairs) == 1000 and all(p.chosen != p.rejected for p in pairs)
    score = pairs_mod.vader()
    assert min(score([p.chosen for p in pairs[:50]])) >= 0.5 and max(score([p.rejected for p in pairs[:50]])) <= -0.5


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_bradley_terry_loss_falls_and_held_out_pair_accuracy_rises(rm_setup, device):
    raw, run_dir = rm_setup
    raw["train"]["device"] = device  # on CUDA: bf16 autocast, fp32 weights and AdamW
    out = train_rm(config.from_dict(raw), run_dir, progress=False)
    folder = run_dir / "reward_model"
    result = json.loads((folder / "eval.json").read_text())
    # the head starts at zero: every pair ties, accuracy 1/2 and loss log 2
    assert result["before"]["accuracy"] == 0.5 and result["before"]["loss"] == pytest.approx(0.6931, abs=1e-3)
    held = result["held_out"]
    assert 200 <= held["n"] <= 210 and held["n"] + result["train_pairs"] == 1000  # whole prompts held out
    assert held["accuracy"] >= 0.65, held  # chance is 0.5; 200 held-out pairs: ± 0.07 at 95%
    assert held["loss"] < result["before"]["loss"] - 0.05
    lines = (folder / "reward_model.log").read_text().splitlines()
    head, rows = lines[0].split("\t"), [dict(zip(lines[0].split("\t"), map(float, ln.split("\t")))) for ln in lines[1:]]
    assert head == ["step", "loss", "accuracy", "lr", "seconds"]
    assert len(rows) == 2 * -(-result["train_pairs"] // 32) == result["steps"]  # 2 epochs of batches of 32
    first, last = [sum(r["loss"] for r in part) / 5 for part in (rows[:5], rows[-5:])]
    assert last < first - 0.15, (first, last)
    # the saved model scores as the trained one, normalised: mean 0, std 1 on the training responses
    rm, ck = rm_mod.load(folder / "model.pt")
    assert ck["max_tokens"] == 64
    pairs = pairs_mod.read(PAIRS)
    some = pairs[:100]
    rc = rm_mod.scores(rm, [p.prompt for p in some], [p.chosen for p in some], 64, 50)
    rr = rm_mod.scores(rm, [p.prompt for p in some], [p.rejected for p in some], 64, 50)
    assert (rc > rr).float().mean() >= 0.65
    both = torch.cat([rc, rr])
    assert abs(both.mean().item()) < 0.5 and 0.5 < both.std().item() < 2.0
    assert out["normalisation"]["gain"] > 0


def test_held_out_pairs_share_no_prompt_with_the_training_pairs():
    P = pairs_mod.Pair
    pairs = [P("a", "x", "y"), P("b", "x", "y"), P("a", "z", "w"), P("c", "x", "y"), P("d", "x", "y"), P("b", "u", "v")]
    train, held = pairs_mod.split(pairs, 3)
    assert {p.prompt for p in held} == {"a", "b"} and len(held) == 4 and {p.prompt for p in train} == {"c", "d"}
    train, held = pairs_mod.split([P("a", "x", "y")] * 4, 2)  # a single prompt: pairs are held out instead
    assert len(train) == len(held) == 2


@pytest.mark.parametrize("arch", [{}, {"pos_embedding": "rope", "norm": "rmsnorm", "mlp": "swiglu", "bias": False}],
                         ids=["gpt2", "llama"])
def test_the_head_reads_the_last_real_token_and_padding_changes_nothing(arch):
    torch.manual_seed(0)
    rm = rm_mod.RewardModel(GPT(ModelConfig(**{**SMALL, **arch}))).eval()
    torch.nn.init.normal_(rm.head.weight)
    short, long = [50256, 10, 11, 12], [50256, *range(100, 140)]
    alone, _ = rm_mod.right_pad([short], "cpu")
    with torch.no_grad():
        a = rm(alone, torch.tensor([4]))
        seq, lengths = rm_mod.right_pad([short, long], "cpu")
        assert seq.shape == (2, 41) and lengths.tolist() == [4, 41]
        b = rm(seq, lengths)
        assert torch.allclose(a[0], b[0], atol=1e-5)  # 37 padding tokens after it: the same score
        seq[0, 4:] = 777  # other padding: the same score
        assert torch.allclose(rm(seq, lengths)[0], b[0], atol=1e-5)
        seq[0, 3] = 13  # the last real token: another score
        assert not torch.allclose(rm(seq, lengths)[0], b[0], atol=1e-3)
    assert rm_mod.bradley_terry(torch.tensor([2.0]), torch.tensor([0.0])).item() == pytest.approx(
        -torch.nn.functional.logsigmoid(torch.tensor(2.0)).item())


@pytest.mark.parametrize("body, message", [
    (None, "bad.jsonl: preference pair file not found"),
    ('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "chosen": "b"}\n',
     "bad.jsonl:2: no rejected string"),
    ('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "chosen": "b", "rejected": \n',
     "bad.jsonl:2: not JSON"),
    ('["a", "b", "c"]\n', "bad.jsonl:1: expected an object"),
    ('{"prompt": "a", "chosen": "b", "rejected": "c"}\n', "bad.jsonl: 1 preference pair(s): at least 2"),
    (b'{"prompt": "\xff"}\n', "bad.jsonl: not UTF-8 text"),
])
def test_a_bad_pairs_file_fails_in_one_line_before_training(rm_setup, tmp_path, capsys, body, message):
    raw, run_dir = rm_setup
    bad = tmp_path / "bad.jsonl"
    if isinstance(body, bytes):
        bad.write_bytes(body)
    elif body is not None:
        bad.write_text(body)
    # no model to start from either: the pairs are checked first, before any model is looked for
    raw["reward_model"].update(pairs=str(bad), init_from=str(tmp_path / "nothing.pt"))
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(raw))
    code = main(["reward-model", "-c", str(tmp_path / "cfg.yaml"), "--run-dir", str(run_dir), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("gpt2pipe reward-model: error:") and message in err[0], err
    assert not (run_dir / "reward_model").exists()


def test_a_missing_or_foreign_reward_model_is_one_line(tmp_path):
    from gpt2pipe.rl import rewards

    with pytest.raises(Gpt2pipeError, match="nothing.pt: no reward model"):
        rewards.build("reward_model", tmp_path / "nothing.pt")
    with pytest.raises(Gpt2pipeError, match="lm.pt: not a reward model"):
        rewards.build("reward_model", random_init(tmp_path / "lm.pt"))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(Gpt2pipeError, match="junk.pt: not a checkpoint gpt2pipe can read"):
        rewards.build("reward_model", tmp_path / "junk.pt")
    with pytest.raises(Gpt2pipeError, match="no reward_model section"):
        config.from_dict({"rl": {"reward": "reward_model"}})


def test_the_value_model_from_a_reward_model_starts_at_its_scores():
    from gpt2pipe.rl.policy import value_model_from

    torch.manual_seed(1)
    policy = GPT(ModelConfig(**SMALL))
    rm = rm_mod.RewardModel(GPT(ModelConfig(**SMALL))).eval()
    torch.nn.init.normal_(rm.head.weight)
    rm.gain.fill_(2.0)
    rm.bias.fill_(-0.5)
    value = value_model_from(policy, rm)
    seq = torch.randint(0, 50257, (3, 12))
    P = 5
    with torch.no_grad():
        v = value(seq, None, P)  # [3, 7]: the state before each response token, i.e. after seq[:, :P + j]
        for j in range(7):
            expected = rm(seq[:, : P + j], torch.full((3,), P + j))
            assert torch.allclose(v[:, j], expected, atol=1e-5)
    wte = lambda m: m.transformer.wte.weight.data_ptr()  # noqa: E731
    assert wte(value.trunk) != wte(rm.trunk)  # a copy: training the value model leaves the reward model alone


def _samples(path: Path) -> tuple[list[str], list[str]]:
    """(prompts, responses) of an rl/samples_NNNNNN.txt."""
    parts = re.split(r"^--- (?:prompt \d+|response \(step \d+\))\n", path.read_text(), flags=re.M)[1:]
    strip = lambda s: s[:-1] if s.endswith("\n") else s  # noqa: E731
    return [strip(p) for p in parts[0::2]], [strip(r) for r in parts[1::2]]


@pytest.mark.parametrize("train", [{}, pytest.param({"device": "cuda", "ops": "kernels"}, marks=pytest.mark.gpu)],
                         ids=["cpu", "cuda-kernels"])
def test_ppo_against_the_reward_model_runs_and_scores_with_it(tmp_path, train):
    """rl.reward reward_model: the held-out reward at step 0 is the reward model's score of the step-0
    samples (recomputed here from the samples file), PPO runs with its value model started from the reward
    model, and the whole chain goes through the CLI (on a GPU: the policy and value model on the kernels
    path, the reward model in bf16 autocast)."""
    from test_rl import peaked_policy, rl_log

    init = peaked_policy(tmp_path / "policy.pt")
    raw = tiny_config(tmp_path, model={"n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 64}, train=train)
    pairs = pairs_mod.read(PAIRS)[:64]
    pairs_mod.write(tmp_path / "pairs.jsonl", pairs)
    prompts = [p.prompt for p in pairs[:16]]
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    raw["reward_model"] = {"init_from": str(init), "pairs": str(tmp_path / "pairs.jsonl"), "eval_pairs": 16,
                           "batch_size": 16, "forward_batch": 16, "learning_rate": 1e-3, "max_tokens": 64}
    raw["rl"] = {"init_from": str(init), "prompts": str(tmp_path / "prompts.jsonl"), "reward": "reward_model",
                 "value_from_reward_model": True, "steps": 2, "batch_size": 8, "mini_batch_size": 8,
                 "forward_batch": 8, "max_new_tokens": 6, "prompt_tokens": 16, "eval_prompts": 8,
                 "checkpoint_every": 2, "learning_rate": 1e-3}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(raw))
    run_dir = tmp_path / "run"
    for stage in ("reward-model", "rl"):
        assert main([stage, "-c", str(tmp_path / "cfg.yaml"), "--run-dir", str(run_dir), "--no-progress"]) == 0
    rows = rl_log(run_dir)
    assert [r["step"] for r in rows] == [0, 1] and all(r["value_loss"] >= 0 for r in rows)
    scorer = rm_mod.Scorer(run_dir / "reward_model" / "model.pt")
    p, r = _samples(run_dir / "rl" / "samples_000000.txt")
    assert len(r) == 8
    held = json.loads((run_dir / "rl" / "eval_000000.json").read_text())["reward"]
    if train:
        scorer.to(torch.device("cuda"))
    assert held["mean"] == pytest.approx(scorer(p, r).mean().item(), abs=1e-4 if not train else 2e-2)
    assert held["n"] == 8 and held["ci95"] > 0  # the reward model tells these responses apart


def test_rl_does_not_resume_against_a_retrained_reward_model(tmp_path, capsys):
    """The reward model's path is the same after `gpt2pipe reward-model` runs again, its weights are not: a
    saved RL state is refused in one line instead of resumed against another reward, or (--retrain-on-change,
    as the workflow runs it) kept aside and resumed when that reward model is back."""
    from test_rl import peaked_policy

    init = peaked_policy(tmp_path / "policy.pt")
    rm = rm_mod.from_trunk(GPT(ModelConfig(n_layer=1, n_head=2, n_embd=32, block_size=64)))
    torch.nn.init.normal_(rm.head.weight)
    rm_mod.save(tmp_path / "rm.pt", rm, 1, max_tokens=32)
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps({"prompt": f"line {i}"}) + "\n" for i in range(8)))
    raw = tiny_config(tmp_path, model={"n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 64})
    raw["rl"] = {"init_from": str(init), "prompts": str(tmp_path / "prompts.jsonl"), "reward": "reward_model",
                 "reward_model": str(tmp_path / "rm.pt"), "steps": 1, "batch_size": 4, "mini_batch_size": 4,
                 "forward_batch": 4, "max_new_tokens": 4, "prompt_tokens": 8, "eval_prompts": 0, "checkpoint_every": 1}
    from gpt2pipe.rl.loop import run as rl_run

    cfg = config.from_dict(raw)
    rl_run(cfg, tmp_path / "run", progress=False)
    assert rl_run(cfg, tmp_path / "run", resume=True, progress=False)["final_step"] == 1  # same model: resumes
    shutil.copy(tmp_path / "rm.pt", tmp_path / "rm_first.pt")
    torch.nn.init.normal_(rm.head.weight)
    rm_mod.save(tmp_path / "rm.pt", rm, 1, max_tokens=32)
    with pytest.raises(Gpt2pipeError, match=r"other settings \(the reward model's weights \(retrained\)\)"):
        rl_run(cfg, tmp_path / "run", resume=True, progress=False)
    # what the workflow passes (--retrain-on-change): the state against the earlier reward model is kept aside
    # and RL starts over against the new one; with the earlier reward model back, its state resumes
    capsys.readouterr()
    assert rl_run(cfg, tmp_path / "run", resume=True, retrain_on_change=True, progress=False)["final_step"] == 1
    assert "other settings (the reward model's weights (retrained)): kept in" in capsys.readouterr().out
    (kept,) = (tmp_path / "run" / "rl_state" / "other").iterdir()
    assert list(kept.glob("state_*.pt"))
    shutil.copy(tmp_path / "rm_first.pt", tmp_path / "rm.pt")
    rl_run(cfg, tmp_path / "run", resume=True, retrain_on_change=True, progress=False)
    assert f"{kept} holds a run of these settings at step 1: resuming it" in capsys.readouterr().out
    (again,) = (tmp_path / "run" / "rl_state" / "other").iterdir()  # the second reward model's state, kept
    assert again != kept
