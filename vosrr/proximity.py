"""Between objects, position decides where appearance cannot: each object is favoured near its previous cells.

With several objects the solve's columns compete cell by cell. Objects that look alike (two copies of one
object, two players of one team) get about equal scores on each other's cells (on DAVIS 2016 train composites,
look-alike twins score about 0.4 each on both copies), so the argmax between them follows noise and a mask
breaks into pieces spread over both copies. ``proximity`` lowers each object's score by ``strength`` per
object size of distance from its previous cells, for the choice *between objects* only: at every cell the
strongest object's score against the background is left as it was, so what is object and what is background
does not change, and one object alone is returned unchanged.

    P[K+1,h,w], previous[h,w] --proximity--> P'[K+1,h,w]   (max_k P'_k = max_k P_k; argmax_k P'_k by proximity)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["REACH", "chessboard_distance", "proximity"]

#: distances are counted up to this many cells (854x480 has a 60x107 grid); farther cells all count as REACH
REACH = 32


def chessboard_distance(regions: Tensor, reach: int = REACH) -> Tensor:
    """``regions[K,h,w]`` bool -> ``[K,h,w]`` float32: each cell's chessboard distance in cells to the nearest
    cell of its region (0 inside), ``reach`` where that is ``reach`` or farther or the region is empty.

    ``reach`` 3x3 max-pools, all regions at once; no value is read back to the host (no wait on a GPU).
    """
    inside = regions.to(torch.float32).unsqueeze(1)  # [K,1,h,w]
    distance = torch.zeros(regions.shape, dtype=torch.float32, device=regions.device)
    for _ in range(reach):
        distance += 1.0 - inside[:, 0]
        inside = F.max_pool2d(inside, 3, stride=1, padding=1)
    return distance


def proximity(P: Tensor, previous: Tensor, strength: float, reach: int = REACH) -> Tensor:
    """``P[K+1,h,w]`` (row 0 background) with the objects' competition weighted by their previous positions.

    ``previous[h,w]`` holds the last frame's grid labels (0..K). Object k's score is lowered by
    ``strength * d_k / s_k``, where ``d_k[h,w]`` is the chessboard distance in cells to its previous cells
    (capped at ``reach``) and ``s_k`` its size (square root of its previous area in cells, at least 2); an object
    with no previous cell (lost, or not yet seen) is not lowered. Then all objects' scores at a cell are shifted
    by one amount so that their maximum is the unweighted maximum: the labels' object-vs-background test
    (``P_k - P_0`` against the margin) sees the same strongest score, and only which object gets the cell changes.
    No score is lowered below ``P``'s minimum (the window's floor, where a window is on).
    ``K < 2`` or ``strength == 0``: ``P`` itself. In tensor operations on ``P``'s device, without host reads.
    """
    K = P.shape[0] - 1
    if K < 2 or strength == 0:
        return P
    objects = torch.arange(1, K + 1, device=P.device).view(K, 1, 1)
    regions = previous.unsqueeze(0) == objects  # [K,h,w]
    areas = regions.flatten(1).sum(1).view(K, 1, 1)
    size = areas.to(torch.float32).sqrt().clamp_min(2.0)
    distance = chessboard_distance(regions, reach)
    penalty = torch.where(areas > 0, (strength / size) * distance, 0.0).to(P.dtype)
    weighted = P[1:] - penalty
    shift = weighted.amax(0) - P[1:].amax(0)  # <= 0: the weighted maximum brought back to the unweighted one
    # never below the lowest score already there: planes far below their neighbours would ring in the bicubic
    # upsampling (its negative lobes overshoot by about 7 % of a step) and could rise over the background
    return torch.cat([P[:1], torch.maximum(weighted - shift, P.amin())])
