"""Muon (train.optimizer: muon): the Newton-Schulz iteration, the update against a plain single-process
reference, training, resume, and 2 gloo processes against 1."""

from pathlib import Path

import pytest
import torch
import yaml

from gpt2pipe import Gpt2pipeError, config
from gpt2pipe.config import ModelConfig
from gpt2pipe.model.gpt import GPT
from conftest import assert_same_run, run_train_process as run
from gpt2pipe.report import parse_log
from gpt2pipe.train import loop as train_mod
from gpt2pipe.train.muon import MuonAdamW, owners
from gpt2pipe.train.muon_buffers import MuonBuffers
from gpt2pipe.train.newton_schulz import muon_scale, newton_schulz, orthogonal_updates, row_blocks


def singular_values(x):
    return torch.linalg.svdvals(x.float())


def updates(gs, blocks, max_elements=1 << 26):
    """orthogonal_updates of whole matrices gs (row blocks as hidden_matrices gives them), put back together."""
    items = [(k, rows, shape) for k, (g, b) in enumerate(zip(gs, blocks)) for rows, shape in row_blocks(g.shape, b)]
    out = [torch.full_like(g, float("nan")) for g in gs]
    for k, rows, u, scale in orthogonal_updates(items, lambda k, rows: gs[k][rows], max_elements):
        assert u.dtype == torch.bfloat16 and u.shape == out[k][rows].shape
        out[k][rows] = u.float() * scale
    return out


def each_block(g, blocks):
    """The reference: each row block's Newton-Schulz on its own, scaled by its shape."""
    return torch.cat([newton_schulz(b).float() * muon_scale(b.shape) for b in g.split(blocks or [len(g)])])


def test_newton_schulz_orthogonalises_random_and_ill_conditioned_matrices():
    torch.manual_seed(0)
    for shape in [(128, 32), (32, 96), (3, 48, 16)]:  # wide, tall (transposed inside), a batch
        g = torch.randn(shape)
        s = singular_values(newton_schulz(g))
        assert 0.6 <= s.min() and s.max() <= 1.25, (shape, s.min(), s.max())
    # singular values spread over two decades (what a gradient looks like): all pushed to about 1 ...
    u, _ = torch.linalg.qr(torch.randn(96, 96))
    v, _ = torch.linalg.qr(torch.randn(48, 48))
    g = u[:, :48] @ torch.diag(torch.logspace(0, -2, 48)) @ v.T
    out = newton_schulz(g)
    s = singular_values(out)
    assert singular_values(g).max() / singular_values(g).min() > 99
    assert 0.6 <= s.min() and s.max() <= 1.25, (s.min(), s.max())
    # ... with g's singular vectors: the result is close to U V^T (the orthogonal polar factor)
    polar = u[:, :48] @ v.T
    cos = (out.float() * polar).sum() / (out.float().norm() * polar.norm())
    assert cos > 0.95


def test_packed_matrices_are_orthogonalised_as_their_parts():
    """qkv as q, k, v (narrower k and v with grouped-query attention) and SwiGLU's [gate | up] as two."""
    from gpt2pipe.train.muon import hidden_matrices

    torch.manual_seed(0)
    model = GPT(config.from_dict({"model": {"n_layer": 1, "n_head": 4, "n_kv_head": 2, "n_embd": 64,
                                            "block_size": 8, "mlp": "swiglu", "bias": False},
                                  "train": {"seq_len": 8}}).model)
    blocks = hidden_matrices(model)
    h = model.transformer.h[0]
    assert blocks[id(h.attn.c_attn.weight)] == [64, 32, 32]
    hidden = h.mlp.c_proj.weight.shape[1]
    assert blocks[id(h.mlp.c_fc.weight)] == [hidden, hidden] and blocks[id(h.mlp.c_proj.weight)] is None
    assert id(model.transformer.wte.weight) not in blocks and len(blocks) == 4
    g = torch.randn(128, 64)
    u = updates([g], [[64, 32, 32]])[0]
    for part in u.split([64, 32, 32]):  # each part orthogonal on its own (scale 1: not taller than wide)
        s = singular_values(part)
        assert 0.6 <= s.min() and s.max() <= 1.25


def test_batched_newton_schulz_equals_each_matrix_on_its_own():
    """orthogonal_updates stacks the blocks of one shape (tall ones transposed to wide) into batched iterations:
    each block's update is its own Newton-Schulz alone, to bf16 rounding, in its own orientation and with
    its own shape's scale, however many blocks a batch may hold."""
    torch.manual_seed(0)
    gs = [torch.randn(96, 32), torch.randn(32, 96), torch.randn(32, 32), torch.randn(64, 32), torch.randn(32, 96)]
    blocks = [[32, 32, 32], None, None, None, None]  # a packed qkv, a wide, a square, a tall, another wide
    for max_elements in (1 << 26, 32 * 32):  # every block of a shape in one batch; one block a batch
        got = updates(gs, blocks, max_elements)
        for g, b, u in zip(gs, blocks, got):
            alone = each_block(g, b)
            torch.testing.assert_close(u, alone, rtol=0, atol=2e-2 * alone.abs().max().item())
        assert got[3].norm() > got[4].norm() * 1.2  # the tall block's scale sqrt(2) survived the transpose


def test_owners_balance_the_matrices_by_size():
    sizes = [300, 100, 100, 100, 50, 50]
    own = owners(sizes, 2)
    load = [sum(s for s, r in zip(sizes, own) if r == k) for k in range(2)]
    assert sorted(load) == [350, 350]
    assert owners(sizes, 1) == [0] * 6 and owners(sizes, 2) == own  # the same on every process


# --- a plain single-process reference: modded-nanogpt's Muon, torch's AdamW ----------------------------

def reference_ns(G, steps=5, eps=1e-7):
    """modded-nanogpt's zeropower_via_newtonschulz5, as written there."""
    a, b, c = (3.4445, -4.7750, 2.0315)
    X = G.bfloat16()
    if G.size(0) > G.size(1):
        X = X.T
    X = X / (X.norm() + eps)
    for _ in range(steps):
        A = X @ X.T
        B = b * A + c * A @ A
        X = a * X + B @ X
    if G.size(0) > G.size(1):
        X = X.T
    return X


def reference_steps(model, batches, t, lrs):
    """Muon (Nesterov, momentum t.muon_momentum) on the blocks' 2-D weights, torch AdamW on the rest, the
    global norm clipped over all parameters together."""
    params = list(dict.fromkeys(model.parameters()))
    hidden = {id(p) for p in model.transformer.h.parameters() if p.dim() == 2}
    muon = [p for p in params if id(p) in hidden]
    rest = [p for p in params if id(p) not in hidden]
    adam = torch.optim.AdamW([{"params": [p for p in rest if p.dim() >= 2], "weight_decay": t.weight_decay},
                              {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0}],
                             lr=t.learning_rate, betas=(t.beta1, t.beta2), eps=t.eps)
    bufs = [torch.zeros_like(p) for p in muon]
    for (x, y), lr in zip(batches, lrs):
        model(x, y)[1].backward()
        if t.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, t.grad_clip)
        for g in adam.param_groups:
            g["lr"] = lr
        adam.step()
        muon_lr = lr * t.muon_learning_rate / t.learning_rate
        with torch.no_grad():
            for p, buf in zip(muon, bufs):
                g = p.grad
                buf.mul_(t.muon_momentum).add_(g, alpha=1 - t.muon_momentum)
                g = (1 - t.muon_momentum) * g + t.muon_momentum * buf
                p.mul_(1 - muon_lr * t.muon_weight_decay)
                # the packed qkv weight is modded-nanogpt's three weights q, k, v (C x C each: scale 1)
                pieces = g.chunk(3) if p.size(0) == 3 * p.size(1) else [g]
                update = torch.cat([reference_ns(x).float() * max(1, x.size(0) / x.size(1)) ** 0.5 for x in pieces])
                p.add_(update, alpha=-muon_lr)
        model.zero_grad(set_to_none=True)


def small_model():
    torch.manual_seed(0)
    return GPT(ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=8))


def muon_train_config(**train):
    return config.from_dict({"train": {"optimizer": "muon", "learning_rate": 3e-3, "muon_learning_rate": 0.02,
                                       "weight_decay": 0.1, "muon_weight_decay": 0.5, **train}}).train


def random_batches(n, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [(d[:, :-1], d[:, 1:]) for d in (torch.randint(0, 50257, (4, 9), generator=gen) for _ in range(n))]


def our_steps(model, t, batches, lrs):
    opt = MuonAdamW(model, t)
    norms = []
    for (x, y), lr in zip(batches, lrs):
        model(x, y)[1].backward()
        norms.append(opt.global_norm().item())
        opt.update(lr)
    return opt, norms


def test_muon_steps_equal_a_plain_reference():
    t = muon_train_config(grad_clip=0.0)
    # two steps (the second with momentum in the buffer) on a schedule, which Muon follows at its own peak.
    # Not more: our flat AdamW and torch's round the embedding's update differently in the last fp32 bit,
    # and from the third step on such a bit can round a bf16 Newton-Schulz input the other way (1e-4 apart)
    batches, lrs = random_batches(2), [3e-3, 1e-3]
    ref = small_model()
    reference_steps(ref, batches, t, lrs)
    ours = small_model()
    opt, _ = our_steps(ours, t, batches, lrs)
    assert len(opt.muon) == 8 and all(p.dim() == 2 for p in opt.muon)  # 4 matrices per block
    start = small_model().state_dict()
    for (k, v), w0 in zip(ref.state_dict().items(), start.values()):
        got = ours.state_dict()[k]
        assert not torch.equal(v, w0), k  # every parameter moved
        # the same arithmetic, so the bf16 Newton-Schulz sees the same input: equal to fp32 rounding (a
        # wrong scale, momentum, Nesterov term, decay or rate is off by 1e-4 or more)
        assert torch.allclose(got, v, atol=1e-6, rtol=1e-5), (k, (got - v).abs().max())
    # the whole state: every weight as its fp32 master, the AdamW moments of the rest, the Muon momentum
    state = opt.whole_state()
    assert state["t"] == 2 and state["muon_momentum"].numel() == sum(p.numel() for p in opt.muon)
    assert state["m"].numel() == state["master"].numel() - state["muon_momentum"].numel()


def test_clipping_scales_both_optimizers_by_the_joint_norm():
    t = muon_train_config(grad_clip=0.5)
    batches = random_batches(1, seed=2)
    ref = small_model()
    ref(*batches[0])[1].backward()
    joint = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in dict.fromkeys(ref.parameters())]))
    ref.zero_grad()
    reference_steps(ref, batches, t, [3e-3])  # clip_grad_norm_ over all parameters
    ours = small_model()
    opt, norms = our_steps(ours, t, batches, [3e-3])
    assert norms[0] == pytest.approx(joint.item(), rel=1e-5) and norms[0] > 2 * t.grad_clip
    start = small_model().state_dict()
    for k, v in ref.state_dict().items():
        got = ours.state_dict()[k]
        if not any(p is ours.state_dict(keep_vars=True)[k] for p in opt.muon):
            assert torch.allclose(got, v, atol=1e-6, rtol=1e-5), (k, (got - v).abs().max())  # fp32 rounding
            continue
        # Muon's direction is scale-free (the clip cannot change it), but a clip factor one fp32 bit apart (torch
        # versions and CPUs compute the norm in another order) rounds some bf16 Newton-Schulz inputs the other
        # way, and five bf16 iterations carry that on: measured with the reference's factor moved by 1-3 ulps,
        # up to 3.9e-4 per element (2 bf16 ulps of an output near 1, times the rate 0.02) and 2.6% of the
        # update's norm. So: 4 such ulps per element and 1/16 of the norm; a wrong rate, scale, momentum or
        # decay moves the update by far more than that
        update, off = v - start[k], got - v
        assert off.abs().max() <= t.muon_learning_rate * 4 * 2 ** -8, (k, off.abs().max())
        assert off.norm() <= update.norm() / 16, (k, off.norm() / update.norm())


def test_a_muon_state_loads_into_a_new_optimizer_exactly():
    t = config.from_dict({"train": {"optimizer": "muon"}}).train
    model = small_model()
    opt = MuonAdamW(model, t)
    x, y = torch.randint(0, 50257, (2, 8)), torch.randint(0, 50257, (2, 8))
    for _ in range(2):
        model(x, y)[1].backward()
        opt.global_norm()
        opt.update(1e-3)
    state = opt.whole_state()
    other = small_model()
    again = MuonAdamW(other, t)
    again.load_whole_state(state, weights_from_master=True)
    for k, v in model.state_dict().items():
        assert torch.equal(other.state_dict()[k], v), k
    for o in (opt, again):  # one more step from the same state: the same weights
        o.model(x, y)[1].backward()
        o.global_norm()
        o.update(1e-3)
    for k, v in model.state_dict().items():
        assert torch.equal(other.state_dict()[k], v), k


def test_flat_buffers_give_each_process_its_matrices_as_one_aligned_slice():
    """MuonBuffers for every rank of 1, 2, 3 and 7 processes (7 > matrices: some own nothing): each matrix a
    16-byte aligned view of the flat weights and gradients holding its values; this rank's matrices one
    contiguous slice, their masters and momentum at local(); a rank without matrices has empty state."""
    torch.manual_seed(0)
    shapes = [(24, 8), (8, 8), (40, 8), (8, 40), (3, 5), (8, 8)]
    for world in (1, 2, 3, 7):
        for rank in range(world):
            params = [torch.nn.Parameter(torch.randn(*s)) for s in shapes]
            values = [p.detach().clone() for p in params]
            own = owners([p.numel() for p in params], world)
            flat = MuonBuffers(params, own, rank, torch.bfloat16)
            mine = [i for i in range(len(params)) if own[i] == rank]
            for i, (p, v) in enumerate(zip(params, values)):
                assert p.dtype == torch.bfloat16 and torch.equal(p.detach(), v.bfloat16())
                assert p.untyped_storage().data_ptr() == flat.weights.untyped_storage().data_ptr()
                assert p.data_ptr() % 16 == 0 and p.grad.data_ptr() % 16 == 0 and not p.grad.any()
                if i in mine:
                    assert flat.mine.start <= flat.offsets[i] and flat.offsets[i] + p.numel() <= flat.mine.stop
                    # the master keeps the fp32 value, not its bf16 rounding
                    assert torch.equal(flat.owned(flat.master, i), v)
            owned = sum(params[i].numel() for i in mine)
            assert flat.momentum.numel() == flat.master.numel() == flat.mine.stop - flat.mine.start >= owned
            if not mine:
                assert flat.momentum.numel() == 0 and flat.my_grads().numel() == 0
            flat.master.add_(1.0)
            flat.publish()  # the bf16 weights of this rank's matrices from their masters; the rest untouched
            for i, (p, v) in enumerate(zip(params, values)):
                assert torch.equal(p.detach(), ((v + 1) if i in mine else v).bfloat16())


def test_a_discarded_step_leaves_no_trace():
    """discard() (the guard skipping a step) zeroes the Muon gradients: the next step's update is the one an
    optimizer that never saw the skipped batch makes."""
    t = muon_train_config(grad_clip=1.0)
    (x1, y1), (x2, y2) = random_batches(2, seed=5)
    a, b = small_model(), small_model()
    opt_a, opt_b = MuonAdamW(a, t), MuonAdamW(b, t)
    a(x1, y1)[1].backward()
    opt_a.global_norm()
    opt_a.discard()
    assert all(not p.grad.any() for p in opt_a.muon)
    for model, opt in ((a, opt_a), (b, opt_b)):
        model(x2, y2)[1].backward()
        opt.global_norm()
        opt.update(1e-3)
    for k, v in b.state_dict().items():
        assert torch.equal(a.state_dict()[k], v), k


# --- training ---------------------------------------------------------------------------------------

def with_train(cfg, **changes):
    return config.from_dict(dict(cfg.raw, train=dict(cfg.raw["train"], **changes)))


def losses(run_dir):
    return [v for _, v in parse_log(run_dir / "train" / "train.log")["trl"]]


SPEEDRUN_ARCH = dict(pos_embedding="rope", norm="rmsnorm", mlp="relu2", qk_norm=True, tie_embeddings=False,
                     bias=False)


def test_muon_training_lowers_the_loss(tiny, tiny_shards, tmp_path, capsys):
    """The speedrun's choices together on the real tiny shards: its architecture, Muon, wsd, document-aligned
    rows."""
    raw = dict(tiny.raw, model=dict(tiny.raw["model"], **SPEEDRUN_ARCH))
    cfg = with_train(config.from_dict(raw), optimizer="muon", max_steps=12, lr_schedule="wsd",
                     checkpoint_every=12, val_every=12, document_aligned=True)
    out = train_mod.train(cfg, tiny_shards, tmp_path / "run", progress=False)
    said = capsys.readouterr().out
    assert "data: document-aligned rows" in said
    # the blocks' 4 matrices x 2 layers; AdamW: the embedding, the untied head and the RMSNorm gains
    assert "Muon for 8 block matrices" in said and "AdamW for 7 other tensors" in said, said
    trl = losses(tmp_path / "run")
    assert out["final_step"] == 12 and len(trl) == 12
    assert sum(trl[-3:]) / 3 < trl[0] - 0.7, trl
    tel = parse_log(tmp_path / "run" / "train" / "train.log")["tel"]
    assert tel[-1][1] < tel[0][1] - 0.7, tel


def test_muon_crash_and_resume_reproduce_the_uninterrupted_run(tiny, tiny_shards, tmp_path, monkeypatch):
    from conftest import crash_then_resume

    cfg = with_train(tiny, optimizer="muon")
    train_mod.train(cfg, tiny_shards, tmp_path / "full", progress=False)
    crash_then_resume(cfg, tiny_shards, tmp_path / "run", monkeypatch)
    full = (tmp_path / "full" / "train" / "train.log").read_text()
    assert (tmp_path / "run" / "train" / "train.log").read_text() == full
    # the identity holds the optimizer: a Muon state is never resumed as AdamW (or the other way round)
    with pytest.raises(Gpt2pipeError, match=r"train.optimizer: 'muon' -> 'adamw'.*--restart"):
        train_mod.train(tiny, tiny_shards, tmp_path / "run", resume=True, progress=False)


# --- several processes (gloo) -------------------------------------------------------------------------

@pytest.mark.slow
def test_two_processes_equal_one_and_resume_across_process_counts(tiny, tiny_shards, tmp_path):
    """2 gloo processes (each Muon matrix owned by one of them) train as 1 process with accumulation; a run
    preempted on 2 processes resumes on 1, and one preempted on 1 resumes on 2, reproducing the
    uninterrupted run."""
    raw = dict(tiny.raw, train=dict(tiny.raw["train"], num_threads=1, max_steps=12, checkpoint_every=6,
                                    optimizer="muon"))
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(yaml.safe_dump(raw))
    r = run(cfg_path, tiny_shards, tmp_path / "single")
    assert r.returncode == 0, r.stderr[-2000:]
    r = run(cfg_path, tiny_shards, tmp_path / "two", nproc=2)
    assert r.returncode == 0, r.stderr[-3000:]
    said = r.stdout + r.stderr
    # the 8 matrices (c_attn 3:1, c_fc 4:1, c_proj 1:1 and 1:4 of 32) split 12,288 : 12,288 parameters
    assert "rank 0 holds Muon state for 4 matrices (12,288 parameters)" in said, said[-2000:]
    # bf16 Newton-Schulz of gradients summed in another order: measured 1e-4 apart (the log's last digit)
    assert_same_run(tmp_path / "single", tmp_path / "two", tol=5e-4)
    r = run(cfg_path, tiny_shards, tmp_path / "zero2", nproc=2, sets=("train.zero=2",))  # AdamW's grads sharded
    assert r.returncode == 0 and "ZeRO-2" in r.stdout + r.stderr, r.stderr[-3000:]
    assert_same_run(tmp_path / "single", tmp_path / "zero2", tol=5e-4)
    r = run(cfg_path, tiny_shards, tmp_path / "two_to_one", nproc=2, preempt_at=7)
    assert r.returncode != 0 and "state saved" in r.stderr, r.stderr[-2000:]
    r = run(cfg_path, tiny_shards, tmp_path / "two_to_one", nproc=1, resume=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert_same_run(tmp_path / "two", tmp_path / "two_to_one", tol=5e-4)
    # steps 0-6 ran on 2 processes: identical to the uninterrupted 2-process run
    two = [ln for ln in (tmp_path / "two" / "train" / "train.log").read_text().splitlines() if " trl:" in ln]
    resumed = [ln for ln in (tmp_path / "two_to_one" / "train" / "train.log").read_text().splitlines()
               if " trl:" in ln]
    assert resumed[:7] == two[:7]
    # and 1 process preempted, resumed on 2: the uninterrupted single-process run
    r = run(cfg_path, tiny_shards, tmp_path / "one_to_two", preempt_at=5)
    assert r.returncode == 75, r.stderr[-2000:]
    r = run(cfg_path, tiny_shards, tmp_path / "one_to_two", nproc=2, resume=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert_same_run(tmp_path / "single", tmp_path / "one_to_two", tol=5e-4)


@pytest.mark.gpu
def test_muon_on_the_kernels_path_follows_the_torch_path(tiny, tiny_shards, tmp_path):
    """bf16 weights with fp32 masters (Muon's matrices too): the per-step losses of the fp32 torch path."""
    base = dict(optimizer="muon", device="cuda", max_steps=12, checkpoint_every=12, val_every=12)
    train_mod.train(with_train(tiny, ops="torch", dtype="float32", **base), tiny_shards, tmp_path / "t",
                    progress=False)
    train_mod.train(with_train(tiny, ops="kernels", **base), tiny_shards, tmp_path / "k", progress=False)
    a, b = losses(tmp_path / "t"), losses(tmp_path / "k")
    assert max(abs(x - y) for x, y in zip(a, b)) < 0.05, (a, b)
    assert b[-1] < b[0] - 0.5  # 12 steps of the tiny model: ~0.64 on the GPU (both paths), more on the CPU


def test_wsd_schedule_warms_up_holds_then_decays_linearly():
    from gpt2pipe.train.schedule import lr_at

    t = config.from_dict({"train": {"lr_schedule": "wsd", "learning_rate": 1.0, "warmup_steps": 10,
                                    "max_steps": 100, "cooldown_frac": 0.4, "final_lr_frac": 0.1}}).train
    curve = [lr_at(s, t) for s in range(100)]
    assert curve[0] == pytest.approx(0.1) and curve[9] == pytest.approx(1.0)  # warmup as the cosine's
    assert curve[10:61] == [1.0] * 51  # stable until 40% of the steps are left
    assert curve[80] == pytest.approx(0.1 + 0.9 * 0.5) and curve[99] == pytest.approx(0.1 + 0.9 * 0.025)
    steps = [b - a for a, b in zip(curve[60:], curve[61:])]
    assert steps == pytest.approx([-0.9 / 40] * 39)  # a straight line to final_lr_frac at max_steps
    cosine = config.from_dict({"train": {"learning_rate": 1.0, "warmup_steps": 10, "max_steps": 100}}).train
    assert lr_at(55, cosine) == pytest.approx(0.5) and lr_at(30, cosine) < 1.0  # the default is unchanged


SPEEDRUN = Path(__file__).parents[1] / "config" / "speedrun.yaml"
ARCH_KEYS = ("pos_embedding", "norm", "mlp", "qk_norm", "tie_embeddings", "bias")


def test_speedrun_recipe_is_the_gpt2_recipes_data_with_muon_wsd_and_aligned_rows():
    raw = yaml.safe_load(SPEEDRUN.read_text())
    gpt2 = yaml.safe_load((SPEEDRUN.parent / "gpt2-124M.yaml").read_text())
    assert raw["data"] == gpt2["data"]  # one shared dataset
    assert raw["report"]["compare_runs"] == [gpt2["run_name"]]
    cfg = config.load(SPEEDRUN)
    assert {k: getattr(cfg.model, k) for k in ARCH_KEYS} == {k: raw["model"][k] for k in ARCH_KEYS}
    t = cfg.train
    assert (t.optimizer, t.lr_schedule, t.document_aligned) == ("muon", "wsd", True)
    tokens = t.max_steps * t.total_batch_tokens
    assert 0.4e9 <= tokens <= 1.1e9 and tokens * 3 <= 19073 * 524288  # at most a third of the GPT-2 recipe's
    assert cfg.model.n_embd // cfg.model.n_head == 128
