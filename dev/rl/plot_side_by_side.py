"""The side-by-side figures of docs/rl.md: reward per step and reward against KL, ours (`gpt2pipe rl`'s rl.log)
and TRL's (dev/rl/trl_grpo.py's or dev/rl/trl_ppo.py's tsv).

    python dev/rl/plot_side_by_side.py grpo docs/rl_124m_grpo_side_by_side.log docs/rl_124m_grpo_trl.tsv docs/rl_124m_grpo_vs_trl.png
    python dev/rl/plot_side_by_side.py ppo OURS_PPO.log TRL_PPO.tsv OUT.png

KL: GRPO per token (TRL logs the mean k3 estimate per token; ours the summed log-ratio per response, divided
here by the response length); PPO per response (both log the summed log-ratio of each response, TRL's without
the <|endoftext|> token: GPT-2's pad token is its end token, and TRL masks padding).
"""

import csv
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

TRAINER = {"grpo": "TRL GRPOTrainer (1.16.0)", "ppo": "TRL PPOTrainer (0.29.1)"}


def rows(path):
    with open(path) as f:
        return [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f, delimiter="\t")]


def main(algorithm, ours_path, trl_path, out):
    ours, trl = rows(ours_path), rows(trl_path)
    per_token = algorithm == "grpo"
    ours_kl = [r["kl"] / r["response_length"] if per_token else r["kl"] for r in ours]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for kl, data, label in ((ours_kl, ours, f"gpt2pipe rl ({algorithm})"), ([r["kl"] for r in trl], trl, TRAINER[algorithm])):
        a.plot([r["step"] for r in data], [r["reward_mean"] for r in data], label=label)
        b.plot(kl, [r["reward_mean"] for r in data], "o-", ms=3, label=label)
    a.set(xlabel="step (256 responses)", ylabel="mean VADER reward of the step's samples", title="reward")
    b.set(xlabel=f"KL to the reference, nats per {'token' if per_token else 'response'}", ylabel="mean reward",
          title="reward against KL")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main(*sys.argv[1:5])
