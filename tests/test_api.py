"""``import vosrr``: a cheap import, the public names, and the library doing the CLI's job byte for byte."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import vosrr
from vosrr.cli import app

ROOT = Path(__file__).resolve().parent.parent
SAMPLE, SAMPLE_MASK = ROOT / "samples" / "clip.mp4", ROOT / "samples" / "clip_mask.png"


def test_import_vosrr_does_not_import_torch() -> None:
    code = "import sys, vosrr; print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'cv2', 'typer'}))"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert result.stdout.strip() == "[]", result.stdout


def test_every_public_name_resolves_to_its_home() -> None:
    assert sorted(vosrr.__all__) == sorted(vosrr._HOMES)
    for name in vosrr.__all__:
        value = getattr(vosrr, name)
        assert value.__module__ == vosrr._HOMES[name], name
        assert name in dir(vosrr)
    from vosrr import annotations, load  # submodules and names side by side

    assert callable(load) and annotations.Annotation is vosrr.Annotation
    with pytest.raises(AttributeError, match="module 'vosrr' has no attribute 'nothing'"):
        _ = vosrr.nothing


def test_the_readme_python_section_uses_only_the_public_names() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### From Python") :]
    code = section[section.index("```python") : section.index("```", section.index("```python") + 3)]
    assert "import vosrr" in code and "from vosrr." not in code and "import vosrr." not in code
    used = set(re.findall(r"\bvosrr\.(\w+)", code))
    assert used and used <= set(vosrr.__all__), used - set(vosrr.__all__)
    compile(code.removeprefix("```python"), "README.md", "exec")  # at least valid Python


def test_load_plus_segment_video_gives_the_clis_masks_byte_for_byte(tmp_path: Path) -> None:
    cli_out, lib_out = tmp_path / "cli", tmp_path / "lib"
    result = CliRunner().invoke(
        app, ["segment", str(SAMPLE), "--mask", str(SAMPLE_MASK), "--out", str(cli_out), "--device", "cpu"]
    )
    assert result.exit_code == 0, result.output
    segmenter = vosrr.load(device="cpu")
    summary = vosrr.segment_video(segmenter, SAMPLE, SAMPLE_MASK, vosrr.Outputs(lib_out, overlay=False))
    assert isinstance(summary, vosrr.Summary)
    assert (summary.frames, summary.objects, summary.interrupted) == (48, 2, False)
    cli_masks = sorted((cli_out / "masks").iterdir())
    lib_masks = sorted((lib_out / "masks").iterdir())
    assert [p.name for p in cli_masks] == [p.name for p in lib_masks] == [f"{i:05d}.png" for i in range(48)]
    for a, b in zip(cli_masks, lib_masks, strict=True):
        assert a.read_bytes() == b.read_bytes(), a.name
    labels, fmt = vosrr.read_mask(lib_masks[-1])  # and the masks read back through the same API
    assert fmt.ids == (0, 1, 2) and labels.max() == 2


def test_load_accurate_is_the_clis_accurate() -> None:
    segmenter = vosrr.load(device="cpu", accurate=True)
    assert segmenter.config.flip and segmenter.blocks == 2  # the ensemble's two networks, one block each
    assert not vosrr.load(device="cpu", accurate=True, config=vosrr.SegmentConfig()).config.flip
    with pytest.raises(ValueError, match="pass weights or accurate, not both"):
        vosrr.load("weights/vosrr_mnv2.pt", accurate=True)


def test_load_refuses_an_absent_device() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    with pytest.raises(ValueError, match=r"device cuda is not available \(0 CUDA GPU\(s\)\); use 'cpu'"):
        vosrr.load(device="cuda")
