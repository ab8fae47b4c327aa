"""tools/benchmark.py: every method's arms build from the kits' DeepForest configs and take
timed steps side by side (1 image, 1 round, 1 iteration: the harness, not the timings)."""

import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _benchmark():
    spec = importlib.util.spec_from_file_location(
        "benchmark", os.path.join(ROOT, "tools", "benchmark.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "method, arms",
    [
        ("lad", ["plain student", "LAD", "SoLAD", "CoLAD (two networks)"]),
        ("head", ["plain student", "Assist", "HEAD (Assist + AKD + CKD)", "TF-HEAD"]),
        ("lgd", ["plain student", "LGD"]),
    ],
)
def test_every_arm_takes_timed_steps(method, arms, capsys):
    cwd = os.getcwd()
    try:
        times = _benchmark().main([method, "--batch", "1", "--rounds", "1", "--iters", "1"])
    finally:
        os.chdir(cwd)
    assert list(times) == arms and all(len(t) == 1 and t[0] > 0 for t in times.values())
    out = capsys.readouterr().out
    assert "| model | s/iter | x plain student | extra s/iter |" in out
    assert all(f"| {a} |" in out for a in arms)
    if method == "lgd":
        assert "| per-image loops (official structure) |" in out
