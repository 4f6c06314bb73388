import json

import numpy as np
import pytest
import torch

from gpt2pipe import Gpt2pipeError
from gpt2pipe.model import checkpoint
from gpt2pipe.model.formats.hf import from_hf, to_hf
from gpt2pipe.model.formats.llmc import from_llmc, to_llmc
from gpt2pipe.model.load import load_any
from gpt2pipe.config import ModelConfig
from gpt2pipe.model.gpt import GPT
from gpt2pipe.eval.sample import generate
from gpt2pipe.data.tokenizer import gpt2

CFG = ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=32)


@pytest.fixture
def model():
    torch.manual_seed(0)
    m = GPT(CFG)
    with torch.no_grad():  # non-trivial norms and biases, so a transposed or misplaced tensor shows
        for name, p in m.named_parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    return m.eval()


X = torch.randint(0, 50257, (2, 32), generator=torch.Generator().manual_seed(1))


def same_state(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k].float(), b[k].float()), k


def test_hf_round_trip(model, tmp_path):
    to_hf(model, tmp_path / "hf")
    files = {p.name for p in (tmp_path / "hf").iterdir()}
    assert {"config.json", "model.safetensors", "vocab.json", "merges.txt", "tokenizer_config.json"} <= files
    cfg, state = from_hf(tmp_path / "hf")
    assert cfg == CFG
    same_state(state, model.state_dict())
    back, _ = load_any(tmp_path / "hf")
    assert torch.equal(back(X)[0], model(X)[0])


def test_hf_export_files_share_one_mode(model, tmp_path):
    """model.safetensors gets the mode of the other files (0644 under a 022 umask), not safetensors' 0600."""
    import os

    old = os.umask(0o022)
    try:
        to_hf(model, tmp_path / "hf")
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "hf").iterdir()}
    assert modes["model.safetensors"] == modes["config.json"] == 0o644, modes


def test_load_any_picks_the_reader_by_path(model, tmp_path):
    with pytest.raises(Gpt2pipeError, match="nothing.pt: model not found"):
        load_any(tmp_path / "nothing.pt")
    (tmp_path / "m.bin").write_bytes(b"\x00" * 2048)
    with pytest.raises(Gpt2pipeError, match="m.bin: not an llm.c GPT-2 model"):
        load_any(tmp_path / "m.bin")
    (tmp_path / "dir").mkdir()
    with pytest.raises(Gpt2pipeError, match="dir: no config.json"):
        load_any(tmp_path / "dir")
    to_llmc(model, tmp_path / "ok.bin")
    _, meta = load_any(tmp_path / "ok.bin", expected=ModelConfig())  # a foreign model brings its own shape
    assert meta == {"step": 0, "source": "llm.c"}


def test_transformers_loads_the_export(model, tmp_path):
    transformers = pytest.importorskip("transformers")
    to_hf(model, tmp_path / "hf")
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        ours = model(X)[0]
        theirs = hf(X).logits
    assert torch.allclose(ours, theirs, atol=1e-4), (ours - theirs).abs().max()
    assert hf.lm_head.weight.data_ptr() == hf.transformer.wte.weight.data_ptr()  # tied
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    text = "Hello world! To be, or not to be: that is the question.\n  ünïcödé 123"
    assert tok.encode(text) == gpt2().encode_ordinary(text)
    out = hf.generate(torch.tensor([[50256, 15496]]), max_new_tokens=5, do_sample=False, pad_token_id=50256)
    ours_greedy = generate(model, "Hello", max_new_tokens=5, temperature=0, num_samples=1, min_tokens=0)[0]
    assert tok.decode(out[0, 2:]).split("<|endoftext|>")[0] == ours_greedy


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_llmc_round_trip(model, tmp_path, dtype):
    path = to_llmc(model, tmp_path / "m.bin", dtype)
    header = np.fromfile(path, dtype="<i4", count=8)
    assert header.tolist() == [20240326, 3 if dtype == torch.float32 else 5, 32, 50257, 2, 2, 32, 50304]
    n = sum(p.numel() for p in model.parameters())  # tied head counted once, as llm.c stores it
    assert path.stat().st_size == 1024 + n * (4 if dtype == torch.float32 else 2)
    cfg, state = from_llmc(path)
    assert cfg == CFG
    expected = {k: v.to(dtype).float() for k, v in model.state_dict().items()}
    for k in ("transformer.wte.weight", "lm_head.weight"):
        expected[k][50257:] = 0  # llm.c pads the vocabulary with zeros
    same_state(state, expected)
    if dtype == torch.float32:
        back, _ = load_any(path)
        assert torch.equal(back(X)[0], model(X)[0])


def test_our_checkpoint_to_hf_to_llmc_and_back(model, tmp_path):
    checkpoint.save(tmp_path / "a.pt", model, 7)
    loaded, meta = load_any(tmp_path / "a.pt")
    assert meta["step"] == 7
    to_hf(loaded, tmp_path / "hf")
    via_hf, _ = load_any(tmp_path / "hf")
    to_llmc(via_hf, tmp_path / "m.bin")
    via_llmc, _ = load_any(tmp_path / "m.bin")
    assert torch.equal(via_llmc(X)[0], model(X)[0])


def test_clear_errors(model, tmp_path):
    with pytest.raises(Gpt2pipeError, match="not a directory"):
        from_hf(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(Gpt2pipeError, match="no config.json"):
        from_hf(tmp_path / "empty")
    to_hf(model, tmp_path / "hf")
    conf = json.loads((tmp_path / "hf" / "config.json").read_text())
    (tmp_path / "hf" / "config.json").write_text(json.dumps(dict(conf, model_type="bert")))
    with pytest.raises(Gpt2pipeError, match="model_type is 'bert', not a GPT-2 or Llama checkpoint"):
        from_hf(tmp_path / "hf")
    (tmp_path / "hf" / "config.json").write_text(json.dumps(dict(conf, model_type="llama")))  # GPT-2's keys
    with pytest.raises(Gpt2pipeError, match=r"config.json: not a GPT-2 or Llama config \(KeyError: 'hidden_size'\)"):
        from_hf(tmp_path / "hf")
    (tmp_path / "hf" / "config.json").write_text(json.dumps(dict(conf, n_embd=64)))
    with pytest.raises(Gpt2pipeError, match=r"has shape \(50304, 32\), expected \(50304, 64\)"):
        from_hf(tmp_path / "hf")
    path = to_llmc(model, tmp_path / "m.bin")
    raw = path.read_bytes()
    (tmp_path / "magic.bin").write_bytes(np.int32(20240520).tobytes() + raw[4:])
    with pytest.raises(Gpt2pipeError, match="not an llm.c GPT-2 model"):
        from_llmc(tmp_path / "magic.bin")
    (tmp_path / "version.bin").write_bytes(raw[:4] + np.int32(4).tobytes() + raw[8:])
    with pytest.raises(Gpt2pipeError, match="version 4 is not supported"):
        from_llmc(tmp_path / "version.bin")
    (tmp_path / "short.bin").write_bytes(raw[:-8])
    with pytest.raises(Gpt2pipeError, match="header describes a model of"):
        from_llmc(tmp_path / "short.bin")


def test_sampling_is_seeded(model):
    a = generate(model, "ROMEO:", max_new_tokens=8, num_samples=2, seed=3)
    b = generate(model, "ROMEO:", max_new_tokens=8, num_samples=2, seed=3)
    c = generate(model, "ROMEO:", max_new_tokens=8, num_samples=2, seed=4)
    assert a == b and a != c and len(a) == 2
    assert generate(model, "", max_new_tokens=4, temperature=0, num_samples=2, seed=1) == \
        generate(model, "", max_new_tokens=4, temperature=0, num_samples=2, seed=2)


def test_import_then_evaluate_and_init_from(model, tiny, tiny_shards, tmp_path):
    from gpt2pipe import config
    from gpt2pipe.train import loop as train
    from gpt2pipe.cli import main
    from gpt2pipe.eval.evaluate import evaluate_checkpoint

    to_hf(model, tmp_path / "hf")
    assert main(["import", str(tmp_path / "hf"), "--out", str(tmp_path / "imported.pt")]) == 0
    imported, _ = checkpoint.load_model(tmp_path / "imported.pt", CFG)
    assert torch.equal(imported(X)[0], model(X)[0])
    r_hf = evaluate_checkpoint(tiny, tmp_path / "hf", tiny_shards, None, tmp_path / "hf.json")
    r_pt = evaluate_checkpoint(tiny, tmp_path / "imported.pt", tiny_shards, None, tmp_path / "pt.json")
    assert r_hf["val_loss"] == r_pt["val_loss"]
    from gpt2pipe.eval import hellaswag

    hellaswag.write_bin(tmp_path / "hs.bin", hellaswag.read_jsonl(hellaswag.demo_jsonl(), max_examples=8))
    assert main(["evaluate", "--checkpoint", str(tmp_path / "hf"), "--skip-val", "--hellaswag",
                 str(tmp_path / "hs.bin"), "--out", str(tmp_path / "hs.json")]) == 0
    hs_only = json.loads((tmp_path / "hs.json").read_text())
    assert hs_only["val_loss"] is None and hs_only["hellaswag_examples"] == 8
    cfg = config.from_dict(dict(tiny.raw, train=dict(tiny.raw["train"], init_from=str(tmp_path / "hf"))))
    train.train(cfg, tiny_shards, tmp_path / "run", progress=False)
    first = (tmp_path / "run" / "train" / "train.log").read_text().splitlines()[0]
    assert first == f"s:0 tel:{r_hf['val_loss']:.4f}"


class EndsDocuments(torch.nn.Module):
    """A stand-in LM that ends the document right away, then writes token 40 ("I"), ends again, ... (by position)."""

    def __init__(self):
        super().__init__()
        self.config = CFG

    def forward(self, idx):
        logits = torch.full((*idx.shape, 50304), -1e4)
        even = torch.arange(idx.shape[1]).expand_as(idx) % 2 == 0
        nxt = torch.where(even, 50256, 40)
        logits.scatter_(2, nxt.unsqueeze(-1), 0.0)
        return logits, None


def test_samples_do_not_stop_at_an_immediate_endoftext():
    """A young model often ends the document at once; its samples used to be empty or one character."""
    m = EndsDocuments()
    eot = "<|endoftext|>"
    fixed = generate(m, "", max_new_tokens=6, temperature=0)[0]
    assert fixed == f"{eot}I{eot}I{eot}I"  # llm.c's way: a fixed number of tokens, boundaries shown
    assert generate(m, "", max_new_tokens=6, temperature=0, min_tokens=0)[0] == ""
    assert generate(m, "", max_new_tokens=6, temperature=0, min_tokens=3)[0] == f"{eot}I{eot}I"  # ends at the first EOT after 3 tokens
    assert generate(m, "", max_new_tokens=6, temperature=1.0, top_k=1, min_tokens=10)[0] == fixed


def test_sample_command_writes_fixed_length_samples(model, tmp_path, capsys):
    from gpt2pipe.cli import main

    checkpoint.save(tmp_path / "m.pt", model, 5)
    assert main(["sample", "--checkpoint", str(tmp_path / "m.pt"), "--max-new-tokens", "6", "--num-samples", "2",
                 "--temperature", "0", "--device", "cpu", "--out", str(tmp_path / "s.txt")]) == 0
    text = (tmp_path / "s.txt").read_text()
    assert capsys.readouterr().out == text
    assert text.count("--- sample ") == 2 and "(step 5, seed 42, temperature 0.0, top-k 50)" in text
    greedy = generate(model, "", max_new_tokens=6, temperature=0)[0]
    assert f"\n{greedy}\n" in text  # the same greedy tokens as generate() gives


def test_foreign_config_reads_the_shape_without_the_weights(model, tmp_path):
    from gpt2pipe.model.load import foreign_config

    to_hf(model, tmp_path / "hf")
    (tmp_path / "hf" / "model.safetensors").unlink()  # the shape comes from config.json alone
    assert foreign_config(tmp_path / "hf") == CFG
    raw = to_llmc(model, tmp_path / "m.bin").read_bytes()
    (tmp_path / "head.bin").write_bytes(raw[:1024])  # and from the llm.c header alone
    assert foreign_config(tmp_path / "head.bin") == CFG
    (tmp_path / "hf" / "config.json").write_text('{"model_type": "gpt2", "n_layer": "two"}')
    with pytest.raises(Gpt2pipeError, match="config.json: not a GPT-2 or Llama config"):
        foreign_config(tmp_path / "hf")
