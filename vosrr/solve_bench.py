"""The paper's Table 2 (the one solve a video needs, for k diagonal blocks), and the timing primitives that
``vosrr bench`` shares with it: seconds per call with the device's work included, medians.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from vosrr import solver

__all__ = [
    "TABLE2_BLOCKS",
    "TABLE2_CHANNELS",
    "TABLE2_PIXELS",
    "median",
    "per_call",
    "print_solve",
    "solve_table",
    "sync",
]

#: paper Table 2: C = 800 channels, N = 60 x 107 feature pixels (a 480 x 856 frame at stride 8)
TABLE2_CHANNELS = 800
TABLE2_PIXELS = 60 * 107
TABLE2_BLOCKS = (1, 2, 4, 8)
_MIB = 1024 * 1024


def sync(device: torch.device) -> None:
    """Wait for ``device``'s queued work (a no-op on a CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def per_call(fn: Callable[[int], object], count: int, device: torch.device) -> float:
    """Seconds per call of ``fn(i)`` over ``count`` calls (device work included)."""
    sync(device)
    tic = time.perf_counter()
    for index in range(count):
        fn(index)
    sync(device)
    return (time.perf_counter() - tic) / count


def _reps(fn: Callable[[int], object], device: torch.device, budget: float = 0.05) -> int:
    """How many calls of ``fn`` make one measurement of about ``budget`` seconds (3 to 200)."""
    once = per_call(fn, 1, device)
    return int(min(200, max(3, budget / max(once, 1e-6))))


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def solve_table(
    device: torch.device,
    runs: int = 3,
    channels: int = TABLE2_CHANNELS,
    pixels: int = TABLE2_PIXELS,
    blocks: tuple[int, ...] = TABLE2_BLOCKS,
    lam: float = 5.0,
    seed: int = 0,
) -> dict[str, Any]:
    """Paper Table 2: time of statistics + Cholesky solve and the memory of A's k blocks and their factor.

    X is unit-norm features plus a bias channel, Y a one-object split (background / object, 1 in 10
    pixels), class-balanced weights; float32. Memory is counted, not sampled: ``k (C/k)^2`` floats for
    the blocks of A and as many for the Cholesky factor (X itself, ``N C`` floats, is the same for all k).
    """
    generator = torch.Generator().manual_seed(seed)
    X = torch.randn(pixels, channels - 1, generator=generator)
    X = torch.cat([torch.nn.functional.normalize(X, dim=1), torch.ones(pixels, 1)], 1).to(device)
    labels = (torch.rand(pixels, generator=generator) < 0.1).long().to(device)
    Y = solver.one_hot(labels, 2)
    w = solver.balanced_weights(Y)
    rows = []
    for k in blocks:
        c = channels // k
        stats_times: list[float] = []
        solve_times: list[float] = []
        peak = None
        with torch.inference_mode():
            stats = solver.statistics(X, Y, w, k)  # warm-up
            solver.solve(stats, lam)
            if device.type == "cuda":
                sync(device)
                base = torch.cuda.memory_allocated(device)
                torch.cuda.reset_peak_memory_stats(device)
            stats_fn = lambda _, k=k: solver.statistics(X, Y, w, k)  # noqa: E731
            solve_fn = lambda _, s=stats: solver.solve(s, lam)  # noqa: E731
            stats_reps, solve_reps = _reps(stats_fn, device), _reps(solve_fn, device)
            for _ in range(max(1, runs)):
                stats_times.append(per_call(stats_fn, stats_reps, device))
                solve_times.append(per_call(solve_fn, solve_reps, device))
            if device.type == "cuda":
                peak = (torch.cuda.max_memory_allocated(device) - base) / _MIB
        floats = k * c * c
        row = {
            "blocks": k,
            "block_size": c,
            "statistics_ms": 1e3 * median(stats_times),
            "solve_ms": 1e3 * median(solve_times),
            "a_mib": floats * 4 / _MIB,
            "factor_mib": floats * 4 / _MIB,
        }
        row["total_ms"] = row["statistics_ms"] + row["solve_ms"]
        row["memory_mib"] = row["a_mib"] + row["factor_mib"]
        if peak is not None:
            row["cuda_measured_peak_mib"] = peak
        rows.append(row)
    return {
        "channels": channels,
        "pixels": pixels,
        "dtype": "float32",
        "x_mib": pixels * channels * 4 / _MIB,
        "rows": rows,
        "note": (
            "the solve runs once per video (at the reference frame; again only when annotations or online "
            "updates are added), so its cost is spread over all of the video's frames"
        ),
    }


def print_solve(console: Console, table2: dict[str, Any], device: str) -> None:
    table = Table(
        title=(
            f"k-block solve (paper Table 2): C={table2['channels']}, N={table2['pixels']}, {table2['dtype']}, {device}"
        )
    )
    for column in ("k", "block", "statistics ms", "Cholesky solve ms", "total ms", "A + factor MiB"):
        table.add_column(column, justify="right")
    for row in table2["rows"]:
        table.add_row(
            str(row["blocks"]),
            f"{row['block_size']}x{row['block_size']}",
            f"{row['statistics_ms']:.2f}",
            f"{row['solve_ms']:.2f}",
            f"{row['total_ms']:.2f}",
            f"{row['memory_mib']:.2f}",
        )
    console.print(table)
    console.print(f"note: {table2['note']}; X itself is {table2['x_mib']:.1f} MiB for every k.")
