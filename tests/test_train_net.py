"""train_net.py end to end, in subprocesses: training outputs, --eval-only, 2 CPU processes."""

import glob
import json
import os

import pytest


def _write_config(cfg, path):
    path.write_text(cfg.dump())
    return path


def _metrics(output_dir):
    with open(os.path.join(output_dir, "metrics.json")) as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.mark.slow
def test_train_then_evaluate(tiny_cfg, run_train_net, tmp_path):
    cfg = tiny_cfg("retinanet")
    cfg.SOLVER.MAX_ITER = 6
    cfg.SOLVER.LOG_PERIOD = 2
    config = _write_config(cfg, tmp_path / "tiny_retinanet.yaml")
    out = tmp_path / "train"

    log = run_train_net("--config-file", config, "OUTPUT_DIR", out)
    assert "eta:" in log  # CommonMetricPrinter
    for name in ("config.yaml", "metrics.json", "last_checkpoint", "model_final.pth"):
        assert (out / name).is_file(), name
    assert (out / "last_checkpoint").read_text().strip() == "model_final.pth"
    assert glob.glob(str(out / "events.out.tfevents.*"))
    metrics = _metrics(out)
    assert [m["iteration"] for m in metrics if "loss_cls" in m] == [1, 3, 5]  # LOG_PERIOD 2
    losses = [m for m in metrics if "loss_cls" in m]
    assert {"total_loss", "loss_cls", "loss_box_reg", "lr", "data_time"} <= set(losses[-1])
    assert any("bbox/AP" in m for m in metrics)  # evaluation after the last iteration
    assert (out / "inference" / "toy_val" / "coco_instances_results.json").is_file()

    log = run_train_net(
        "--config-file",
        config,
        "--eval-only",
        "MODEL.WEIGHTS",
        out / "model_final.pth",
        "OUTPUT_DIR",
        tmp_path / "eval",
    )
    assert "Evaluation results for toy_val in csv format" in log
    assert "copypaste: AP,AP50,AP75,APs,APm,APl" in log
    assert "Starting training" not in log


@pytest.mark.slow
def test_two_cpu_processes(tiny_cfg, run_train_net, tmp_path):
    """--num-gpus 2 without CUDA: two gloo processes, one image each per iteration."""
    cfg = tiny_cfg("retinanet")
    cfg.SOLVER.MAX_ITER = 3
    cfg.SOLVER.CHECKPOINT_PERIOD = 2
    config = _write_config(cfg, tmp_path / "tiny_retinanet.yaml")
    out = tmp_path / "ddp"

    log = run_train_net(
        "--config-file", config, "--num-gpus", 2, "--dist-url", "auto", "OUTPUT_DIR", out
    )
    assert "2 CPU processes communicating with gloo" in log
    rank0 = (out / "log.txt").read_text()
    rank1 = (out / "log.txt.rank1").read_text()
    assert "Rank of current process: 1. World size: 2" in rank1
    for rank, text in ((0, rank0), (1, rank1)):
        assert f"1 image(s) per iteration on rank {rank} (2 over 2 process(es))" in text
    # checkpoints come from rank 0 only, each once
    assert "Saving checkpoint" not in rank1
    assert rank0.count("Saving checkpoint to") == 2
    assert sorted(p.name for p in out.glob("model_*.pth")) == [
        "model_0000001.pth",
        "model_final.pth",
    ]
    metrics = _metrics(out)
    assert [m["iteration"] for m in metrics if "loss_cls" in m] == [0, 1, 2]
    assert any("bbox/AP" in m for m in metrics)  # distributed evaluation, gathered on rank 0


def test_unknown_key_on_the_command_line(tiny_cfg, run_train_net, tmp_path):
    config = _write_config(tiny_cfg("retinanet"), tmp_path / "tiny.yaml")
    log = run_train_net("--config-file", config, "SOLVER.BASE_LRR", "0.1", expect_rc=1)
    assert "unknown config key 'SOLVER.BASE_LRR'" in log
    assert "SOLVER.BASE_LR" in log.split("Closest valid keys:")[1]
    assert "Traceback" not in log
