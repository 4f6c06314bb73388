"""Everything a run reports, in one place: llm.c's text log (`s:STEP trl:LOSS lr:LR norm:N`, `s:STEP tel:VAL`,
read by llm.c's vislog and by our report), the progress bar, and optionally TensorBoard or Weights & Biases
(`train.log_to`). Only process 0 writes; the other processes get a silent instance."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tqdm import tqdm

from gpt2pipe import Gpt2pipeError
from gpt2pipe.progress import terminal


def say_for(world) -> Callable[[str], None]:
    """Print above the progress bar on process 0; the other processes stay quiet."""
    return tqdm.write if world.main else (lambda message: None)


def _line_step_kind(line: str) -> tuple[int, str]:
    head, kind = line.split()[:2]
    return int(head[2:]), kind[:3]


PRINT_EVERY = 10  # steps between the step lines printed when there is no progress bar


class RunLog:
    def __init__(self, path: Path | None, resume_step: int | None, max_steps: int, progress: bool,
                 log_to: list[str] = (), run_dir: Path | None = None, config: dict | None = None):
        self.path = path
        self.f = None
        self.sinks = []
        if path is not None:
            kept = []
            if resume_step is not None and path.exists():
                # a state at step k holds k updates: keep trl lines of steps < k and other lines of steps <= k
                for ln in path.read_text().splitlines(keepends=True):
                    s, kind = _line_step_kind(ln)
                    if s < resume_step or (s == resume_step and kind != "trl"):
                        kept.append(ln)
            path.write_text("".join(kept))
            self.f = open(path, "a")
            self.sinks = [_sink(name, run_dir, config) for name in log_to]
        self.max_steps = max_steps
        self.bar = tqdm(total=max_steps, initial=resume_step or 0, desc="train", unit="step",
                        disable=not (progress and path is not None and terminal()), dynamic_ncols=True)

    @property
    def main(self) -> bool:
        return self.f is not None

    def say(self, message: str) -> None:
        """A line for the person watching (stderr, above the progress bar)."""
        if self.main:
            tqdm.write(message)

    def train_step(self, step: int, loss: float, lr: float, norm: float, skipped: bool, ms: float,
                   tokens_per_s: float, mfu: float | None) -> None:
        if not self.main:
            return
        self.f.write(f"s:{step} trl:{loss:.4f} lr:{lr:.6f} norm:{norm:.2f}" + (" skipped" if skipped else "") + "\n")
        self.f.flush()
        mfu_text = f"{100 * mfu:.1f}%" if mfu is not None else "-"
        speed = f"{ms:.0f} ms {tokens_per_s:,.0f} tok/s mfu/GPU {mfu_text}"
        self.bar.set_postfix_str(f"loss {loss:.4f} lr {lr:.2e} | {speed}")
        self.bar.update(1)
        if self.bar.disable and (step < 3 or (step + 1) % PRINT_EVERY == 0):  # no bar (batch jobs): a line now and then
            self.say(f"step {step + 1:6d}/{self.max_steps} | loss {loss:.4f} | lr {lr:.2e} | norm {norm:.2f} | {speed}"
                     + (" | skipped" if skipped else ""))
        scalars = {"train/loss": loss, "train/lr": lr, "train/grad_norm": norm, "perf/tokens_per_s": tokens_per_s}
        if mfu is not None:
            scalars["perf/mfu_per_gpu"] = mfu
        for sink in self.sinks:
            sink.scalars(step, scalars)

    def val(self, step: int, loss: float) -> None:
        if not self.main:
            return
        self.f.write(f"s:{step} tel:{loss:.4f}\n")
        self.f.flush()
        self.say(f"step {step:6d} | val loss {loss:.4f}")
        for sink in self.sinks:
            sink.scalars(step, {"val/loss": loss})

    def close(self) -> None:
        self.bar.close()
        if self.f is not None:
            self.f.close()
            for sink in self.sinks:
                sink.close()


class _TensorBoard:
    def __init__(self, run_dir: Path):
        from torch.utils.tensorboard import SummaryWriter  # installed: check_sinks ran at setup

        self.writer = SummaryWriter(str(run_dir / "tensorboard"))

    def scalars(self, step: int, values: dict) -> None:
        for k, v in values.items():
            self.writer.add_scalar(k, v, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class _WandB:
    def __init__(self, run_dir: Path, config: dict | None):
        import wandb  # installed: check_sinks ran at setup

        # resume="allow" with a stable id: a resumed run continues the same W&B run
        self.run = wandb.init(project="gpt2pipe", name=run_dir.name, id=f"gpt2pipe-{run_dir.name}", resume="allow",
                              dir=str(run_dir), config=config)

    def scalars(self, step: int, values: dict) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


def _sink(name: str, run_dir: Path, config: dict | None):
    return _TensorBoard(run_dir) if name == "tensorboard" else _WandB(run_dir, config)


# what to do when a logger's package (named as the logger) is missing
_INSTALL = {"tensorboard": "pip install tensorboard", "wandb": "pip install wandb; set WANDB_API_KEY or WANDB_MODE=offline"}


def check_sinks(log_to: list[str]) -> None:
    """Fail before any training time is spent when a requested logger is not installed."""
    import importlib.util

    for name in log_to:
        if importlib.util.find_spec(name) is None:
            raise Gpt2pipeError(f"train.log_to lists {name!r} but the {name} package is not installed "
                                f"({_INSTALL[name]})")
