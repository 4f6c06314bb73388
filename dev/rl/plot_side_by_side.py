"""The GRPO side-by-side figure of docs/rl.md: reward per step and reward against KL per token, ours
(`gpt2pipe rl` rl.log) and TRL's GRPOTrainer (dev/rl/trl_grpo.py's tsv).

    python dev/rl/plot_side_by_side.py docs/rl_124m_grpo_side_by_side.log docs/rl_124m_grpo_trl.tsv docs/rl_124m_grpo_vs_trl.png
"""

import csv
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def rows(path):
    with open(path) as f:
        return [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f, delimiter="\t")]


def main(ours_path, trl_path, out):
    ours, trl = rows(ours_path), rows(trl_path)
    # ours logs the summed log-ratio per response; TRL the mean k3 estimate per token: both per token here
    ours_kl = [r["kl"] / r["response_length"] for r in ours]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot([r["step"] for r in ours], [r["reward_mean"] for r in ours], label="gpt2pipe rl (grpo)")
    a.plot([r["step"] for r in trl], [r["reward_mean"] for r in trl], label="TRL GRPOTrainer")
    a.set(xlabel="step (256 responses)", ylabel="mean VADER reward of the step's samples", title="reward")
    b.plot(ours_kl, [r["reward_mean"] for r in ours], "o-", ms=3, label="gpt2pipe rl (grpo)")
    b.plot([r["kl"] for r in trl], [r["reward_mean"] for r in trl], "o-", ms=3, label="TRL GRPOTrainer")
    b.set(xlabel="KL to the reference, nats per token", ylabel="mean reward", title="reward against KL")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main(*sys.argv[1:4])
