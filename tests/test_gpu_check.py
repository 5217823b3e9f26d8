"""The GPU check (scripts/gpu_check) runs on CPU in its quick mode, so it cannot rot while
no GPU is lent: the same sections, the tiny model, every figure printed."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # about 100 s: builds the models, starts the whole server
@pytest.mark.timeout(600)
def test_gpu_check_runs_on_cpu_and_prints_its_figures() -> None:
    out = subprocess.run([str(ROOT / "scripts" / "gpu_check"), "--device", "cpu", "--quick"], cwd=ROOT,
                         capture_output=True, text=True, timeout=580)
    text = out.stdout
    assert out.returncode == 0, text[-3000:] + out.stderr[-3000:]
    # Every batch of the engine section, the static step checked against the engine's.
    for batch in (1, 8, 32):
        line = re.search(rf"tiny +bfloat16 batch +{batch}: steps/s total: loop +([\d.]+), static +([\d.]+)", text)
        assert line is not None, text
        assert float(line.group(1)) > 0 and float(line.group(2)) > 0
    diffs = [float(d) for d in re.findall(r"static vs engine logits max \|diff\| ([\d.e+-]+)", text)]
    assert len(diffs) == 3 and max(diffs) < 0.1, text  # bf16: a few last bits
    assert re.search(r"gpu_check: musicgen-tiny on cpu: batch 1 [\d.]+ steps/s", text), text
    ratio = re.search(r"gpu_check: e2e on cpu: t\(8\)/t\(1\) = ([\d.]+)", text)
    assert ratio is not None and float(ratio.group(1)) > 0, text
    # jerry and terry on their tiny debug models: every figure, fp32 and fp16 for jerry.
    for dtype in ("float32", "float16"):
        for batch in (1, 2):
            line = re.search(rf"tiny {dtype} +batch +{batch}: +([\d.]+) ms/clip", text)
            assert line is not None and float(line.group(1)) > 0, text
    assert re.search(r"gpu_check: jerry tiny on cpu: ms/clip float32 batch 1 [\d.]+", text), text
    assert re.search(r"gpu_check: terry tiny on cpu: per 5 s edit: euler [\d.]+ s, midpoint [\d.]+ s", text), text
    assert "NOT FINITE" not in text and "[jerry] skipped" not in text and "[terry] skipped" not in text, text
    assert "gpu_check: done in" in text and "0 section(s) failed" in text


def test_audiocraft_imports_without_xformers_and_pyav() -> None:
    """xformers is never imported (g4l/engine/_compat.py: a stand-in with the names AudioCraft's
    'torch' attention backend uses) and, where PyAV is not carried, a stub stands in for it:
    MusicGen builds, and AudioCraft's own generation (its attention's ``ops.unbind`` path,
    not the batched step) runs."""
    code = (
        "import sys\n"
        "sys.modules['av'] = None  # import av raises ImportError\n"
        "from g4l.engine import build_debug_musicgen\n"
        "m = build_debug_musicgen()\n"
        "import torch, xformers.ops\n"
        "assert 'stub' in (sys.modules['xformers'].__doc__ or '')\n"
        "attn = m.lm.transformer.layers[0].self_attn\n"
        "assert attn.memory_efficient and attn.custom and attn.kv_repeat == 1  # the path that calls ops.unbind\n"
        "m.set_generation_params(duration=1.0)\n"
        "out = m.generate_continuation(torch.zeros(1, 1, 16000), 32000, progress=False)\n"
        "assert out.shape[-1] == 32000 and bool(torch.isfinite(out).all())\n"
        "try:\n"
        "    xformers.ops.memory_efficient_attention(None, None, None)\n"
        "except RuntimeError as exc:\n"
        "    assert 'xformers is not installed' in str(exc)\n"
        "else:\n"
        "    raise AssertionError('the stub must refuse')\n"
        "import av\n"
        "assert 'stub' in (av.__doc__ or '')\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stdout[-2000:] + out.stderr[-2000:]


def test_the_gpu_machine_lists_what_it_lacks() -> None:
    """``gpu_wheels.py missing`` names the imports this interpreter lacks: none in the venv."""
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench" / "gpu_wheels.py"), "missing"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "", out.stdout + out.stderr
