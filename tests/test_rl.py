"""The RL stage (gpt2pipe rl): its arithmetic against hand-computed values, the KV-cache sampler against the
plain forward, PPO and GRPO raising a known reward on a tiny model, exact resume, and bad input."""

import json
import math
import warnings

import pytest
import torch

from gpt2pipe import Gpt2pipeError, config
from gpt2pipe.cli import main
from gpt2pipe.config import ModelConfig
from gpt2pipe.data.tokenizer import gpt2
from gpt2pipe.model import checkpoint
from gpt2pipe.model.decode import sample
from gpt2pipe.model.gpt import GPT
from gpt2pipe.rl import losses
from gpt2pipe.rl.loop import run
from gpt2pipe.rl.prompts import batch_of, from_shard
from conftest import tiny_config

# --- the arithmetic, by hand ----------------------------------------------------------------------------


def test_gae_matches_hand_computed_values():
    rewards = torch.tensor([[1.0, 0.0, 2.0], [1.0, 0.0, 2.0]])
    values = torch.tensor([[0.5, 0.2, 0.1], [0.5, 0.2, 0.1]])
    mask = torch.tensor([[1.0, 1, 1], [1, 1, 0]])  # the second response ended after two tokens
    adv, ret = losses.gae(rewards, values, mask, gamma=0.9, lam=0.8)
    # row 0: delta_2 = 2 - 0.1 = 1.9; delta_1 = 0 + 0.9*0.1 - 0.2 = -0.11; delta_0 = 1 + 0.9*0.2 - 0.5 = 0.68
    #        A_2 = 1.9, A_1 = -0.11 + 0.72*1.9 = 1.258, A_0 = 0.68 + 0.72*1.258 = 1.58576
    # row 1: the third token is not there: A_1 = 0 + 0 - 0.2 = -0.2, A_0 = 0.68 + 0.72*(-0.2) = 0.536
    assert torch.allclose(adv, torch.tensor([[1.58576, 1.258, 1.9], [0.536, -0.2, 0.0]]), atol=1e-6)
    assert torch.allclose(ret, torch.tensor([[2.08576, 1.458, 2.0], [1.036, 0.0, 0.0]]), atol=1e-6)


def test_clipped_policy_and_value_losses_match_hand_computed_values():
    old = torch.zeros(1, 3)
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.1]]))
    adv = torch.tensor([[1.0, 1.0, -1.0]])
    mask = torch.ones(1, 3)
    loss, clipfrac, approx_kl = losses.policy_loss(logp, old, adv, mask, clip=0.2)
    # ratio 1.5, A 1: max(-1.5, -1.2) = -1.2 (clipped); 0.5, A 1: max(-0.5, -0.8) = -0.5; 1.1, A -1: 1.1
    assert loss.item() == pytest.approx((-1.2 - 0.5 + 1.1) / 3)
    assert clipfrac.item() == pytest.approx(1 / 3)
    assert approx_kl.item() == pytest.approx(0.5 * sum(math.log(r) ** 2 for r in (1.5, 0.5, 1.1)) / 3)
    values, old_values, returns = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.5, 0.1]]), torch.tensor([[1.2, 0.0]])
    vloss, vclip = losses.value_loss(values, old_values, returns, torch.ones(1, 2), clip=0.2)
    # clipped values 0.7 and 0.0: 0.5 * mean(max(0.04, 0.25), max(0, 0)) = 0.0625, one of two clipped
    assert vloss.item() == pytest.approx(0.0625) and vclip.item() == pytest.approx(0.5)


def test_adaptive_kl_controller_moves_by_the_clipped_proportional_error():
    kl = losses.AdaptiveKL(0.1, target=6.0, horizon=10000)
    kl.update(12.0, n_steps=1000)  # error +1 clipped to +0.2: x (1 + 0.2 * 0.1)
    assert kl.value == pytest.approx(0.102)
    kl.update(5.7, n_steps=1000)  # error -0.05: x (1 - 0.005)
    assert kl.value == pytest.approx(0.102 * 0.995)
    fixed = losses.FixedKL(0.1)
    fixed.update(100.0, 1000)
    assert fixed.value == 0.1


def test_whitening_and_group_advantages():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1.0, 1, 1, 0]])  # the masked entry takes no part and stays 0
    w = losses.masked_whiten(x, mask)
    assert torch.allclose(w, torch.tensor([[-1.0, 0.0, 1.0, 0.0]]), atol=1e-4)  # unbiased std of 1, 2, 3 is 1
    assert torch.allclose(losses.masked_whiten(x, mask, shift_mean=False), torch.tensor([[1.0, 2.0, 3.0, 0.0]]),
                          atol=1e-4)
    adv = losses.group_advantages(torch.tensor([1.0, 3.0, 5.0, 5.0]), k=2)
    s = math.sqrt(2)  # (1, 3): mean 2, std sqrt(2); (5, 5): all equal -> 0
    assert torch.allclose(adv, torch.tensor([-1 / (s + 1e-4), 1 / (s + 1e-4), 0.0, 0.0]), atol=1e-6)
    d = torch.tensor([0.0, 1.0])
    assert torch.allclose(losses.kl_k3(torch.zeros(2), d), d.exp() - d - 1)


# --- the sampler ----------------------------------------------------------------------------------------

LLAMA = dict(pos_embedding="rope", norm="rmsnorm", mlp="swiglu", qk_norm=True, n_kv_head=2, bias=False,
             tie_embeddings=False)


@pytest.mark.parametrize("arch", [{}, LLAMA], ids=["gpt2", "llama"])
@pytest.mark.parametrize("attention", ["sdpa", "matmul", "reduce"])
def test_kv_cache_sampler_equals_the_plain_forward_with_left_padding(arch, attention):
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=2, n_head=4, n_embd=64, block_size=64, **arch)).eval()
    prompts = [[5, 6, 7, 8, 9], [11, 12], [3]]  # left-padded inside: rows start at position 0 after padding
    out = sample(model, prompts, 10, temperature=0, attention=attention)
    for row, p in zip(out.tokens.tolist(), prompts):
        seq = list(p)
        for _ in range(10):  # greedy, the whole sequence every step, no padding
            seq.append(model(torch.tensor([seq]))[0][0, -1].argmax().item())
        assert row == seq[len(p):]


def test_a_model_that_has_sampled_still_copies():
    """The sampler keeps its caches on the model (on CUDA with recorded graphs, which deepcopy refuses: found
    on the H200): the sampling twin, the reference and the value model are copied without them."""
    from gpt2pipe.model.decode import plain_copy
    from gpt2pipe.rl.policy import frozen_copy, value_model_from

    model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=32, block_size=32)).eval()
    sample(model, [[1, 2]], 4)
    assert model._decoders
    for copied in (plain_copy(model), frozen_copy(model), value_model_from(model).trunk):
        assert "_decoders" not in copied.__dict__
    assert model._decoders  # the original keeps them


def test_sampler_stops_at_the_stop_token_and_is_seeded():
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=32, block_size=32)).eval()
    u = torch.nn.functional.normalize(torch.randn(32), dim=0)
    with torch.no_grad():  # every position's output is about u, and <|endoftext|> about 14% likely
        model.transformer.ln_f.weight.fill_(0.1)
        model.transformer.ln_f.bias.copy_(u)
        model.transformer.wte.weight[50256] = 9 * u
    a = sample(model, [[1, 2, 3]] * 8, 12, 1.0, None, torch.Generator().manual_seed(3), stop_token=50256)
    b = sample(model, [[1, 2, 3]] * 8, 12, 1.0, None, torch.Generator().manual_seed(3), stop_token=50256)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.lengths, b.lengths)
    for row, n in zip(a.tokens.tolist(), a.lengths.tolist()):
        assert 50256 not in row[: n - 1] and (n == 12 or row[n - 1] == 50256)
    assert (a.lengths < 12).any()


def test_prompts_from_a_shard_start_at_documents_and_batches_follow_from_the_step():
    import numpy as np

    tokens = np.array([50256, 1, 2, 3, 4, 50256, 5, 6, 50256, 7, 8, 9, 10, 11], dtype=np.uint16)
    got = from_shard(tokens, 10, 3, seed=0)
    assert sorted(got) == [[50256, 1, 2, 3], [50256, 7, 8, 9]]  # the 2-token document is too short
    prompts = [[i] for i in range(10)]
    assert batch_of(prompts, 3, 4, 1) == batch_of(prompts, 3, 4, 1)
    first_pass = [p for s in range(2) for p in batch_of(prompts, s, 5, 1)]
    assert sorted(first_pass) == prompts  # one pass visits every prompt once
    with pytest.raises(Gpt2pipeError, match="no document of 6 tokens"):
        from_shard(tokens, 10, 6, seed=0, where="x.bin")


# --- the stage on a tiny model ------------------------------------------------------------------------

LIKELY = [" the", " and", ",", " of", ".", " to", " a", " love", " in", " my", " is", " that"]


def peaked_policy(path):
    """A 1-layer model that puts about half its mass on a dozen common words whatever the input (through
    ln_f's bias), as a pre-trained model concentrates on few tokens: a reward on one of them has signal."""
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=32, block_size=64))
    enc = gpt2()
    u = torch.randn(32)
    u /= u.norm()
    with torch.no_grad():
        model.transformer.ln_f.weight.fill_(0.1)
        model.transformer.ln_f.bias.copy_(u)
        for word in LIKELY:
            model.transformer.wte.weight[enc.encode_ordinary(word)[0]] = 8.5 * u + 0.02 * torch.randn(32)
    checkpoint.save(path, model, 0)
    return path


REWARDS = '''
import os

def count_love(prompts, responses):
    if os.environ.get("CRASH_REWARD") and len(responses) > 0:
        n = int(os.environ.get("CRASH_CALLS", "0")) + 1
        os.environ["CRASH_CALLS"] = str(n)
        if n == int(os.environ["CRASH_REWARD"]):
            raise RuntimeError("the reward server is down")
    return [r.count(" love") for r in responses]

def nan_reward(prompts, responses):
    return [float("nan")] * len(responses)

def short_reward(prompts, responses):
    return [1.0] * (len(responses) - 1)
'''


@pytest.fixture
def rl_setup(tmp_path):
    """(raw config with an rl section, run folder): the peaked policy, a prompt file, the reward file."""
    (tmp_path / "rewards.py").write_text(REWARDS)
    texts = ["To be, or not to be", "Friends, Romans, countrymen", "Now is the winter", "O Romeo, Romeo",
             "All the world's a stage", "Shall I compare thee", "If music be the food", "The quality of mercy"]
    with (tmp_path / "prompts.jsonl").open("w") as f:
        for t in texts * 4:
            f.write(json.dumps({"prompt": t}) + "\n")
    raw = tiny_config(tmp_path, model={"n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 64})
    raw["rl"] = {"init_from": str(peaked_policy(tmp_path / "init.pt")), "prompts": str(tmp_path / "prompts.jsonl"),
                 "reward": f"{tmp_path / 'rewards.py'}:count_love", "steps": 8, "batch_size": 32,
                 "mini_batch_size": 16, "forward_batch": 16, "max_new_tokens": 8, "prompt_tokens": 8,
                 "eval_prompts": 8, "checkpoint_every": 4, "learning_rate": 3e-3, "kl_coef": 0.1, "kl_target": 6.0,
                 "ppo_epochs": 2}
    return raw, tmp_path / "run"


def rl_log(run_dir):
    lines = (run_dir / "rl" / "rl.log").read_text().splitlines()
    head = lines[0].split("\t")
    return [dict(zip(head, map(float, ln.split("\t")))) for ln in lines[1:]]


@pytest.mark.parametrize("algorithm", ["ppo", "grpo"])
def test_a_known_reward_rises_while_kl_stays_under_its_target(rl_setup, algorithm):
    raw, run_dir = rl_setup
    raw["rl"].update(algorithm=algorithm, grpo_group_size=4, **({"learning_rate": 5e-3} if algorithm == "grpo" else {}))
    cfg = config.from_dict(raw)
    out = run(cfg, run_dir, progress=False)
    rows = rl_log(run_dir)
    assert out["final_step"] == 8 and [r["step"] for r in rows] == list(range(8))
    first, last = [sum(r["reward_mean"] for r in part) / 3 for part in (rows[:3], rows[-3:])]
    assert last > first + 0.3, (first, last)  # " love" per 8-token response
    assert all(r["kl"] < 6.0 for r in rows)
    evals = [json.loads((run_dir / "rl" / f"eval_{s:06d}.json").read_text()) for s in (0, 8)]
    assert evals[1]["reward"]["mean"] > evals[0]["reward"]["mean"]  # held out, too
    assert evals[0]["kl"]["mean"] == pytest.approx(0.0, abs=1e-5)  # step 0 is the reference itself
    assert (run_dir / "rl" / "model_000008.pt").exists() and (run_dir / "rl" / "samples_000008.txt").exists()


def test_resume_after_a_crash_is_exact(rl_setup, monkeypatch):
    raw, run_dir = rl_setup
    raw["rl"].update(steps=4, checkpoint_every=2, batch_size=16, mini_batch_size=8)
    cfg = config.from_dict(raw)
    straight = run_dir.parent / "straight"
    run(cfg, straight, progress=False)
    # the reward raises in its 5th call: step 2's rollout, after the state of step 2 (evaluations at steps 0 and
    # 2 and the rollouts of steps 0 and 1 come before it)
    monkeypatch.setenv("CRASH_REWARD", "5")
    monkeypatch.setenv("CRASH_CALLS", "0")
    with pytest.raises(Gpt2pipeError, match="count_love raised RuntimeError: the reward server is down"):
        run(cfg, run_dir, progress=False)
    monkeypatch.delenv("CRASH_REWARD")
    with pytest.raises(Gpt2pipeError, match="pass --resume"):
        run(cfg, run_dir, progress=False)
    run(cfg, run_dir, resume=True, progress=False)
    a, b = rl_log(straight), rl_log(run_dir)
    keys = [k for k in a[0] if not k.endswith("_s")]  # everything but the timings
    assert [[r[k] for k in keys] for r in a] == [[r[k] for k in keys] for r in b]
    held = [f"{kind}_{s:06d}.{ext}" for s in (0, 4) for kind, ext in (("eval", "json"), ("samples", "txt"))]
    assert all((run_dir / "rl" / name).read_text() == (straight / "rl" / name).read_text() for name in held)
    # as Snakemake deletes a job's declared outputs before it reruns it (layout.rl_outputs)
    for name in ["model_000004.pt", "rl.log", *held]:
        (run_dir / "rl" / name).unlink()
    run(cfg, run_dir, resume=True, progress=False)  # finished: republishes, trains nothing
    assert rl_log(run_dir) == b
    # the held-out results made again, step 0's from the reference: the same as the straight run's
    assert all((run_dir / "rl" / name).read_text() == (straight / "rl" / name).read_text() for name in held)
    assert json.loads((run_dir / "rl" / "eval_000004.json").read_text())["samples"][0]["prompt"]
    wa = checkpoint.read(straight / "rl" / "model_000004.pt")["model"]
    wb = checkpoint.read(run_dir / "rl" / "model_000004.pt")["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_rl_starts_from_a_hugging_face_folder(rl_setup):
    """rl.init_from may be an exported Hugging Face folder (it crashed hashing a folder as a file): the run's
    identity digests the folder's files, so new weights there are another run, not a resume."""
    from gpt2pipe.files import content_digest
    from gpt2pipe.model.formats.hf import to_hf
    from gpt2pipe.model.load import load_any

    raw, run_dir = rl_setup
    hf = run_dir.parent / "hf"
    to_hf(load_any(raw["rl"]["init_from"])[0], hf)
    raw["rl"].update(init_from=str(hf), steps=2, checkpoint_every=2, batch_size=16, mini_batch_size=8)
    out = run(config.from_dict(raw), run_dir, progress=False)
    assert out["final_step"] == 2 and len(rl_log(run_dir)) == 2
    before = content_digest(hf)
    weights = next(hf.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    assert content_digest(hf) != before
    with pytest.raises(Gpt2pipeError, match=r"other settings \(the weights of .*hf \(retrained\)\)"):
        run(config.from_dict(raw), run_dir, resume=True, progress=False)


@pytest.mark.parametrize("change, message", [
    ({"reward": "{tmp}/rewards.py:nan_reward"}, "nan_reward returned nan for response 0"),
    ({"reward": "{tmp}/rewards.py:short_reward"}, "short_reward returned 7 values for 8 responses"),
    ({"reward": "{tmp}/rewards.py:missing"}, "has no function missing"),
    ({"reward": "no_such_module_xyz:f"}, "importing no_such_module_xyz failed"),
    ({"prompts": "{tmp}/empty.jsonl"}, "empty.jsonl: no prompts in the file"),
    ({"prompts": "{tmp}/bad.jsonl"}, "bad.jsonl:2: expected an object with a \"prompt\" string"),
    ({"init_from": "{tmp}/nothing.pt"}, "nothing.pt: no model to start RL from"),
])
def test_bad_input_ends_in_one_line_and_writes_nothing(rl_setup, tmp_path, capsys, change, message):
    import yaml

    raw, run_dir = rl_setup
    (tmp_path / "empty.jsonl").write_text("\n")
    (tmp_path / "bad.jsonl").write_text('{"prompt": "ok"}\n{"text": "no prompt"}\n')
    raw["rl"].update({k: v.format(tmp=tmp_path) for k, v in change.items()})
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(raw))
    code = main(["rl", "-c", str(cfg_path), "--run-dir", str(run_dir), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("gpt2pipe rl: error:") and message in err[0], err
    assert not list(run_dir.glob("rl_state/state_*.pt")) and not list(run_dir.glob("rl/model_*.pt"))


def test_no_rl_section_is_one_line(tiny):
    with pytest.raises(Gpt2pipeError, match="no rl section"):
        run(tiny, tiny.run_dir)


def _micro_experience(rows: int, P: int = 4, R: int = 3, seed: int = 0):
    from gpt2pipe.rl.rollout import Experience

    g = torch.Generator().manual_seed(seed)
    seq = torch.randint(0, 50, (rows, P + R), generator=g)
    zeros = torch.zeros(rows, R)
    return Experience(seq, None, P, torch.ones(rows, R), torch.zeros(rows), zeros, zeros, [], [])


def _logp_loss(model):
    from gpt2pipe.rl.policy import response_logprobs

    def loss_of(e, mb_mask):
        logp = response_logprobs(model, e.seq, e.valid, e.P, 1.0)
        loss = -(logp * e.mask).sum() / mb_mask.sum()
        return loss, {"loss": loss}

    return loss_of


def test_a_micro_step_that_cannot_be_recorded_counts_each_gradient_once(recwarn, monkeypatch):
    """MicroStep's bookkeeping without a GPU: a shape's first call runs eagerly and is not recorded, its second
    runs eagerly and then tries to record; here recording fails (no CUDA), which warns once and leaves every
    later call eager. The gradients are those of plain eager calls: none counted twice, none lost."""
    from gpt2pipe.rl.graphed import MicroStep

    torch.manual_seed(0)
    a = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=64))
    b = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=64))
    b.load_state_dict(a.state_dict())
    graphed, eager = MicroStep(_logp_loss(a), 1.0, graphs=True), MicroStep(_logp_loss(b), 1.0, graphs=False)
    tries = []
    record = MicroStep._record
    monkeypatch.setattr(MicroStep, "_record", lambda self, *x: (tries.append(1), record(self, *x))[1])
    for k in range(4):
        e = _micro_experience(4 if k % 2 else 6, seed=k)
        sa, sb = graphed(e, e.mask), eager(e, e.mask)
        assert torch.equal(sa["loss"], sb["loss"])
    assert len(tries) == 1 and not graphed.graphs and not graphed.recorded  # the 6-row shape's second call
    assert len([w for w in recwarn if "could not be recorded" in str(w.message)]) == 1
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa.grad, pb.grad)


# --- on the GPU -------------------------------------------------------------------------------------------

gpu = pytest.mark.gpu


@gpu
@pytest.mark.parametrize("arch", [{}, LLAMA], ids=["gpt2", "llama"])
def test_cuda_graph_decode_equals_eager_decode(arch):
    from gpt2pipe.model.decode import sampling_copy

    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=2, n_head=4, n_embd=128, block_size=64, **arch)).cuda().eval()
    prompts = [[5, 6, 7, 8, 9], [11, 12], [3]] * 4
    a = sample(model, prompts, 16, temperature=0, cuda_graph=True)
    b = sample(model, prompts, 16, temperature=0, cuda_graph=False)
    assert torch.equal(a.tokens, b.tokens)
    for attention in ("sdpa", "matmul", "reduce"):  # the decode step fused by torch.compile, then recorded
        e = sample(model, prompts, 16, temperature=0, attention=attention, compiled=True)
        assert torch.equal(a.tokens, e.tokens), attention
    gen = lambda: torch.Generator("cuda").manual_seed(1)  # noqa: E731
    twin = sampling_copy(model)
    assert next(twin.parameters()).dtype == torch.bfloat16
    c = sample(twin, prompts, 16, 1.0, None, gen(), cuda_graph=True)
    d = sample(twin, prompts, 16, 1.0, None, gen(), cuda_graph=False)
    assert torch.equal(c.tokens, d.tokens)


@gpu
def test_rl_on_the_kernels_path(rl_setup):
    """The stage on CUDA with train.ops kernels (bf16 weights, fp32 masters in the flat AdamW): it runs, and
    the kernels' log-probabilities agree with the torch path's to bf16 precision."""
    from gpt2pipe.model.load import load_any
    from gpt2pipe.rl.policy import response_logprobs

    raw, run_dir = rl_setup
    raw["train"].update(device="cuda", ops="kernels")
    raw["rl"].update(steps=4, checkpoint_every=4)
    out = run(config.from_dict(raw), run_dir, progress=False)
    rows = rl_log(run_dir)
    assert out["final_step"] == 4 and all(math.isfinite(r["policy_loss"]) and r["value_loss"] > 0 for r in rows)
    torch.manual_seed(0)
    model, _ = load_any(raw["rl"]["init_from"])
    seq = torch.randint(0, 50257, (8, 24), device="cuda")
    with torch.autocast("cuda", torch.bfloat16):
        ref = response_logprobs(model.cuda(), seq, None, 8, 0.7)
    model.ops = "kernels"
    got = response_logprobs(model.bfloat16(), seq, None, 8, 0.7)
    assert (got - ref).abs().max() < 0.1 * ref.abs().mean(), ((got - ref).abs().max(), ref.abs().mean())


@gpu
@pytest.mark.parametrize("algorithm", ["ppo", "grpo"])
def test_recorded_update_micro_steps_equal_eager_ones(rl_setup, monkeypatch, algorithm):
    """The update's forward and backward replayed as CUDA graphs (rl/graphed.py) give the run the eager
    micro-steps give: same rewards, losses and statistics step after step (the graphs are recorded, and
    replayed, from the second mini-batch on)."""
    from gpt2pipe.rl import graphed, update

    raw, run_dir = rl_setup
    texts = ["To be, or not to be, that is the question of the day", "Friends, Romans, countrymen, lend me your ears",
             "Now is the winter of our discontent made glorious summer", "All the world's a stage, and all the men"]
    with (run_dir.parent / "long.jsonl").open("w") as f:  # 7 tokens or more each: no padding, the recorded path
        for t in texts * 8:
            f.write(json.dumps({"prompt": t}) + "\n")
    raw["train"].update(device="cuda", ops="kernels")
    # two micro-batches of 8 rows a 16-row mini-batch: replays add into the gradients of the one before
    raw["rl"].update(steps=3, checkpoint_every=3, algorithm=algorithm, grpo_group_size=4, forward_batch=8,
                     prompts=str(run_dir.parent / "long.jsonl"))
    recorded, replays = [], []
    record, replay = graphed.MicroStep._record, torch.cuda.CUDAGraph.replay
    monkeypatch.setattr(graphed.MicroStep, "_record", lambda self, *a: (record(self, *a), recorded.append(1))[0])
    monkeypatch.setattr(torch.cuda.CUDAGraph, "replay", lambda self: (replays.append(1), replay(self))[1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a recording that fails falls back to eager: here, an error
        run(config.from_dict(raw), run_dir, progress=False)
    assert recorded and len(replays) > 10, (len(recorded), len(replays))
    monkeypatch.setattr(update, "graphs_apply", lambda *a: False)
    run(config.from_dict(raw), run_dir.parent / "eager", progress=False)
    graphs, eager = rl_log(run_dir), rl_log(run_dir.parent / "eager")
    keys = ["reward_mean", "kl", "entropy", "policy_loss", "value_loss", "policy_clipfrac", "value_clipfrac",
            "approxkl"]
    for g, e in zip(graphs, eager, strict=True):
        for k in keys:
            assert g[k] == pytest.approx(e[k], rel=1e-3, abs=1e-5), (g["step"], k, g[k], e[k])


@gpu
def test_replayed_micro_steps_accumulate_the_gradients_eager_ones_do():
    """On the kernels path with the flat AdamW's gradient buffer: micro-steps of two shapes, interleaved and
    never zeroed between, recorded on each shape's second call and replayed after, leave the buffer as eager
    micro-steps of the same inputs do (a replay that overwrote instead of adding would not)."""
    from gpt2pipe.rl.graphed import MicroStep, graphs_apply
    from gpt2pipe.train.adamw import ShardedAdamW

    torch.manual_seed(0)
    models, opts = [], []
    for _ in range(2):
        torch.manual_seed(0)
        m = GPT(ModelConfig(n_layer=2, n_head=2, n_embd=64, block_size=32, vocab_size=64), ops="kernels").cuda()
        opts.append(ShardedAdamW(m, lr=1e-3))  # the kernels path's optimizer: bf16 weights, one gradient buffer
        models.append(m)
    assert graphs_apply(models[0], opts[:1], torch.device("cuda"), 1)
    graphed, eager = MicroStep(_logp_loss(models[0]), 2.0, graphs=True), MicroStep(_logp_loss(models[1]), 2.0, False)
    for k in range(8):
        e = _micro_experience(8 if k % 2 else 16, P=6, R=5, seed=k)
        e.seq, e.mask, e.old_logp, e.ref_logp = (t.cuda() for t in (e.seq, e.mask, e.old_logp, e.ref_logp))
        e.scores = e.scores.cuda()
        sa, sb = graphed(e, e.mask), eager(e, e.mask)
        torch.testing.assert_close(sa["loss"], sb["loss"])
    assert len(graphed.recorded) == 2 and graphed.graphs
    assert opts[0].grads.abs().sum() > 0
    torch.testing.assert_close(opts[0].grads.float(), opts[1].grads.float(), rtol=1e-2, atol=1e-3)
