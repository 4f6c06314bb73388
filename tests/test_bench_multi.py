"""Multi-process pieces that run without GPUs: the bench's communication accounting (bench/comm.py) on
hand-made traces, its 1-vs-N report and flow, and the collective timeout that keeps a dead peer from hanging
a job."""

import json

import pytest

from gpt2pipe.bench.comm import comm_time, comm_time_of_trace


def kernel(name, ts, dur, cat="kernel"):
    return {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur}


def test_exposed_comm_is_nccl_time_with_nothing_else_running():
    events = [
        kernel("ampere_bf16_gemm", 0, 100),                 # compute 0-100
        kernel("ncclDevKernel_ReduceScatter_Sum_bf16", 60, 80),   # 60-140: 40 hidden, 40 exposed
        kernel("layernorm_backward", 120, 10),              # 120-130 hides 10 more of it
        kernel("ncclDevKernel_AllGather", 200, 50),         # 200-250, alone: exposed
        kernel("Memcpy DtoD", 240, 20, cat="gpu_memcpy"),   # hides 240-250
        {"ph": "X", "cat": "cpu_op", "name": "aten::nccl_thing", "ts": 0, "dur": 1000},  # host side: ignored
        {"ph": "i", "cat": "kernel", "name": "ncclMarker", "ts": 5},                    # not a span
    ]
    c = comm_time(events)
    assert c.total_ms == pytest.approx((80 + 50) / 1e3)
    assert c.exposed_ms == pytest.approx((30 + 40) / 1e3)  # 100-120, 130-140, 200-240
    assert c.step_ms == pytest.approx(260 / 1e3)


def test_overlapping_nccl_kernels_count_once_and_no_comm_is_zero(tmp_path):
    events = [kernel("ncclKernel_AllReduce", 0, 50), kernel("ncclKernel_AllReduce", 25, 50),
              kernel("gemm", 100, 10)]
    c = comm_time(events)
    assert c.total_ms == pytest.approx(75 / 1e3) and c.exposed_ms == pytest.approx(75 / 1e3)
    trace = tmp_path / "t.json"
    trace.write_text(json.dumps({"traceEvents": [kernel("gemm", 0, 10)]}))
    assert comm_time_of_trace(trace).total_ms == 0 and comm_time_of_trace(trace).exposed_ms == 0


def test_report_puts_one_and_n_side_by_side(monkeypatch):
    import torch

    from gpt2pipe.bench.comm import CommTime
    from gpt2pipe.bench.scaling import format_report
    from gpt2pipe.bench.step import StepResult

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "H100 test")
    one = StepResult("kernels", 64, 1000.0, 524288.0, 450.0, 0.455, 23.4, [11.0, 10.5], 1, None)
    two = StepResult("kernels", 64, 520.0, 524288 / 0.52, 865.0, 0.437, 18.2, [11.0, 10.52], 2,
                     CommTime(12.5, 80.0, 519.0))
    text = format_report("124M", 1024, 524288, 5, 2, 2, {"kernels": one}, {"kernels": two}, [])
    rows = [ln for ln in text.splitlines() if ln.startswith("| kernels")]
    assert rows[0].split("|")[2].strip() == "1" and rows[1].split("|")[2].strip() == "2"
    assert "96.2%" in rows[1]  # 1008K tok/s / (2 x 524K tok/s)
    assert "12.5 | 80.0" in rows[1] and "- | -" in rows[0]
    assert "max relative difference 1.9e-03" in text


DRIVER = """
import sys
from gpt2pipe.bench import scaling
from gpt2pipe.config import ModelConfig
from gpt2pipe.model.gpt import GPT2_SIZES

GPT2_SIZES["tiny"] = ModelConfig(n_layer=1, n_head=2, n_embd=32, block_size=16)
report = scaling.run("tiny", 16, 16 * 4 * 4, ("kernels", "eager"), {"kernels": 4, "eager": 4}, 2, 1)
if report is not None:
    open(sys.argv[1], "w").write(report)
"""


@pytest.mark.slow
def test_scaling_run_end_to_end_on_cpu_processes(tmp_path):
    """The 1-vs-N flow itself (baseline on process 0 before the others join, micro-batches broadcast,
    maxima gathered, report on process 0) under a real torchrun, on CPU processes (gloo): on GPUs the same
    code adds NCCL and the profiled step's kernel trace."""
    import os
    import subprocess
    import sys

    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    out = tmp_path / "report.md"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        str(driver), str(out)], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES=""))
    assert r.returncode == 0, r.stderr[-3000:]
    text = out.read_text()
    rows = [ln.split("|") for ln in text.splitlines() if ln.startswith(("| kernels", "| eager"))]
    assert [(c[1].strip(), c[2].strip()) for c in rows] == [("kernels", "1"), ("kernels", "2"), ("eager", "1"),
                                                            ("eager", "2")]
    # the same tokens and weights on 1 and 2 processes: the same losses, step by step
    diffs = [float(x) for x in __import__("re").findall(r"max relative difference ([0-9.e+-]+)", text)]
    assert len(diffs) == 2 and all(d < 1e-2 for d in diffs), text


def test_collective_timeout_from_the_environment(monkeypatch):
    from gpt2pipe import Gpt2pipeError
    from gpt2pipe.distributed import collective_timeout, nccl_failure_env

    monkeypatch.delenv("GPT2PIPE_NCCL_TIMEOUT_S", raising=False)
    assert collective_timeout().total_seconds() == 600
    monkeypatch.setenv("GPT2PIPE_NCCL_TIMEOUT_S", "45")
    assert collective_timeout().total_seconds() == 45
    assert collective_timeout(3600).total_seconds() == 3600  # the bench's baseline wait
    for bad in ("ten", "0", "-5"):
        monkeypatch.setenv("GPT2PIPE_NCCL_TIMEOUT_S", bad)
        with pytest.raises(Gpt2pipeError, match="GPT2PIPE_NCCL_TIMEOUT_S"):
            collective_timeout()
    monkeypatch.delenv("TORCH_NCCL_ASYNC_ERROR_HANDLING", raising=False)
    monkeypatch.delenv("TORCH_NCCL_DUMP_ON_TIMEOUT", raising=False)  # restored (absent) afterwards
    nccl_failure_env()
    assert __import__("os").environ["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "1"  # tear down on a failed collective
    monkeypatch.setenv("TORCH_NCCL_ASYNC_ERROR_HANDLING", "3")
    nccl_failure_env()
    assert __import__("os").environ["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "3"  # the user's choice stands
