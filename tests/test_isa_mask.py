"""benchmarks/isa_mask.py: the AVX2-kernel emulation the inference benchmark uses (`--isa avx2`). Each case
runs in a fresh interpreter process, because the mask must come before the runtime picks its kernels."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "vgg_small_distilled"

PROBE = r"""
import json, sys
import numpy as np
sys.path.insert(0, {root!r})
from benchmarks.isa_mask import mask_isa
from shared.model import FacialExpressionModel
masked = mask_isa() if sys.argv[1] == "mask" else None
faces = np.random.default_rng(0).integers(0, 256, (8, 48, 48), dtype=np.uint8)
probs = FacialExpressionModel({model!r}, precision="int8", num_threads=1).predict_proba(faces)
late = None
try:
    mask_isa()
except RuntimeError as e:
    late = str(e)
print(json.dumps({{"masked": masked, "probs": probs.tolist(), "late": late}}))
"""


def _run(mode: str) -> dict:
    code = PROBE.format(root=str(ROOT), model=str(MODEL))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    out = subprocess.run([sys.executable, "-c", code, mode], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(sys.platform != "linux" or os.uname().machine != "x86_64", reason="x86-64 Linux only")
def test_masked_kernels_give_the_same_probabilities_and_late_masking_is_refused():
    import shutil
    if shutil.which("nm") is None:
        pytest.skip("nm (binutils) is not installed")
    native, masked = _run("native"), _run("mask")
    info = masked["masked"]
    assert info["target"] == "avx2" and info["flags_cleared"] >= 0 and "not a measurement" in info["note"]
    flags = Path("/proc/cpuinfo").read_text()
    if " avx512f" in flags:
        assert info["flags_cleared"] >= 1  # this CPU had AVX-512: something was masked
    # other kernels, same network: the int8 outputs agree to within a couple of quantisation steps
    a, b = native["probs"], masked["probs"]
    assert max(abs(x - y) for ra, rb in zip(a, b) for x, y in zip(ra, rb)) < 0.02
    # once an interpreter exists, the kernels are chosen: masking then is refused, not silently ineffective
    assert native["late"] and "first" in native["late"]
    assert masked["late"] and "first" in masked["late"]
