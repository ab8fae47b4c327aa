"""The main job's script, end to end on the real DeepForest data, with 3 iterations per step."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_demo_quick(tmp_path):
    out = tmp_path / "demo"
    res = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", "demo.py"), "--quick", "--output", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    # progress lines with ETA from every step, then the comparison table
    for step in ("[teacher]", "[student]", "[student+FitNet]"):
        assert any(line.startswith(step) and "eta:" in line for line in res.stdout.splitlines())
    assert "| model | backbone | distillation | AP | AP50 | AP75 |" in res.stdout
    for name in ("teacher", "student", "student+FitNet"):
        assert f"| {name} |" in res.stdout
    png = out / "predictions.png"
    assert png.stat().st_size > 10_000
    import cv2

    img = cv2.imread(str(png))
    assert img is not None and img.shape[0] > 3 * 300 and img.shape[1] > 3 * 300
    fitnet_dir = out / "deepforest_retinanet_EffLite0_fitnet"
    metrics = (fitnet_dir / "metrics.json").read_text()
    assert "loss_distill_feature_mimic" in metrics
    assert (out / "summary.md").read_text().count("|") > 20
