import pytest

from gpt2pipe import Gpt2pipeError, config, schema


def test_defaults_are_filled_in():
    cfg = config.from_dict({})
    assert cfg.model.padded_vocab_size == 50304
    assert cfg.train.total_batch_tokens == 524288
    assert cfg.data.source == "text"
    assert cfg.run_dir.as_posix() == "results/demo"


def test_config_folders_are_layouts():
    """Config.run_dir / data_dir name the folders layout does (config does not import layout, which builds on it)."""
    from gpt2pipe import layout

    cfg = config.from_dict({"run_name": "r", "results_dir": "out", "data": {"name": "d"}})
    assert (cfg.run_dir, cfg.data_dir) == (layout.run_dir(cfg.raw), layout.data_dir(cfg.raw))


def test_demo_and_124M_configs_validate():
    demo = config.load("config/config.yaml")
    real = config.load("config/gpt2-124M.yaml")
    assert demo.run_name == "demo" and real.run_name == "gpt2-124M"
    assert real.train.total_batch_tokens == 524288 and real.train.warmup_steps == 700
    assert real.train.max_steps * real.train.total_batch_tokens == pytest.approx(10e9, rel=1e-4)  # ~10B tokens
    assert real.train.checkpoint_steps()[-1] == real.train.max_steps


@pytest.mark.parametrize("raw, message", [
    ({"trian": {}}, "my.yaml: trian: unknown key; did you mean train?"),
    ({"train": {"max_steps": "ten"}}, "train.max_steps: 'ten' is not of type 'integer'"),
    ({"train": {"lr": 1}}, "my.yaml: train.lr: unknown key"),
    ({"train": {"learnng_rate": 1}}, "my.yaml: train.learnng_rate: unknown key; did you mean train.learning_rate?"),
    ({"train": {"n_layer": 1}}, "my.yaml: train.n_layer: unknown key; did you mean model.n_layer?"),
    ({"train": {"ops": "kernel"}}, "train.ops: 'kernel' is not one of ['torch', 'compile', 'kernels']; did you mean 'kernels'?"),
    ({"model": {"n_embd": 100, "n_head": 12}}, "n_embd must be divisible by model.n_head"),
    ({"train": {"seq_len": 2048}}, "seq_len must be <= model.block_size"),
    ({"train": {"total_batch_tokens": 1000}}, "multiple of train.micro_batch_size"),
    ({"train": {"total_batch_tokens": 1000, "micro_batch_size": 4, "seq_len": 128}},
     "(total_batch_tokens 1000, micro_batch_size 4 * seq_len 128 = 512)"),
    ({"run_name": "data"}, "run_name"),
    ({"train": {"ops": "magic"}}, "train.ops: 'magic' is not one of"),
    ({"train": {"zero": 4}}, "train.zero: 4 is not one of"),
    ({"train": {"zero": 3, "ops": "kernels"}}, "train.zero 3 shards the model through FSDP2, which runs on the torch path"),
])
def test_bad_config_fails_with_one_line(raw, message):
    with pytest.raises(Gpt2pipeError) as e:
        config.from_dict(raw, "my.yaml")
    assert message in str(e.value)
    assert str(e.value).startswith("my.yaml: ")
    assert "\n" not in str(e.value)


def test_load_file_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("run_name: x\ntrain:\n  max_steps: 7\n")
    cfg = config.load(path, ["train.learning_rate=0.01", "data.val_tokens=null"])
    assert (cfg.run_name, cfg.train.max_steps, cfg.train.learning_rate, cfg.data.val_tokens) == ("x", 7, 0.01, None)


def test_load_errors(tmp_path):
    with pytest.raises(Gpt2pipeError, match="config file not found"):
        config.load(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(Gpt2pipeError, match="not valid YAML"):
        config.load(bad)
    with pytest.raises(Gpt2pipeError, match="expected section.key=value"):
        config.load(None, ["train.max_steps"])


def test_checkpoint_steps_always_end_with_the_last_step():
    t = config.from_dict({"train": {"max_steps": 10, "checkpoint_every": 4}}).train
    assert t.checkpoint_steps() == [4, 8, 10]
    t = config.from_dict({"train": {"max_steps": 8, "checkpoint_every": 4}}).train
    assert t.checkpoint_steps() == [4, 8]


def test_fingerprint_tracks_sections():
    a = config.from_dict({"train": {"max_steps": 5}})
    b = config.from_dict({"train": {"max_steps": 6}})
    assert a.fingerprint("model") == b.fingerprint("model")
    assert a.fingerprint("train") != b.fingerprint("train")


def test_describe_lists_every_key_with_its_default():
    text = schema.describe()
    assert "train.learning_rate = 0.0006" in text
    assert "model.padded_vocab_size = 50304" in text


def test_yaml_errors_keep_line_and_column(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("run_name: x\ntrain:\n  max_steps: 5\n    seq_len: 64\n")
    with pytest.raises(Gpt2pipeError) as e:
        config.load(bad)
    assert str(e.value) == f"{bad}:4:12: not valid YAML: mapping values are not allowed here"


@pytest.mark.parametrize("override, message", [
    ("train.max_steps=ten", "--set train.max_steps=ten: train.max_steps: 'ten' is not of type 'integer'"),
    ("train.lr=1", "--set train.lr=1: train.lr: unknown key"),
    ("train.max_step=1", "--set train.max_step=1: train.max_step: unknown key; did you mean train.max_steps?"),
    ("train.seq_len=96", "--set train.seq_len=96: train.total_batch_tokens must be a multiple of"),
    ("train.max_steps=[1", "--set train.max_steps=[1: value is not valid YAML"),
    ("run_name.x=1", "--set run_name.x=1: run_name: {'x': 1} is not of type 'string'"),
    ("train.max_steps", "--set train.max_steps: expected section.key=value"),
])
def test_bad_set_is_reported_under_the_set_not_the_file(tmp_path, override, message):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  total_batch_tokens: 1024\n  micro_batch_size: 1\n  seq_len: 1024\n")
    with pytest.raises(Gpt2pipeError) as e:
        config.load(path, ["train.warmup_steps=3", override])
    assert str(e.value).startswith(message) and "c.yaml" not in str(e.value)


def test_bad_file_value_is_still_reported_under_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  max_steps: ten\n")
    with pytest.raises(Gpt2pipeError, match=f"^{path}: train.max_steps: 'ten' is not of type"):
        config.load(path, ["train.warmup_steps=3"])


def test_spelled_out_defaults_and_idle_keys_leave_the_identity_and_the_model_alone():
    """A GPT-2 config that writes n_kv_head = n_head, mlp_hidden = 4 n_embd or a rope_theta without rotary
    positions is GPT-2 (its kernels path, fp8, exports) and trains the same run; so does an AdamW run with Muon
    settings or a cosine run with a cooldown fraction. Set where they act, they count."""
    from gpt2pipe.config import ModelConfig, training_identity

    plain = config.from_dict({})
    spelled = config.from_dict({"model": {"n_kv_head": 12, "mlp_hidden": 3072, "rope_theta": 5e5},
                                "train": {"muon_learning_rate": 0.1, "cooldown_frac": 0.2}})
    assert spelled.model.arch_changes() == {}
    assert training_identity(spelled.raw) == training_identity(plain.raw)
    assert ModelConfig(n_kv_head=4).arch_changes() == {"n_kv_head": 4}
    assert ModelConfig(mlp="swiglu").arch_changes() == {"mlp": "swiglu"}  # its own default width is no change
    assert ModelConfig(mlp="swiglu", mlp_hidden=3072).arch_changes() == {"mlp": "swiglu", "mlp_hidden": 3072}
    muon = config.from_dict({"train": {"optimizer": "muon"}})
    other = config.from_dict({"train": {"optimizer": "muon", "muon_learning_rate": 0.1}})
    assert training_identity(muon.raw) != training_identity(other.raw)
    wsd = config.from_dict({"train": {"lr_schedule": "wsd", "cooldown_frac": 0.2}})
    assert training_identity(wsd.raw)["train"]["cooldown_frac"] == 0.2


def test_fp8_gemms_is_in_the_identity_only_where_it_acts():
    from gpt2pipe.config import training_identity

    plain, off = config.from_dict({}), config.from_dict({"train": {"fp8_gemms": ["qkv"]}})
    assert training_identity(off.raw) == training_identity(plain.raw)  # fp8 off: no GEMM runs in fp8
    default = config.from_dict({"train": {"fp8": True}})
    both = config.from_dict({"train": {"fp8": True, "fp8_gemms": ["mlp", "qkv"]}})
    qkv = config.from_dict({"train": {"fp8": True, "fp8_gemms": ["qkv"]}})
    assert default.train.fp8_gemms == ["mlp"]  # qkv in fp8 cost 0.14 of val loss over 100M tokens (docs/fp8.md)
    # mlp + qkv is what fp8 runs trained before the key existed: left out, so their identities stay
    assert "fp8_gemms" not in training_identity(both.raw)["train"]
    assert training_identity(default.raw)["train"]["fp8_gemms"] == ["mlp"]
    assert training_identity(qkv.raw)["train"]["fp8_gemms"] == ["qkv"]
    assert qkv.train.fp8_gemms == ["qkv"]
    # a state saved by an fp8 run before the key existed (mlp + qkv) does not resume under the new default
    from gpt2pipe.train.state import identity_diff, with_new_defaults

    old = training_identity(both.raw)
    assert identity_diff(with_new_defaults(old), with_new_defaults(training_identity(both.raw))) == []
    diff = identity_diff(with_new_defaults(old), with_new_defaults(training_identity(default.raw)))
    assert len(diff) == 1 and "fp8_gemms" in diff[0], diff
    with pytest.raises(Gpt2pipeError, match="fp8_gemms"):
        config.from_dict({"train": {"fp8_gemms": []}})
    with pytest.raises(Gpt2pipeError, match="fp8_gemms"):
        config.from_dict({"train": {"fp8_gemms": ["attn"]}})


def test_fp8_gradients_is_in_the_identity_only_where_it_acts():
    """train.fp8_gradients changes the weights only with fp8 on and the MLP in fp8 (the only GEMMs that read
    fp8 gradients): elsewhere it is left out, so it cannot make equal runs differ. e5m2, what fp8 runs trained
    with before the key existed, is left out too: such a state resumes under fp8_gradients: e5m2, and under
    the new default (e4m3) its resume is refused by name."""
    from gpt2pipe.config import training_identity
    from gpt2pipe.train.state import identity_diff, with_new_defaults

    def ident(**train):
        return training_identity(config.from_dict({"train": train}).raw)["train"]

    assert config.from_dict({}).train.fp8_gradients == "e4m3"  # passed the quality gate (docs/fp8.md)
    assert ident(fp8_gradients="e5m2") == ident()  # fp8 off
    assert ident(fp8=True, fp8_gemms=["qkv"], fp8_gradients="e5m2") == ident(fp8=True, fp8_gemms=["qkv"])
    assert ident(fp8=True, fp8_gradients="e4m3") == ident(fp8=True)
    assert ident(fp8=True)["fp8_gradients"] == "e4m3"
    assert ident(fp8=True, fp8_gemms=["mlp", "head"])["fp8_gradients"] == "e4m3"
    old = ident(fp8=True, fp8_gradients="e5m2")
    assert "fp8_gradients" not in old
    assert identity_diff(with_new_defaults({"train": old}), with_new_defaults({"train": old})) == []
    diff = identity_diff(with_new_defaults({"train": old}), with_new_defaults({"train": ident(fp8=True)}))
    assert len(diff) == 1 and "fp8_gradients" in diff[0] and "e5m2" in diff[0], diff
    with pytest.raises(Gpt2pipeError, match="fp8_gradients"):
        config.from_dict({"train": {"fp8": True, "fp8_gradients": "e3m4"}})


def test_fp8_gemms_is_compared_as_a_set():
    """[qkv, mlp] and [mlp, qkv] train the same model: one identity (a resume is not refused), one train stage
    config and one workflow fingerprint (Snakemake does not rerun training)."""
    from gpt2pipe import layout
    from gpt2pipe.config import training_identity
    from gpt2pipe.train.state import identity_diff, with_new_defaults

    def fp8(gemms):
        return config.validate({"train": {"fp8": True, "fp8_gemms": gemms}})

    for a, b in ((["qkv", "mlp"], ["mlp", "qkv"]), (["mlp", "head"], ["head", "mlp"]),
                 (["qkv", "head", "mlp"], ["mlp", "qkv", "head"])):
        assert training_identity(fp8(a)) == training_identity(fp8(b)), a
        assert layout.training_fingerprint(fp8(a)) == layout.training_fingerprint(fp8(b)), a
        assert layout.stage_config_text(fp8(a), "train") == layout.stage_config_text(fp8(b), "train"), a
    assert config.from_dict(fp8(["qkv", "mlp"])).train.fp8_gemms == ["mlp", "qkv"]
    # what states saved so far hold is unchanged: [mlp] in the identity, [mlp, qkv] left out of it
    assert training_identity(fp8(["mlp"]))["train"]["fp8_gemms"] == ["mlp"]
    assert "fp8_gemms" not in training_identity(fp8(["qkv", "mlp"]))["train"]
    # a state saved before, in the config's order, resumes under the same GEMMs listed in another order
    old = training_identity(fp8(["mlp", "head"]))
    old["train"]["fp8_gemms"] = ["mlp", "head"]
    assert identity_diff(with_new_defaults(old), with_new_defaults(training_identity(fp8(["head", "mlp"])))) == []
    assert identity_diff(with_new_defaults(old), with_new_defaults(training_identity(fp8(["head"])))) != []


def test_exponent_numbers_are_numbers_in_files_and_overrides(tmp_path):
    """`1e-5` is a float in YAML 1.2 but a string to PyYAML's YAML 1.1: a rate written the usual way was refused
    as "not of type number" (found when `--set rl.learning_rate=1e-5` stopped a run)."""
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  learning_rate: 6e-4\n  weight_decay: 1E-1\n")
    cfg = config.load(path, ["train.warmup_steps=1e2"])
    assert cfg.train.learning_rate == 6e-4 and cfg.train.weight_decay == 0.1
    assert cfg.train.warmup_steps == 100 and isinstance(cfg.train.warmup_steps, (int, float))
    assert config.load(path, ["run_name=1e5x"]).run_name == "1e5x"  # not a number: still a string
