"""The ridge solver against float64 references: exactness, dual form, gradients, block splitting, statistics."""

from __future__ import annotations

import pytest
import torch

from vosrr import solver


def _problem(n: int = 300, c: int = 48, k: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, c, generator=g, dtype=torch.float64)
    Y = torch.randn(n, k, generator=g, dtype=torch.float64)
    w = torch.rand(n, generator=g, dtype=torch.float64)
    return X, Y, w


def test_fit_matches_lstsq_on_augmented_system() -> None:
    X, Y, w = _problem()
    lam = 5.0
    root = w.sqrt().unsqueeze(-1)
    # min |sqrt(w)(XW - Y)|^2 + lam |W|^2  ==  lstsq of [sqrt(w) X; sqrt(lam) I] W = [sqrt(w) Y; 0]
    A = torch.cat([root * X, lam**0.5 * torch.eye(X.shape[1], dtype=X.dtype)])
    B = torch.cat([root * Y, torch.zeros(X.shape[1], Y.shape[1], dtype=X.dtype)])
    expected = torch.linalg.lstsq(A, B).solution
    torch.testing.assert_close(solver.fit(X, Y, lam, w), expected, rtol=1e-9, atol=1e-10)


def test_fit_matches_normal_equations_without_weights() -> None:
    X, Y, _ = _problem(seed=1)
    expected = torch.linalg.solve(X.T @ X + 2.0 * torch.eye(X.shape[1], dtype=X.dtype), X.T @ Y)
    torch.testing.assert_close(solver.fit(X, Y, 2.0), expected, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("blocks", [1, 2, 4])
def test_primal_equals_dual(blocks: int) -> None:
    X, Y, w = _problem(n=20, c=64, seed=2)  # fewer pixels than channels: fit() picks the dual
    primal = solver.solve(solver.statistics(X, Y, w, blocks), 5.0)
    torch.testing.assert_close(solver.fit_dual(X, Y, 5.0, w, blocks), primal, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(solver.fit(X, Y, 5.0, w, blocks), primal, rtol=1e-8, atol=1e-10)


def test_zero_weight_pixels_are_ignored() -> None:
    X, Y, w = _problem(seed=3)
    w[:100] = 0
    torch.testing.assert_close(solver.fit(X, Y, 5.0, w), solver.fit(X[100:], Y[100:], 5.0, w[100:]))
    Y2 = Y.clone()
    Y2[:100] = 1e3  # the targets of unknown pixels do not matter
    torch.testing.assert_close(solver.fit(X, Y2, 5.0, w), solver.fit(X, Y, 5.0, w))


def test_gradcheck_through_the_solve() -> None:
    X, Y, w = _problem(n=30, c=6, k=2, seed=4)
    lam = torch.tensor(3.0, dtype=torch.float64)
    inputs = (X.requires_grad_(), Y.requires_grad_(), lam.requires_grad_())
    assert torch.autograd.gradcheck(lambda x, y, lam_: solver.fit(x, y, lam_, w, 2), inputs)
    Xd, Yd = X[:4].detach().requires_grad_(), Y[:4].detach().requires_grad_()
    assert torch.autograd.gradcheck(lambda x, y: solver.fit_dual(x, y, 1.5, w[:4]), (Xd, Yd))


def test_one_block_is_the_full_solve_and_more_blocks_differ_on_correlated_features() -> None:
    X, Y, w = _problem(seed=5)
    X = X + X[:, :1]  # correlate all channels
    full = torch.linalg.solve(X.T @ (w[:, None] * X) + 5 * torch.eye(48, dtype=X.dtype), X.T @ (w[:, None] * Y))
    torch.testing.assert_close(solver.fit(X, Y, 5.0, w, blocks=1), full)
    assert (solver.fit(X, Y, 5.0, w, blocks=4) - full).abs().max() > 1e-3


@pytest.mark.parametrize("blocks", [2, 4, 8])
def test_blocks_are_exact_for_block_uncorrelated_features(blocks: int) -> None:
    X, Y, w = _problem(n=400, c=64, seed=6)
    c = 64 // blocks
    owner = torch.arange(400) % blocks  # every pixel lives in exactly one channel block
    mask = (torch.arange(64) // c)[None, :] == owner[:, None]
    X = X * mask
    torch.testing.assert_close(solver.fit(X, Y, 5.0, w, blocks), solver.fit(X, Y, 5.0, w, 1))


def test_statistics_add_up_over_frames() -> None:
    X, Y, w = _problem(seed=7)
    both = solver.statistics(X, Y, w, 4)
    parts = solver.statistics(X[:120], Y[:120], w[:120], 4) + solver.statistics(X[120:], Y[120:], w[120:], 4)
    torch.testing.assert_close(parts.A, both.A)
    torch.testing.assert_close(parts.B, both.B)
    halved = both.scale(0.5)
    torch.testing.assert_close(halved.A, both.A / 2)


def test_batched_fit_equals_each_problem() -> None:
    X, Y, w = _problem(seed=8)
    Xb = torch.stack([X, X * 2 + 1])
    Yb = torch.stack([Y, -Y])
    Wb = solver.fit(Xb, Yb, 5.0, torch.stack([w, w]), 2)
    torch.testing.assert_close(Wb[1], solver.fit(Xb[1], Yb[1], 5.0, w, 2))
    torch.testing.assert_close(Wb[0], solver.fit(X, Y, 5.0, w, 2))


def test_several_objects_in_one_solve_equal_separate_solves() -> None:
    X, Y, w = _problem(k=4, seed=9)
    together = solver.fit(X, Y, 5.0, w)
    for k in range(4):
        torch.testing.assert_close(together[:, k : k + 1], solver.fit(X, Y[:, k : k + 1], 5.0, w))


def test_balanced_weights_give_each_class_equal_mass() -> None:
    labels = torch.tensor([0] * 90 + [1] * 8 + [2] * 2)
    Y = solver.one_hot(labels, 3, torch.float64)
    w = solver.balanced_weights(Y, eps=0.0)
    mass = (Y * w[:, None]).sum(0)
    torch.testing.assert_close(mass, torch.full((3,), 100 / 3, dtype=torch.float64))
    valid = torch.ones(100, dtype=torch.float64)
    valid[:10] = 0
    assert torch.all(solver.balanced_weights(Y, valid)[:10] == 0)


def test_invalid_block_count_is_refused() -> None:
    X, Y, _ = _problem(c=48)
    with pytest.raises(ValueError, match="divisor"):
        solver.fit(X, Y, 5.0, blocks=5)


def test_balance_cap_bounds_a_tiny_objects_weight() -> None:
    Y = solver.one_hot(torch.tensor([0] * 998 + [1, 1]), 2)  # an object of two pixels
    plain = solver.balanced_weights(Y)
    capped = solver.balanced_weights(Y, cap=10.0)
    assert plain[-1] / plain[0] > 300  # balanced: the two pixels weigh about as much as the 998 others
    torch.testing.assert_close(capped[-1] / capped[0], torch.tensor(10.0))
    torch.testing.assert_close(capped[:998], plain[:998])  # the background keeps its weight
    big = solver.one_hot(torch.tensor([0] * 600 + [1] * 400), 2)
    torch.testing.assert_close(solver.balanced_weights(big, cap=10.0), solver.balanced_weights(big))  # no effect
