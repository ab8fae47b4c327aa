"""The main job's script (tools/demo.py): end to end with 3 iterations per training on a
small proving-ground set built here from stand-in items (no apt), and its reference numbers
against the proving-ground README."""

import importlib.util
import os
import re
import subprocess
import sys

import pytest
from proving_ground_fakes import make_backgrounds, make_items

import lgdkd.data.proving_ground as pg
from lgdkd.data.composite import ProvingGroundOptions

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _demo_module():
    spec = importlib.util.spec_from_file_location("demo", os.path.join(ROOT, "tools", "demo.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_study_numbers_are_the_published_ones():
    """The study's APs the demo prints beside its own are the README's "Results" numbers."""
    demo = _demo_module()
    with open(os.path.join(ROOT, "projects", "ProvingGround", "README.md")) as f:
        readme = f.read()

    def seeds_text(values):
        return " / ".join(f"{v:.1f}" for _, v in sorted(values.items()))

    assert f"PAA {seeds_text(demo.STUDY['student'])}" in readme
    assert f"LAD {seeds_text(demo.STUDY['student+LAD'])}" in readme
    assert re.search(rf"PAA teacher \| 1 \| {demo.STUDY['teacher'][1]:.1f} \|", readme)
    # and the paired comparison the demo computes from them is the published verdict
    line = demo.comparison_lines(demo.STUDY["student"], demo.STUDY["student+LAD"], "the study")
    assert "mean +2.24, 95 % CI [+0.57, +3.91]" in line and "gain shown" in line
    assert "+2.24 [+0.57, +3.91]" in readme


@pytest.mark.slow
def test_demo_quick(tmp_path):
    root = tmp_path / "datasets"
    options = ProvingGroundOptions(
        sizes=(8, 4, 2), seed=3, image_size=64, objects=(2, 4), scale=(10, 24)
    )
    pg.build_proving_ground(str(root / pg.FOLDER), make_items(), make_backgrounds(), options)
    out = tmp_path / "demo"
    res = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", "demo.py"), "--quick", "--output", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        env=dict(os.environ, DETECTRON2_DATASETS=str(root)),
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    lines = res.stdout.splitlines()
    assert any("built with other options than the pinned default set" in x for x in lines)
    # progress lines with ETA from every training (two student seeds by default)
    for tag in ("[teacher seed 1]", "[student seed 1]", "[student seed 3]"):
        assert any(x.startswith(tag) and "eta:" in x for x in lines), tag
    for tag in ("[student+LAD seed 1]", "[student+LAD seed 3]"):
        assert any(x.startswith(tag) and "eta:" in x for x in lines), tag
    assert (
        "| model | backbone | distillation | seeds | AP per seed | AP (mean ± std) |" in res.stdout
    )
    for name in ("teacher", "student", "student+LAD"):
        assert f"| {name} |" in res.stdout
    assert "this run: LAD - student per seed (1, 2, 3):" in res.stdout
    assert "the study: LAD - student per seed (1, 2, 3): +2.9 / +1.6 / +2.2" in res.stdout
    # the LAD students were built from the teacher this job trained
    lad = out / "paa_EffLite0_lad" / "seed2"
    config = (lad / "config.yaml").read_text()
    teacher = out / "paa_EffLite2_teacher" / "seed1" / "model_final.pth"
    assert str(teacher) in config
    png = out / "predictions.png"
    import cv2

    img = cv2.imread(str(png))
    assert img is not None and img.shape[0] >= 3 * 2 * 64 and img.shape[1] >= 3 * 2 * 64
    assert (out / "summary.md").read_text().count("|") > 30


def test_repeated_seeds_are_refused(capsys):
    demo = _demo_module()
    with pytest.raises(SystemExit):
        demo.main(["--seeds", "1", "1", "--quick"])
    assert "repeats a seed" in capsys.readouterr().err
