"""Where phi runs: torch, or (on a CPU) OpenVINO, a runtime made for CPU inference.

``network(model, runtime, device)`` gives a callable ``images[B,3,H,W] float32 -> X[B,C,H/8,W/8] float32`` that
``Feed`` runs phi through. The OpenVINO model is converted from the weights in hand (never downloaded) and cached on
disk under a key made of the weights' bytes, the network's shape and the OpenVINO version: new weights, or a new
OpenVINO, convert again (about 3 s, once).

On the 2 cores of the development machine (AMD EPYC, 854x480 frames) phi takes 83 ms a frame under torch eager and
21 ms under OpenVINO, which computes in bfloat16 on CPUs that support it (AVX512-BF16 or AMX) and in float32
(41 ms) on the others; the numbers and the masks' agreement are in docs/RESULTS.md.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import torch
from torch import Tensor

from vosrr.embedding import Phi

__all__ = ["RUNTIMES", "Network", "Runtime", "RuntimeUnavailableError", "cache_folder", "network", "resolve_runtime"]

#: ``auto``: OpenVINO on a CPU when it is installed, torch otherwise (and always on a GPU); ``openvino`` computes in
#: bfloat16 on CPUs that support it, ``openvino-f32`` always in float32
Runtime = Literal["auto", "torch", "openvino", "openvino-f32"]
RUNTIMES: tuple[str, ...] = get_args(Runtime)

#: ``images[B,3,H,W] float32 -> X[B,C,H/8,W/8] float32``
Network = Callable[[Tensor], Tensor]

#: bump when the conversion below changes, so caches made by older code are not used
_FORMAT = 1


class RuntimeUnavailableError(ValueError):
    """A runtime that was asked for and cannot run here (not installed, or not for this device)."""


def _openvino_available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_runtime(runtime: Runtime, device: torch.device) -> Literal["torch", "openvino", "openvino-f32"]:
    """The runtime ``auto`` stands for on ``device``; refuses an explicit one that cannot run there."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    if runtime == "torch":
        return "torch"
    if device.type != "cpu":
        if runtime != "auto":
            raise RuntimeUnavailableError(
                f"--runtime {runtime} runs on the CPU only: use --device cpu or --runtime torch"
            )
        return "torch"
    if _openvino_available():
        return "openvino" if runtime == "auto" else runtime
    if runtime != "auto":
        raise RuntimeUnavailableError(f"--runtime {runtime} needs the openvino package: pip install openvino")
    return "torch"


def cache_folder() -> Path:
    """Where converted models are kept: ``$VOSRR_CACHE``, else ``$XDG_CACHE_HOME/vosrr``, else ``~/.cache/vosrr``."""
    if explicit := os.environ.get("VOSRR_CACHE"):
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "vosrr"


def network(model: Phi, runtime: Runtime, device: torch.device, cache: Path | None = None) -> tuple[Network, str]:
    """phi on ``runtime`` (``model`` is the inference copy: eval mode, batch norms folded, on ``device``).

    Returns the callable and the runtime's name as users see it (``torch``, ``openvino bf16``, ``openvino f32``).
    """
    chosen = resolve_runtime(runtime, device)
    if chosen == "torch":
        return model, "torch"
    return _OpenVINO.build(model, cache if cache is not None else cache_folder(), exact=chosen == "openvino-f32")


def weights_key(model: Phi) -> str:
    """A digest of everything the converted model depends on: the weights, the network's shape, the runtime."""
    import openvino

    digest = hashlib.sha256()
    shape = {"format": _FORMAT, "openvino": openvino.__version__, "type": type(model).__name__}
    digest.update(json.dumps(shape).encode())
    digest.update(repr(model.config).encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:24]


class _OpenVINO:
    """phi compiled by OpenVINO for the CPU, with dynamic batch and frame size (one infer request, locked)."""

    def __init__(self, compiled: object, precision: str) -> None:
        self._request = compiled.create_infer_request()  # type: ignore[attr-defined]
        self._lock = threading.Lock()
        self.precision = precision

    @classmethod
    def build(cls, model: Phi, cache: Path, exact: bool = False) -> tuple[Network, str]:
        """``exact``: float32 throughout, even where the CPU could compute in bfloat16."""
        import openvino

        core = openvino.Core()
        converted = _load_or_convert(model, cache, core)
        settings = {"PERFORMANCE_HINT": "LATENCY"} | ({"INFERENCE_PRECISION_HINT": "f32"} if exact else {})
        compiled = core.compile_model(converted, "CPU", settings)
        precision = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()  # "bf16" or "f32"
        runner = cls(compiled, precision)
        return runner, f"openvino {precision}"

    def __call__(self, images: Tensor) -> Tensor:
        """``images[B,3,H,W] -> X[B,C,h,w]``, one frame per inference: on these CPUs OpenVINO's time per frame
        grows with the batch (bear at 854x480 on 2 cores, bf16, in one run: 48.7 ms a frame at batch 1, 63.5 at
        4, 66.4 at 16), so a chunk costs what its frames cost one by one, and gives the very same features."""
        outs = []
        with self._lock:
            for image in images.detach().cpu().split(1):
                array = np.ascontiguousarray(image.numpy(), dtype=np.float32)
                result = self._request.infer({0: array})  # type: ignore[attr-defined]
                outs.append(np.array(result[0], copy=True))  # the request's buffer is reused by the next call
        return torch.from_numpy(np.concatenate(outs))


def _load_or_convert(model: Phi, cache: Path, core: object) -> object:
    """The converted model from ``cache`` (its key names the weights), converted and stored when missing.
    A cache that cannot be written is skipped: the model is converted in memory, every run."""
    import openvino

    folder = cache / "openvino" / weights_key(model)
    xml = folder / "phi.xml"
    if xml.is_file() and (folder / "phi.bin").is_file():
        try:
            return core.read_model(xml)  # type: ignore[attr-defined]
        except RuntimeError:
            shutil.rmtree(folder, ignore_errors=True)  # a damaged cache entry: convert again
    example = torch.zeros(1, 3, 64, 64)
    cpu = model if next(model.parameters()).device.type == "cpu" else model.cpu()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on size-dependent padding (fixed for multiples of 32)
        converted = openvino.convert_model(cpu, example_input=example, input=[(-1, 3, -1, -1)])
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=".partial-", dir=folder.parent))
        openvino.save_model(converted, partial / "phi.xml", compress_to_fp16=False)
        try:
            partial.rename(folder)  # appears whole or not at all; another run may have won the race
        except OSError:
            shutil.rmtree(partial, ignore_errors=True)
        # read back what later runs will read, so that the first run computes exactly as they do
        return core.read_model(xml)  # type: ignore[attr-defined]
    except (OSError, RuntimeError):
        return converted  # a read-only home, say: the in-memory model is used
