"""tools/compare_runs.py: equal checkpoints and evaluations are "identical", a one-bit change in
a tensor or another final evaluation is not."""

import importlib.util
import os

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tool():
    spec = importlib.util.spec_from_file_location(
        "compare_runs", os.path.join(ROOT, "tools", "compare_runs.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(root, name, weight, evaluation):
    folder = root / name
    folder.mkdir(parents=True)
    torch.save({"model": {"w": weight}}, folder / "model_final.pth")
    (folder / "log.txt").write_text(f"d2.evaluation.testing INFO: copypaste: {evaluation}\n")


def test_identical_and_different_runs(tmp_path):
    w = torch.linspace(0, 1, 7)
    other = w.clone()
    other[3] = torch.nextafter(other[3], torch.tensor(2.0))  # one ulp
    _run(tmp_path / "a", "same", w, "1.0,2.0")
    _run(tmp_path / "b", "same", w.clone(), "1.0,2.0")
    _run(tmp_path / "a", "weights", w, "1.0,2.0")
    _run(tmp_path / "b", "weights", other, "1.0,2.0")
    _run(tmp_path / "a", "metrics", w, "1.0,2.0")
    _run(tmp_path / "b", "metrics", w.clone(), "1.0,2.1")
    _run(tmp_path / "a", "only_in_a", w, "1.0")
    tool = _tool()
    lines = tool.compare(str(tmp_path / "a"), str(tmp_path / "b"))
    assert lines == [
        "metrics: DIFFERENT (weights equal, evaluation differs (1.0,2.0 vs 1.0,2.1))",
        "same: identical (weights equal, evaluation same)",
        "weights: DIFFERENT (weights differ, evaluation same)",
    ]
    assert tool.main([str(tmp_path / "a"), str(tmp_path / "b")]) == 1
