"""Closed-form ridge regression: the adaptor W that maps embeddings to object scores.

Everything here is a pure, differentiable function of tensors. Nothing holds state and nothing touches
the global grad mode, so the same code serves inference (under ``torch.inference_mode``) and
meta-training (gradients flow through the solve into the embedding network).

Notation (leading ``...`` dimensions are batch dimensions and broadcast):

- ``X[..., N, C]``  features of N pixels with C channels,
- ``Y[..., N, K]``  targets, one column per class (background and each object),
- ``w[..., N]``     optional per-pixel weights (0 = unknown pixel, ignored),
- ``W[..., C, K]``  the adaptor, ``P = X @ W`` the scores.

The ridge problem ``min_W sum_n w_n |x_n W - y_n|^2 + lam |W|^2`` has the closed form
``W = (X^T D X + lam I)^-1 X^T D Y`` with ``D = diag(w)``. Its sufficient statistics ``A = X^T D X``
and ``B = X^T D Y`` add up over frames, so several annotated frames, user corrections and online
updates from confident predictions are all the same operation: add their ``Stats``.

Block splitting (Liu et al., Table 2) keeps only the ``k`` diagonal blocks of ``A``: the C channels are
cut into k groups of C/k and each group gets its own small solve; ``k = 1`` is the exact solve.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

__all__ = [
    "Stats",
    "balanced_weights",
    "fit",
    "fit_dual",
    "one_hot",
    "predict",
    "solve",
    "statistics",
]


class Stats(NamedTuple):
    """Sufficient statistics of a weighted ridge problem, in block form.

    ``A[..., k, C/k, C/k]`` holds the k diagonal blocks of ``X^T D X``; ``B[..., C, K]`` is ``X^T D Y``.
    Two ``Stats`` of the same shape add: ``s1 + s2`` is the problem over the union of their pixels.
    """

    A: Tensor
    B: Tensor

    def __add__(self, other: object) -> Stats:  # type: ignore[override]
        if not isinstance(other, Stats):
            return NotImplemented
        return Stats(self.A + other.A, self.B + other.B)

    def scale(self, factor: float) -> Stats:
        """The statistics with every pixel's weight multiplied by ``factor`` (used to forget old frames)."""
        return Stats(self.A * factor, self.B * factor)

    @property
    def blocks(self) -> int:
        return self.A.shape[-3]


def _check_blocks(channels: int, blocks: int) -> int:
    if blocks < 1 or channels % blocks != 0:
        raise ValueError(f"blocks={blocks} must be a positive divisor of the channel count C={channels}")
    return channels // blocks


def statistics(X: Tensor, Y: Tensor, weights: Tensor | None = None, blocks: int = 1) -> Stats:
    """``statistics(X[...,N,C], Y[...,N,K], weights[...,N] | None, blocks=k) -> Stats``.

    Only the k diagonal blocks of ``X^T D X`` are formed, so block splitting also divides this cost by k.
    """
    if X.shape[:-1] != Y.shape[:-1]:
        raise ValueError(f"X {tuple(X.shape)} and Y {tuple(Y.shape)} must agree on the pixel dimensions")
    c = _check_blocks(X.shape[-1], blocks)
    Xw = X if weights is None else X * weights.unsqueeze(-1)
    Xb = X.unflatten(-1, (blocks, c))  # [..., N, k, c]
    Xwb = Xw.unflatten(-1, (blocks, c))
    A = torch.einsum("...nkc,...nkd->...kcd", Xwb, Xb)
    B = Xw.transpose(-1, -2) @ Y
    return Stats(A, B)


def solve(stats: Stats, lam: float | Tensor, *, check: bool = True) -> Tensor:
    """``solve(Stats(A[...,k,c,c], B[...,C,K]), lam) -> W[...,C,K]`` by a batched Cholesky factorisation.

    ``lam`` may be a tensor (learnable); it must be positive, which makes every block positive definite.
    ``check=False`` skips the factorisation's error check, the one place a solve reads a value back to the host
    (on a GPU, a wait for the device): the frame loop's re-solves, whose ``A`` is a sum of ``X^T D X`` terms
    and ``lam`` at least 0.001, so positive definite.
    """
    A, B = stats
    k, c = A.shape[-3], A.shape[-1]
    eye = torch.eye(c, dtype=A.dtype, device=A.device)
    L, _ = torch.linalg.cholesky_ex(A + lam * eye, check_errors=check)
    Bb = B.unflatten(-2, (k, c))  # [..., k, c, K]
    W = torch.cholesky_solve(Bb, L)
    return W.flatten(-3, -2)


def fit(X: Tensor, Y: Tensor, lam: float | Tensor, weights: Tensor | None = None, blocks: int = 1) -> Tensor:
    """``fit(X[...,N,C], Y[...,N,K], lam, weights[...,N] | None, blocks=k) -> W[...,C,K]``.

    Uses the dual form when there are fewer pixels than channels per block (the smaller system wins);
    both forms give the same W.
    """
    c = _check_blocks(X.shape[-1], blocks)
    if X.shape[-2] < c:
        return fit_dual(X, Y, lam, weights, blocks)
    return solve(statistics(X, Y, weights, blocks), lam)


def fit_dual(X: Tensor, Y: Tensor, lam: float | Tensor, weights: Tensor | None = None, blocks: int = 1) -> Tensor:
    """``fit_dual(X[...,N,C], Y[...,N,K], lam, weights, blocks) -> W[...,C,K]`` via ``X^T (X X^T + lam I)^-1 Y``.

    With weights the pixels are scaled by ``sqrt(w)`` first, which is the same weighted problem.
    Cost is cubic in N instead of C/k: the right choice for a few annotated pixels (clicks, scribbles).
    """
    c = _check_blocks(X.shape[-1], blocks)
    if weights is not None:
        root = weights.clamp_min(0).sqrt().unsqueeze(-1)
        X, Y = X * root, Y * root
    Xb = X.unflatten(-1, (blocks, c)).movedim(-2, -3)  # [..., k, N, c]
    G = Xb @ Xb.transpose(-1, -2)  # [..., k, N, N]
    eye = torch.eye(G.shape[-1], dtype=G.dtype, device=G.device)
    L = torch.linalg.cholesky(G + lam * eye)
    alpha = torch.cholesky_solve(Y.unsqueeze(-3).expand(*G.shape[:-1], Y.shape[-1]), L)
    W = Xb.transpose(-1, -2) @ alpha  # [..., k, c, K]
    return W.flatten(-3, -2)


def predict(X: Tensor, W: Tensor) -> Tensor:
    """``predict(X[...,N,C], W[...,C,K]) -> P[...,N,K]``: one matrix product (the sum over blocks is implicit)."""
    return X @ W


def one_hot(labels: Tensor, num_classes: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """``one_hot(labels[...,N] in 0..K-1, K) -> Y[...,N,K]``: class 0 is background."""
    return torch.nn.functional.one_hot(labels.long(), num_classes).to(dtype)


def balanced_weights(Y: Tensor, valid: Tensor | None = None, eps: float = 1.0, cap: float | None = None) -> Tensor:
    """``balanced_weights(Y[...,N,K], valid[...,N] | None) -> w[...,N]``: every class weighs the same in total.

    Each pixel gets ``n_valid / (K_present * n_class)``, so the weights average to one over valid pixels
    and a small object counts as much as the background. ``valid == 0`` pixels (unknown) get weight 0.
    ``cap`` bounds a class's per-pixel weight at ``cap`` times the most common class's, so that an object of a
    few pixels cannot outweigh the whole background (it then weighs less than the others in total).
    """
    v = torch.ones_like(Y[..., 0]) if valid is None else valid.to(Y.dtype)
    counts = (Y * v.unsqueeze(-1)).sum(-2, keepdim=True)  # [..., 1, K]
    present = (counts > 0).to(Y.dtype).sum(-1, keepdim=True).clamp_min(1)  # [..., 1, 1]
    total = v.sum(-1, keepdim=True).unsqueeze(-1)  # [..., 1, 1]
    per_class = total / (present * (counts + eps))  # [..., 1, K]
    if cap is not None:
        lightest = per_class.amin(-1, keepdim=True)  # the class with the most pixels
        per_class = torch.minimum(per_class, cap * lightest)
    return (Y * per_class).sum(-1) * v
