"""`gpt2pipe bench`'s step table without a GPU: the torch.compile recipes compute the model's loss, the
llm.c runner (against a stand-in train_gpt2cu that checks what it is given), the CUDA-graph fallback and
check, ratios against the fastest baseline, and (slow) the whole bench end to end on CPU at a tiny size."""

import os
import re
import stat
import sys
import textwrap

import pytest
import torch

from gpt2pipe import Gpt2pipeError
from gpt2pipe.bench import baselines, compiled, llmc, modes, step, step_table
from gpt2pipe.bench.step import StepResult
from gpt2pipe.config import ModelConfig
from gpt2pipe.distributed import World
from gpt2pipe.model.gpt import GPT, GPT2_SIZES

TINY = ModelConfig(n_layer=1, n_head=2, n_embd=32, block_size=16)

# A stand-in for llm.c's train_gpt2cu: checks its command line and the shards as llm.c would (header, enough
# tokens for a micro-batch), then prints llm.c's lines. FAKE_MS: step times; FAKE_OOM_ABOVE: fail as llm.c
# does when cudaMalloc runs out, for -b above it.
FAKE_LLMC = """\
#!{python}
import os, sys
sys.path[:0] = {path!r}
from gpt2pipe.data.llmc_format import read_shard
args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
if len(sys.argv) % 2 == 0 or set(args) - set("-i -j -e -b -t -d -x -v -m -s -h -n -y -r".split()):
    print("usage: ./train_gpt2cu [options]")  # llm.c's error_usage(), exit status 1
    sys.exit(1)
B, T, total, steps = (int(args[k]) for k in ("-b", "-t", "-d", "-x"))
assert args["-e"] == os.environ.get("FAKE_DEPTH", "d12"), args
assert (args["-s"], args["-h"], args["-n"], args["-y"], args["-m"]) == ("0", "0", "0", "0", "1"), args
assert args["-r"] == os.environ.get("FAKE_RECOMPUTE", "0"), args  # the last -r given wins, as in llm.c
assert "-o" not in args and total % (B * T) == 0
for pattern in (args["-i"], args["-j"]):
    tokens = read_shard(pattern)
    assert len(tokens) >= B * T + 1 and tokens.max() < 50257
if B > int(os.environ.get("FAKE_OOM_ABOVE", "1000000")):
    print("[CUDA ERROR] at file llmc/cuda_utils.cuh:123:\\nout of memory")
    sys.exit(1)
print("device memory usage: 42080 MiB / 81079 MiB")
print("val loss 11.020121")
ms = [float(x) for x in os.environ["FAKE_MS"].split(",")]
for i in range(steps):
    print(f"step {{i + 1:4d}}/{{steps}} | loss {{11.0 - 0.1 * i:7.6f}} (+nanz)| norm {{17.1324 - i:6.4f}} (+nanz)| "
          f"lr 2.00e-05 | {{ms[i]:.2f}} ms | 24.6% bf16 MFU | 303344 tok/s")
print("val loss 10.5")
print("total average iteration time: 1.0 ms")
"""


@pytest.fixture
def fake_llmc(tmp_path):
    import gpt2pipe

    path = tmp_path / "llmc" / "train_gpt2cu"
    path.parent.mkdir()
    src = str(os.path.dirname(os.path.dirname(gpt2pipe.__file__)))
    path.write_text(FAKE_LLMC.format(python=sys.executable, path=[src]))
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_loss_only_graphs_compute_the_models_loss():
    """compile-sliced's graph computes exactly the model's loss, compile's the same loss another way, and
    compile-padded (nanoGPT's) a different one: the padded columns join the softmax."""
    torch.manual_seed(0)
    model = GPT(TINY)
    idx = torch.randint(0, TINY.vocab_size, (2, 16))
    targets = torch.randint(0, TINY.vocab_size, (2, 16))
    _, ref = model(idx, targets)
    sliced = compiled.LossOnly(model, "sliced")(idx, targets)
    masked = compiled.LossOnly(model, "masked")(idx, targets)
    padded = compiled.LossOnly(model, "padded")(idx, targets)
    assert sliced.item() == ref.item()
    assert masked.item() == pytest.approx(ref.item(), rel=1e-6)
    assert padded.item() > ref.item() + 1e-4  # 47 more columns of logit 0 in the partition function
    g_ref = torch.autograd.grad(ref, list(model.parameters()))
    g_masked = torch.autograd.grad(masked, list(model.parameters()))
    for a, b in zip(g_masked, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="loss"):
        compiled.LossOnly(model, "tied")


def test_micro_batch_defaults_per_size_and_overrides():
    assert modes.micro_batch_for("124M", "compile-max") == 64
    assert modes.micro_batch_for("350M", "compile-sliced") == 32
    assert modes.micro_batch_for("774M", "kernels-fp8") == 32
    assert modes.micro_batch_for("774M", "llmc") == 32
    assert modes.micro_batch_for("tiny", "eager") == 32  # unknown sizes take 124M's
    assert modes.parse_micro_batch(["compile=32", "350M:kernels=16"]) == {(None, "compile"): 32,
                                                                         ("350M", "kernels"): 16}
    for bad in ("compile", "compile=x", ":kernels=3", "kernels=0", "kernal=32", "350m:kernels=16"):
        with pytest.raises(Gpt2pipeError, match="--micro-batch"):
            modes.parse_micro_batch([bad])


def test_llmc_line_parser_reads_real_output():
    out = textwrap.dedent("""\
        allocating 39612 MiB for activations
        device memory usage: 42080 MiB / 81079 MiB
        val loss 11.020121
        step    1/150 | loss 11.003835 (+nanz)| norm 17.1324 (+nanz)| lr 2.00e-05 | 216.05 ms | 24.6% bf16 MFU | 303344 tok/s
        step    2/150 | loss 10.239479 (+nanz)| norm 11.6139 (+nanz)| lr 4.00e-05 | 194.03 ms | 27.4% bf16 MFU | 337765 tok/s
        step    3/150 | loss 10.307314 (+0.71z)| norm 9.3927 (-1.20z)| lr 6.00e-05 | 195.69 ms | 27.2% bf16 MFU | 336296 tok/s
        """)
    run = llmc.parse(out)
    assert run.step_ms == [216.05, 194.03, 195.69]
    assert run.losses == [11.003835, 10.239479, 10.307314]
    assert run.norms == [17.1324, 11.6139, 9.3927]
    assert run.memory_mib == 42080
    assert llmc.median_ms(run, warmup=1) == pytest.approx((194.03 + 195.69) / 2)


def test_llmc_runs_on_shards_it_writes_and_reports_timed_steps(fake_llmc, monkeypatch):
    monkeypatch.setenv("FAKE_MS", "900,100,120,110,500")
    notes = []
    r = baselines.time_llmc(str(fake_llmc), "124M", GPT2_SIZES["124M"], 8, 64, 8 * 64 * 2, steps=3, warmup=2,
                        extra=[], notes=notes)
    assert r.mode == "llmc" and r.micro_batch == 8 and not notes
    assert r.ms == pytest.approx(120.0)  # median of steps 3-5: the warm-up steps are left out
    assert r.tokens_per_s == pytest.approx(8 * 64 * 2 / 0.120)
    assert r.peak_gb == pytest.approx(42080 / 1024)
    assert r.losses[0] == pytest.approx(11.0) and r.norms[0] == pytest.approx(17.1324)
    monkeypatch.setenv("FAKE_DEPTH", "d24")
    assert baselines.time_llmc(str(fake_llmc), "350M", GPT2_SIZES["350M"], 8, 64, 8 * 64, 1, 0, [], []).ms == 900.0
    monkeypatch.setenv("FAKE_RECOMPUTE", "1")  # --llmc-args '-r 1' overrides the bench's -r 0
    assert baselines.time_llmc(str(fake_llmc), "350M", GPT2_SIZES["350M"], 8, 64, 8 * 64, 1, 0, ["-r", "1"],
                               []).ms == 900.0
    with pytest.raises(llmc.LlmcFailed):  # the fake asserts -r 1 arrived: without it, llm.c's "-r 0" fails it
        baselines.time_llmc(str(fake_llmc), "350M", GPT2_SIZES["350M"], 8, 64, 8 * 64, 1, 0, [], [])


def test_llmc_out_of_memory_halves_the_micro_batch_and_other_failures_stop(fake_llmc, monkeypatch):
    monkeypatch.setenv("FAKE_MS", "100,100,100")
    monkeypatch.setenv("FAKE_OOM_ABOVE", "2")
    notes = []
    r = baselines.time_llmc(str(fake_llmc), "124M", GPT2_SIZES["124M"], 8, 64, 8 * 64, 2, 1, [], notes)
    assert r.micro_batch == 2
    assert notes == ["# llmc: micro-batch 8 ran out of memory, trying 4",
                     "# llmc: micro-batch 4 ran out of memory, trying 2"]
    with pytest.raises(llmc.LlmcFailed, match="exit status"):  # an unknown argument: llm.c's usage, exit 1
        baselines.time_llmc(str(fake_llmc), "124M", GPT2_SIZES["124M"], 2, 64, 2 * 64, 2, 1, ["-q"], [])
    with pytest.raises(Gpt2pipeError, match="not an executable"):
        llmc.run(fake_llmc.parent / "missing", "124M", 2, 64, 128, 1, 0)
    with pytest.raises(Gpt2pipeError, match="no llm.c model"):
        llmc.command(fake_llmc, "tiny", 2, 64, 128, 1, "a", "b", [])


def result(mode, ms, losses=(11.0, 10.9), norms=(2.0,), **kw):
    return StepResult(mode, 64, ms, 524288 / (ms / 1e3), 400.0, 0.4, 30.0, list(losses), norms=list(norms), **kw)


def test_table_ratios_are_against_the_fastest_trusted_baseline(monkeypatch):
    rows = [result("kernels", 900.0), result("kernels-dw-bf16", 890.0), result("compile", 1000.0),
            result("compile-max", 800.0, trusted=False, note="WRONG with CUDA graphs"),
            result("compile-max", 950.0, note="max-autotune-no-cudagraphs"), result("llmc", 980.0),
            result("eager", 700.0)]  # eager is not a baseline, however fast
    text = step_table.format_section("124M", 1024, 524288, 5, 2, rows, ["# a note"])
    assert "fastest baseline measured here: compile-max (950.0 ms/step)" in text
    table = {}
    for line in text.splitlines():
        if line.startswith("| ") and not line.startswith("| mode"):
            cells = [c.strip() for c in line.split("|")[1:-1]]
            table.setdefault(cells[0], []).append(cells)
    assert table["kernels"][0][8] == f"{950 / 900:.3f}x"
    assert table["compile-max (baseline)"][0][8] == "-"  # the wrong one: no ratio, not the baseline
    assert table["compile-max (baseline)"][1][8] == "1.000x"
    assert table["llmc (baseline)"][0][8] == f"{950 / 980:.3f}x"
    assert "+10.0 ms/step (+1.12%)" in text  # the fp32 classifier sum against bf16
    assert "# a note" in text


def test_cuda_graph_check_and_fallback(monkeypatch):
    ref = result("compile", 1000.0, losses=(11.0, 10.9), norms=(2.0,))
    assert baselines.check_against(result("compile-max", 900.0, losses=(11.001, 10.901), norms=(2.01,)), ref) is None
    assert "gradient norm" in baselines.check_against(result("compile-max", 900.0, norms=(0.25,)), ref)
    assert "step-2 loss" in baselines.check_against(result("compile-max", 900.0, losses=(11.0, 10.0)), ref)
    calls = []

    def fake_fit(mode, cfg, b, seq_len, total_batch, steps, warmup, profile, notes, compile_mode=None):
        calls.append(compile_mode)
        if compile_mode is None and fail == "raise":
            raise RuntimeError("accessing tensor output of CUDAGraphs that has been overwritten\nmore")
        norms = (0.5,) if compile_mode is None and fail == "wrong" else (2.0,)
        return result(mode, 900.0 if compile_mode is None else 950.0, norms=norms)

    monkeypatch.setattr(step, "fit_micro_batch", fake_fit)
    monkeypatch.setattr(step, "release", lambda cuda: None)
    monkeypatch.setattr(compiled, "cudagraph_accumulation_problem", lambda device: None)
    fail, notes = "raise", []
    (r,) = baselines.time_compile_cudagraphs("compile-max", TINY, 64, 1024, 524288, 5, 2, False, notes, ref)
    assert calls == [None, compiled.CUDAGRAPH_FALLBACK] and r.trusted and "CUDA graphs failed" in r.note
    assert "RuntimeError: accessing tensor output of CUDAGraphs" in notes[0]
    fail, calls = "wrong", []
    wrong, again = baselines.time_compile_cudagraphs("compile-max", TINY, 64, 1024, 524288, 5, 2, False, [], ref)
    assert not wrong.trusted and "WRONG" in wrong.note and again.trusted and again.ms == 950.0
    fail, calls = "none", []
    (ok,) = baselines.time_compile_cudagraphs("compile-max", TINY, 64, 1024, 524288, 5, 2, False, [], None)
    assert calls == [None] and "unchecked" in ok.note
    # the tiny-model probe found CUDA graphs broken: straight to the fallback, max-autotune compiled once
    monkeypatch.setattr(compiled, "cudagraph_accumulation_problem", lambda device: "RuntimeError: overwritten")
    fail, calls, notes = "raise", [], []
    (r,) = baselines.time_compile_cudagraphs("compile-max", TINY, 64, 1024, 524288, 5, 2, False, notes, ref)
    assert calls == [compiled.CUDAGRAPH_FALLBACK] and "fail with accumulation" in r.note
    assert "tiny model (RuntimeError: overwritten)" in notes[0]


@pytest.mark.parametrize("failing", ["eager", "compile-max"])
def test_a_lost_cuda_context_stops_the_bench_and_keeps_the_modes_before_it(monkeypatch, failing):
    """An illegal address poisons the process: the mode's failure is noted, the table so far is handed on,
    no later mode runs (each would fail the same way) and the run ends in a one-line error. compile-max
    does not claim a fallback it could not run."""
    ran = []

    def fake_fit(mode, *args, **kw):
        ran.append(mode)
        if mode == failing:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return result(mode, 900.0)

    def fake_release(cuda):
        if failing in ran:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(step, "fit_micro_batch", fake_fit)
    monkeypatch.setattr(step, "release", fake_release)
    monkeypatch.setattr(compiled, "cudagraph_accumulation_problem", lambda device: None)
    partials = []
    with pytest.raises(Gpt2pipeError, match=f"{failing} left the CUDA context unusable"):
        step_table.run(("124M", "350M"), modes=("kernels", failing, "compile"), kernels=False,
                  on_partial=partials.append)
    assert ran == ["kernels", failing]
    report = partials[-1]
    assert "| kernels |" in report and f"# {failing} FAILED: RuntimeError" in report
    assert "the CUDA context is lost; no later mode or size ran" in report
    assert "timed as" not in report and "350M" not in report and report.count("# gpt2pipe bench on") == 1


def test_max_autotune_benchmarks_its_templates_in_a_subprocess():
    import torch._inductor.config as inductor_config

    with inductor_config.patch(autotune_in_subproc=False):  # restored on exit
        compiled.build(torch.nn.Linear(2, 2), compiled.RECIPES["compile"])
        assert not inductor_config.autotune_in_subproc  # the default recipe leaves inductor as it is
        compiled.build(torch.nn.Linear(2, 2), compiled.RECIPES["compile-max"])
        assert inductor_config.autotune_in_subproc


@pytest.mark.slow
def test_cudagraph_probe_runs_the_accumulation_it_checks():
    """On CPU inductor makes no CUDA graphs, so the probe's compiled run must match eager: the probe's own
    code path (eager vs compiled gradients over accumulated micro-batches) without a GPU."""
    compiled.cudagraph_accumulation_problem.cache_clear()
    assert compiled.cudagraph_accumulation_problem(torch.device("cpu")) is None


def test_cudagraph_steps_accumulate_into_buffers_of_their_own():
    """Before each step of a CUDA-graph mode every gradient is a zeroed buffer (reused in place once it
    exists), so no gradient lives in the graphs' memory pool; the other compile modes keep torch's None."""
    params = [torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2), requires_grad=False)]
    compiled.start_cudagraph_step(params)
    assert torch.equal(params[0].grad, torch.zeros(3)) and params[1].grad is None
    buffer = params[0].grad
    buffer.fill_(5.0)
    compiled.start_cudagraph_step(params)
    assert params[0].grad is buffer and not buffer.any()
    import torch._inductor.config as inductor_config

    world = World()
    with inductor_config.patch(autotune_in_subproc=False):  # building compile-max sets it; restored on exit
        assert step._Step("compile-max", TINY, 2, 16, 64, world).cudagraphs
        assert not step._Step("compile-max", TINY, 2, 16, 64, world, compiled.CUDAGRAPH_FALLBACK).cudagraphs
        assert not step._Step("compile", TINY, 2, 16, 64, world).cudagraphs


@pytest.mark.gpu
def test_cuda_graphs_sum_accumulated_gradients_in_the_benchs_loop():
    """On a GPU the probe replays real CUDA graphs: with a gradient buffer per parameter and a step mark per
    micro-batch (the bench's loop) they must sum as eager does, so compile-max times max-autotune as is."""
    compiled.cudagraph_accumulation_problem.cache_clear()
    skips = compiled.cudagraph_skips()
    assert compiled.cudagraph_accumulation_problem(torch.device("cuda")) is None
    assert compiled.cudagraph_skips() == skips  # the graphs were recorded and replayed, not declined


def test_kernel_switches_set_each_mode_and_are_restored():
    from gpt2pipe.ops import FUSIONS
    from gpt2pipe.ops.classifier import FusedClassifier

    on = dict(FUSIONS)
    assert FusedClassifier.dw_fp32 is True and on == {"gelu_epilogue": True, "packed_qkv": True,
                                                      "relu2_epilogue": True, "bgrad_epilogue": False}
    for mode, dw_fp32, fused in (("kernels-dw-bf16", False, on), ("kernels-unfused", True, dict.fromkeys(on, False)),
                                 ("kernels-bgrad", True, {**on, "bgrad_epilogue": True}), ("kernels", True, on)):
        with pytest.raises(KeyError):
            with step.kernel_switches(mode):
                assert FusedClassifier.dw_fp32 is dw_fp32
                assert FUSIONS == fused
                raise KeyError
        assert FusedClassifier.dw_fp32 is True and FUSIONS == on
    assert not step.REFUSED
    with step.kernel_switches("kernels-bgrad"):
        FUSIONS["bgrad_epilogue"] = False  # what linear.weight_bias_grad does when cuBLASLt refuses a shape
    assert step.REFUSED == {"kernels-bgrad": ["bgrad_epilogue"]} and FUSIONS == on  # noted under the table
    with step.kernel_switches("kernels"):
        FUSIONS["gelu_epilogue"] = False  # mlp.mlp's fallback, likewise
    assert step.REFUSED == {"kernels-bgrad": ["bgrad_epilogue"], "kernels": ["gelu_epilogue"]} and FUSIONS == on
    with step.kernel_switches("kernels-bgrad"):  # the next timing (another size) took the epilogue
        assert FUSIONS["bgrad_epilogue"]
    assert step.REFUSED == {"kernels": ["gelu_epilogue"]}
    step.REFUSED.clear()


def test_bench_cli_checks_sizes_and_llmc_before_it_needs_a_gpu(capsys):
    from gpt2pipe.cli import main

    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    out = capsys.readouterr().out
    for option in ("--llmc", "--llmc-args", "compile-max", "SIZE[,SIZE...]"):
        assert option in out
    from gpt2pipe.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["bench"]
    assert tuple(sub.get_default("modes").split(",")) == modes.DEFAULT_MODES
    for argv, message in ((["--size", "124M,9M"], "--size: unknown"), (["--modes", "kernels,turbo"], "turbo"),
                          (["--nproc", "2", "--size", "124M,350M"], "one --size")):
        assert main(["bench", *argv]) == 2
        assert message in capsys.readouterr().err


@pytest.mark.slow
def test_bench_end_to_end_on_cpu(fake_llmc, monkeypatch):
    """Every family of modes through the real step code (torch.compile included) at a tiny size, with the
    llm.c stand-in: one table, every mode in it, the same first loss where the loss is the same, and the
    report rewritten after each mode."""
    monkeypatch.setitem(GPT2_SIZES, "tiny", TINY)
    monkeypatch.setattr(llmc, "DEPTH", {**llmc.DEPTH, "tiny": "d12"})
    monkeypatch.setenv("FAKE_MS", "0.5,0.3,0.3")
    modes = ("kernels", "kernels-dw-bf16", "kernels-unfused", "kernels-bgrad", "eager", "nanogpt", "compile",
             "compile-sliced")
    partials = []
    text = step_table.run(("tiny",), seq_len=16, total_batch=16 * 4 * 2, modes=modes,
                     micro_batch={(None, m): 4 for m in (*modes, "llmc")}, steps=2, warmup=1, kernels=False,
                     llmc_binary=str(fake_llmc), on_partial=partials.append)
    assert "FAILED" not in text, text
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ") and
            not line.startswith("| mode")}
    assert list(rows) == ["kernels", "kernels-dw-bf16", "kernels-unfused", "kernels-bgrad", "eager",
                          "nanogpt (baseline)", "compile (baseline)", "compile-sliced (baseline)", "llmc (baseline)"]
    assert "fastest baseline measured here: llmc (0.3 ms/step)" in text  # the stand-in's timed steps
    losses = {m: [float(x) for x in re.findall(r"[0-9.]+", re.search(rf"- {m}: losses \[([^\]]*)\]", text)[1])]
              for m in ("kernels", "kernels-dw-bf16", "kernels-unfused", "kernels-bgrad", "eager", "compile",
                        "compile-sliced")}
    assert losses["compile"][0] == pytest.approx(losses["eager"][0], rel=1e-3)
    assert losses["compile-sliced"][0] == pytest.approx(losses["eager"][0], rel=1e-3)
    # CPU: nothing to switch
    assert losses["kernels"] == losses["kernels-dw-bf16"] == losses["kernels-unfused"] == losses["kernels-bgrad"]
    # the reference recipe: its own model (torch's default init) and optimizer, learning on the same tokens
    nano = [float(x) for x in re.findall(r"[0-9.]+", re.search(r"- nanogpt: losses \[([^\]]*)\]", text)[1])]
    assert len(nano) == 3 and nano[-1] < nano[0]
    assert len(partials) == len(modes) + 2 and "| llmc" in partials[-1]


def test_the_profiled_step_exports_its_events(tmp_path):
    """The communication figure is read from the exported trace of one profiled step: that trace must hold the
    step's own events (a profiler schedule with a warm-up step exported an empty one, and every 2-GPU row
    read 0.0 ms of communication)."""
    import json

    import torch

    from gpt2pipe.bench.step import profile_one_step
    from gpt2pipe.distributed import World

    calls = []

    def step():
        calls.append(1)
        a = torch.randn(64, 64)
        return (a @ a).sum()

    prof = profile_one_step(step, lambda: None, World(), cuda=False)
    prof.export_chrome_trace(str(tmp_path / "trace.json"))
    data = json.loads((tmp_path / "trace.json").read_text())
    events = data["traceEvents"] if isinstance(data, dict) else data
    assert len(calls) == 2  # the discarded warm-up step, then the profiled one
    assert sum(1 for e in events if e.get("ph") == "X" and "mm" in str(e.get("name", ""))) >= 1
