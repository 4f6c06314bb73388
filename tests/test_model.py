import math

import pytest
import torch

from gpt2pipe.config import ModelConfig, from_dict
from gpt2pipe.model.gpt import GPT, gpt2_size_name
from gpt2pipe.train.optim import make_optimizer
from gpt2pipe.train.schedule import lr_at

SMALL = ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=16)


def test_forward_shapes_and_padded_vocab():
    torch.manual_seed(0)
    model = GPT(SMALL)
    x = torch.randint(0, 50257, (3, 16))
    logits, loss = model(x)
    assert logits.shape == (3, 16, 50257) and loss is None
    assert model.transformer.wte.weight.shape == (50304, 32)
    assert model.lm_head.weight is model.transformer.wte.weight
    _, losses = model(x, x, reduction="none")
    assert losses.shape == (3, 16)
    with pytest.raises(ValueError, match="longer than block_size"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_loss_at_init_is_uniform_over_the_real_vocab():
    torch.manual_seed(0)
    model = GPT(SMALL)
    x = torch.randint(0, 50257, (4, 16))
    _, loss = model(x, torch.randint(0, 50257, (4, 16)))
    assert abs(loss.item() - math.log(50257)) < 0.05


def test_llmc_init():
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=4, n_head=4, n_embd=128, block_size=64))
    h = model.transformer.h[0]
    assert h.attn.c_attn.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert h.mlp.c_proj.weight.std().item() == pytest.approx(0.02 / math.sqrt(8), rel=0.05)
    assert h.attn.c_proj.bias.abs().sum() == 0 and h.ln_1.weight.eq(1).all()


def test_parameter_count_of_gpt2_124M():
    model = GPT(ModelConfig())
    # 124.44M with the padded vocabulary (llm.c prints 124,475,904)
    assert model.num_params() == 124_475_904
    assert gpt2_size_name(model.config) == "124M"


def test_one_optimizer_step_lowers_the_loss_on_its_batch():
    torch.manual_seed(0)
    model = GPT(SMALL)
    t = from_dict({"train": {"learning_rate": 1e-3, "seq_len": 16, "micro_batch_size": 2,
                             "total_batch_tokens": 32}, "model": {"block_size": 16}}).train
    opt = make_optimizer(model, t, torch.device("cpu"))
    decay, no_decay = opt.param_groups
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    x = torch.randint(0, 50257, (2, 16))
    y = torch.randint(0, 50257, (2, 16))
    before = model(x, y)[1]
    before.backward()
    opt.update(1e-3)
    after = model(x, y)[1]
    assert after.item() < before.item()


def test_lr_schedule_matches_llmc():
    t = from_dict({"train": {"learning_rate": 6e-4, "warmup_steps": 700, "max_steps": 19073,
                             "final_lr_frac": 0.0}}).train
    assert lr_at(0, t) == pytest.approx(6e-4 / 700)
    assert lr_at(699, t) == pytest.approx(6e-4)
    assert lr_at(700, t) == pytest.approx(6e-4)
    mid = 700 + (19073 - 700) // 2
    assert lr_at(mid, t) == pytest.approx(3e-4, rel=1e-3)
    assert lr_at(19072, t) == pytest.approx(0.0, abs=1e-8)
    t2 = from_dict({"train": {"final_lr_frac": 0.1, "max_steps": 100, "warmup_steps": 0}}).train
    assert lr_at(100, t2) == pytest.approx(6e-5)
