"""The frame loop's device side: no value read back to the host per frame, labels in order from ``LabelQueue``.

On a GPU a host read (``float(t)``, ``t.item()``, a checked Cholesky factorisation) makes the loop wait for the
device every frame. Here the reads are caught at torch's dispatcher, which sees them on a CPU too, so the test
runs everywhere; the GPU test at the end also runs the loop under CUDA's own sync check where a GPU exists.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_sample
from torch.utils._python_dispatch import TorchDispatchMode

from vosrr.annotations import Annotation
from vosrr.decide import Decision, LabelQueue, labels
from vosrr.propagate import segment_frames
from vosrr.segmenter import SegmentConfig, Segmenter

H, W = 256, 448

#: dispatcher ops that read a tensor's value on the host (on a GPU: wait for the device); a checked Cholesky
#: factorisation reaches the dispatcher as ``linalg_cholesky`` under inference mode (its check then runs inside)
HOST_READS = {"_local_scalar_dense", "item", "_linalg_check_errors", "is_nonzero", "equal", "linalg_cholesky"}


class HostReads(TorchDispatchMode):
    """Records every op of ``HOST_READS`` dispatched while active."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        name = func.overloadpacket.__name__
        checked = name == "linalg_cholesky_ex" and bool((kwargs or {}).get("check_errors", args[2:3] == (True,)))
        if name in HOST_READS or checked:
            self.seen.append(name)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("inference", [False, True])
def test_the_host_read_detector_sees_the_reads_it_must_see(inference: bool) -> None:
    with HostReads() as reads, torch.inference_mode(inference):
        t = torch.arange(4.0)
        float(t.sum())
        bool(t[0] > 1)
        torch.linalg.cholesky(torch.eye(3))
        torch.linalg.cholesky_ex(torch.eye(3), check_errors=True)
        torch.linalg.cholesky_ex(torch.eye(3))  # unchecked: no read
        torch.where(t > 1, t, 0.0).cummax(0)  # no read either
    assert len(reads.seen) == 4, reads.seen


@pytest.mark.parametrize("objects", [1, 3])
def test_scores_window_online_update_and_solve_never_read_back_to_the_host(shipped_model, objects: int) -> None:
    images, truth = make_sample.make_clip(6, H, W, objects, seed=11)
    seg = Segmenter(shipped_model, SegmentConfig(window=1.0, online=0.1))
    state, _ = seg.start(images[0], truth[0])
    X = [seg.features(image, state.work_size) for image in images[1:]]
    with HostReads() as reads:
        for x in X:
            state, P = seg.advance_scores(state, x)
    assert reads.seen == []
    assert state.memory is not None and P.shape[0] == objects + 1  # the online update did run
    before = [t.labels for t in seg.track(list(enumerate(images)), {0: Annotation(truth[0])})]
    assert np.mean(before[-1] == truth[-1]) > 0.9


def test_the_label_queue_gives_frames_in_order_with_known_labels_behind_the_decided_ones() -> None:
    decision = Decision()
    queue: LabelQueue[int] = LabelQueue(decision, (64, 96), (64, 96))
    g = torch.Generator().manual_seed(0)
    scores = [torch.randn(3, 8, 12, generator=g) for _ in range(4)]
    known = np.full((64, 96), 2, np.uint8)
    out = queue.put(0, scores[0]) + queue.put(1, scores[1]) + queue.ready(2, known) + queue.put(3, scores[3])
    out += queue.flush()
    assert [i for i, _ in out] == [0, 1, 2, 3]
    for i in (0, 1, 3):
        assert np.array_equal(out[i if i < 2 else 3][1], labels(scores[i], (64, 96), (64, 96), decision))
    assert out[2][1] is known and queue.flush() == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_a_gpu_the_loop_never_synchronises_and_the_masks_match_the_cpu(shipped_model) -> None:
    images, truth = make_sample.make_clip(12, H, W, 2, seed=3)
    annotations = {0: Annotation(truth[0])}
    on_cpu = Segmenter(shipped_model, SegmentConfig(runtime="torch"))
    cpu = [t.labels for t in segment_frames(on_cpu, images, annotations)]
    gpu = Segmenter(shipped_model, SegmentConfig(), device="cuda")
    state, _ = gpu.start(images[0], truth[0])
    X = gpu.feed.batch(images[1:], state.work_size)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for x in X:
            state, _ = gpu.advance_scores(state, x)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    out = [t.labels for t in segment_frames(gpu, images, annotations)]
    assert np.mean([np.mean(a == b) for a, b in zip(out, cpu, strict=True)]) > 0.999
