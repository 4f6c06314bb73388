"""Muon's orthogonalisation (train/muon.py's optimizer uses it): modded-nanogpt's quintic Newton-Schulz
iteration, its shape factor, and the iteration batched over same-shape row blocks of several matrices."""

from __future__ import annotations

import torch

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # modded-nanogpt's quintic: fast growth of small singular values


def newton_schulz(g: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """An approximately orthogonal matrix with g's singular vectors (U V^T of g's SVD; its singular values
    end up roughly in [0.7, 1.2], which trains as well as exact orthogonalisation). bf16 throughout, as in
    modded-nanogpt; works on the last two dimensions of a batch."""
    a, b, c = NS_COEFFICIENTS
    x = g.bfloat16()
    tall = g.size(-2) > g.size(-1)
    if tall:  # iterate on the smaller Gram matrix
        x = x.mT
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + eps)  # spectral norm <= Frobenius norm <= 1
    for _ in range(steps):
        A = x @ x.mT
        B = b * A + c * A @ A
        x = a * x + B @ x
    return x.mT if tall else x


def muon_scale(shape: tuple[int, int]) -> float:
    """modded-nanogpt's shape factor of a (rows, cols) block: tall ones (e.g. the MLP's c_fc, rows = 4 x cols)
    take larger steps."""
    return max(1.0, shape[0] / shape[1]) ** 0.5


def orthogonal_updates(items, look, max_elements: int = 1 << 26):
    """Muon's update of row blocks of several matrices, the Newton-Schulz iterations batched over blocks of one
    shape (tall ones transposed to wide, as newton_schulz would), at most max_elements a batch: the speedrun
    model's 72 blocks are two batches, 768 x 768 and 768 x 3072, instead of 72 chains of small GEMMs
    (modded-nanogpt batches them the same way). items: (key, rows, block shape); look(key, rows) gives the
    block (any float dtype: it is rounded to bf16, as newton_schulz does). Yields (key, rows, the block's
    orthogonalised bf16 update, its shape's scale muon_scale), one batch at a time, so only a batch's blocks
    are held at once; the caller applies the scale with the learning rate (one launch a block, not three)."""
    groups: dict[tuple[int, int], list] = {}
    for key, rows, shape in items:
        groups.setdefault((min(shape), max(shape)), []).append((key, rows, shape))
    for (small, big), members in groups.items():
        per = max(1, max_elements // (small * big))
        for start in range(0, len(members), per):
            batch = members[start : start + per]
            tall = [shape[0] > shape[1] for _, _, shape in batch]
            wide = [x.mT if t else x for x, t in zip((look(key, rows).bfloat16() for key, rows, _ in batch), tall)]
            for (key, rows, shape), t, x in zip(batch, tall, newton_schulz(torch.stack(wide)).unbind(0)):
                yield key, rows, (x.mT if t else x), muon_scale(shape)


def row_blocks(shape: torch.Size, blocks: list[int] | None) -> list[tuple[slice, tuple[int, int]]]:
    """(rows, block shape) of each row block of a matrix orthogonalised in blocks (hidden_matrices)."""
    out, start = [], 0
    for n in blocks or [shape[-2]]:
        out.append((slice(start, start + n), (n, shape[-1])))
        start += n
    return out
