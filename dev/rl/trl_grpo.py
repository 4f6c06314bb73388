"""GRPO side by side: TRL's GRPOTrainer and `gpt2pipe rl` (rl.algorithm grpo) on the same model, prompts,
reward and settings, one GPU. Writes the prompts both read, runs TRL, prints its per-step log as rl.log
columns (step, reward_mean, reward_std, kl, samples_per_s).

    python dev/rl/trl_grpo.py prompts SHARD_DIR OUT.jsonl [--n 2048]   # our val-shard prompts, as text
    python dev/rl/trl_grpo.py trl HF_DIR PROMPTS.jsonl OUT.tsv [--steps 40]         # TRL's run

Matched settings (ours: --set rl.algorithm=grpo, the same numbers): 256 responses a step, 8 to a prompt,
mini-batches of 64 (TRL: per_device_train_batch_size 64, steps_per_generation 4), one pass (num_iterations 1),
24 new tokens at temperature 0.7, beta 0.04 (k3 KL in the loss), loss_type "grpo" (per-sequence mean),
group-scaled rewards, AdamW eps 1e-5, clip 0.2, grad-norm clip 1.0, constant rate; bf16 autocast on an fp32
model; prompts start with <|endoftext|> as ours do. The reward is VADER's compound score of the response.
"""

import argparse
import json
import sys
import time


def write_prompts(a):
    import numpy as np

    from pathlib import Path

    from gpt2pipe.data.llmc_format import read_shard
    from gpt2pipe.data.tokenizer import gpt2
    from gpt2pipe.rl import prompts

    shard = sorted(Path(a.src).glob("*val*.bin"))[0]
    rows = prompts.from_shard(np.asarray(read_shard(shard)), a.n, a.tokens, seed=42)
    enc = gpt2()
    with open(a.out, "w") as f:
        for r in rows:
            f.write(json.dumps({"prompt": enc.decode(r[1:])}) + "\n")
    print(f"{len(rows)} prompts -> {a.out}")


def run_trl(a):
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    texts = [json.loads(line)["prompt"] for line in open(a.src)]
    data = Dataset.from_dict({"prompt": ["<|endoftext|>" + t for t in texts]})
    tok = AutoTokenizer.from_pretrained(a.model)
    tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(a.model, torch_dtype=torch.float32)
    vader = SentimentIntensityAnalyzer()

    def sentiment(completions, **_):
        return [vader.polarity_scores(c)["compound"] for c in completions]

    args = GRPOConfig(
        output_dir="/tmp/trl_grpo", max_steps=4 * a.steps, per_device_train_batch_size=64, steps_per_generation=4,
        num_generations=8, max_completion_length=24, temperature=0.7, top_k=0, top_p=1.0, beta=0.04,
        num_iterations=1, loss_type="grpo", scale_rewards="group", learning_rate=a.lr, lr_scheduler_type="constant",
        warmup_steps=0, adam_epsilon=1e-5, max_grad_norm=1.0, epsilon=0.2, bf16=torch.cuda.is_available(),
        use_cpu=not torch.cuda.is_available(), logging_steps=4,
        report_to="none", save_strategy="no", seed=42, disable_dropout=True, shuffle_dataset=True,
        cache_implementation=a.cache)
    log = open(a.out, "w", buffering=1)  # line by line: a run cut short by a timeout keeps its steps
    log.write("step\treward_mean\treward_std\tkl\tsamples_per_s\n")

    class Timer(TrainerCallback):
        def __init__(self):
            self.t = time.perf_counter()

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "reward" in logs:
                now = time.perf_counter()
                row = (state.global_step // 4 - 1, logs["reward"], logs.get("reward_std", float("nan")),
                       logs.get("kl", float("nan")), 256 / (now - self.t))
                log.write("\t".join(f"{v:.6g}" for v in row) + "\n")
                print("trl", *row, flush=True)
                self.t = now

    trainer = GRPOTrainer(model=model, reward_funcs=sentiment, args=args, train_dataset=data,
                          processing_class=tok, callbacks=[Timer()])
    trainer.train()


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="what", required=True)
    w = sub.add_parser("prompts")
    w.add_argument("src")
    w.add_argument("out")
    w.add_argument("--n", type=int, default=2048)
    w.add_argument("--tokens", type=int, default=32)
    t = sub.add_parser("trl")
    t.add_argument("model")
    t.add_argument("src")
    t.add_argument("out")
    t.add_argument("--steps", type=int, default=40)
    t.add_argument("--lr", type=float, default=1e-5)
    t.add_argument("--cache", default=None, help="generate's cache_implementation (None: dynamic)")
    a = p.parse_args()
    write_prompts(a) if a.what == "prompts" else run_trl(a)


if __name__ == "__main__":
    sys.exit(main())
