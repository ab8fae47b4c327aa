#!/usr/bin/env python
"""The main job: distillation on the embedded DeepForest tree-crown data, end to end.

    python tools/demo.py            # or `make demo`, which sets up the environment first

1. trains the teacher: RetinaNet, EfficientNet-Lite0-FPN for 240 iterations
   (configs/Demo/deepforest_retinanet_EffLite0_teacher.yaml);
2. trains the student alone: the same detector for 120 iterations (the baseline);
3. trains the same student, same schedule, with FitNet feature mimicking of the frozen teacher;
4. prints AP / AP50 / AP75 of the three on the DeepForest val scenes and writes
   OUTPUT/predictions.png (ground truth and the two students' detections on val tiles) and
   OUTPUT/summary.md.

Every step is an ordinary ``train_net.py`` run whose full log and checkpoints stay in its own
OUTPUT_DIR (output/Demo/<config name>/). Progress and ETA lines of each run are shown as they
come. ``--quick`` runs a few iterations of each step (a smoke test, numbers meaningless).
"""
import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

STEPS = [
    ("teacher", "configs/Demo/deepforest_retinanet_EffLite0_teacher.yaml", "EffLite0-FPN", "-"),
    ("student", "configs/Demo/deepforest_retinanet_EffLite0.yaml", "EffLite0-FPN", "none"),
    (
        "student+FitNet",
        "configs/Demo/deepforest_retinanet_EffLite0_fitnet.yaml",
        "EffLite0-FPN",
        "FitNet from the teacher",
    ),
]
QUICK_OPTS = ["SOLVER.MAX_ITER", "3", "SOLVER.WARMUP_ITERS", "1", "SOLVER.STEPS", "()"]
SHOWN = ("eta:", "copypaste:", "Error", "error:", "Traceback", "Overall training speed")


def output_dir(config, root):
    return os.path.join(root, os.path.splitext(os.path.basename(config))[0])


def run_step(index, name, config, out_dir, teacher_dir, quick):
    """One train_net.py run; prints its progress lines; returns its log lines."""
    cmd = [sys.executable, os.path.join(ROOT, "train_net.py"), "--config-file", config]
    opts = ["OUTPUT_DIR", out_dir]
    if teacher_dir is not None:
        opts += ["MODEL.DISTILL.TEACHER.WEIGHTS", os.path.join(teacher_dir, "model_final.pth")]
    if quick:
        opts += QUICK_OPTS
    print(f"\n[demo] step {index}/{len(STEPS)}: {name}  ({config})", flush=True)
    print(f"[demo] full log: {os.path.join(out_dir, 'log.txt')}", flush=True)
    t0 = time.time()
    proc = subprocess.Popen(
        cmd + opts, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if any(s in line for s in SHOWN):
            text = line.rstrip()
            start = text.find("eta:") if "eta:" in text else text.find("copypaste:")
            print(f"[{name}] {text[start:] if start >= 0 else text}", flush=True)
    if proc.wait() != 0:
        tail = "".join(lines[-40:])
        raise SystemExit(f"[demo] step {name} failed (exit {proc.returncode}):\n{tail}")
    print(f"[demo] {name} done in {time.time() - t0:.0f} s", flush=True)
    return time.time() - t0


def final_metrics(out_dir):
    """The last evaluation written to OUTPUT_DIR/metrics.json, and the mean s/iter."""
    from seed_runs import final_record  # tools/, this script's directory

    ap, s_iter = final_record(out_dir)
    if ap is None:
        raise SystemExit(f"[demo] no final evaluation found in {out_dir}")
    return ap, s_iter


def draw_predictions(val_json, image_root, runs, path, num_images=3, score_thresh=0.3):
    """A grid: one row per val tile, columns ground truth + each run's detections."""
    import cv2
    import numpy as np

    with open(val_json) as f:
        coco = json.load(f)
    gts = {}
    for a in coco["annotations"]:
        gts.setdefault(a["image_id"], []).append(a["bbox"])
    images = sorted(coco["images"], key=lambda im: -len(gts.get(im["id"], [])))[:num_images]
    preds = []
    for _, run_dir in runs:
        with open(
            os.path.join(run_dir, "inference", "deepforest_val", "coco_instances_results.json")
        ) as f:
            res = json.load(f)
        by_image = {}
        for r in res:
            if r["score"] >= score_thresh:
                by_image.setdefault(r["image_id"], []).append(r["bbox"])
        preds.append(by_image)

    def panel(im, boxes, color, title):
        img = cv2.imread(os.path.join(image_root, im["file_name"]))
        for x, y, w, h in boxes:
            cv2.rectangle(img, (int(x), int(y)), (int(x + w), int(y + h)), color, 2)
        bar = np.full((28, img.shape[1], 3), 255, np.uint8)
        cv2.putText(bar, title, (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
        return np.vstack([bar, img])

    rows = []
    for im in images:
        cells = [
            panel(
                im,
                gts.get(im["id"], []),
                (0, 200, 0),
                f"ground truth ({len(gts.get(im['id'], []))})",
            )
        ]
        for (label, _), by_image in zip(runs, preds):
            boxes = by_image.get(im["id"], [])
            cells.append(
                panel(im, boxes, (0, 0, 230), f"{label} ({len(boxes)}, score>={score_thresh})")
            )
        h = max(c.shape[0] for c in cells)
        cells = [
            cv2.copyMakeBorder(c, 0, h - c.shape[0], 0, 6, cv2.BORDER_CONSTANT, value=(255,) * 3)
            for c in cells
        ]
        rows.append(np.hstack(cells))
    w = max(r.shape[1] for r in rows)
    rows = [
        cv2.copyMakeBorder(r, 0, 6, 0, w - r.shape[1], cv2.BORDER_CONSTANT, value=(255,) * 3)
        for r in rows
    ]
    cv2.imwrite(path, np.vstack(rows))


def main(argv=None):
    p = argparse.ArgumentParser(description="Distillation on DeepForest, end to end.")
    p.add_argument("--output", default=os.path.join(ROOT, "output", "Demo"))
    p.add_argument("--quick", action="store_true", help="3 iterations per step (smoke test)")
    p.add_argument(
        "--reuse-teacher",
        action="store_true",
        help="skip step 1 when OUTPUT/<teacher config>/model_final.pth exists",
    )
    args = p.parse_args(argv)
    os.makedirs(args.output, exist_ok=True)
    t_start = time.time()

    from lgdkd.data import deepforest_statistics, prepare_deepforest

    root = prepare_deepforest()
    print(f"[demo] DeepForest prepared under {root}")
    stats = deepforest_statistics(root)
    for split, st in stats.items():
        print(
            f"[demo] {split}: {st['tiles']} tiles, {st['boxes']} trees, scenes "
            f"{', '.join(st['scenes'])}; tree width min/median/max {st['width']} px"
        )
    print(
        "[demo] three trainings follow; on 2 CPU cores the whole job takes about 20 minutes."
        if not args.quick
        else "[demo] --quick: 3 iterations per step, the numbers mean nothing."
    )

    results = []
    teacher_dir = output_dir(STEPS[0][1], args.output)
    for i, (name, config, backbone, distill) in enumerate(STEPS, 1):
        out = output_dir(config, args.output)
        if i == 1 and args.reuse_teacher and os.path.exists(os.path.join(out, "model_final.pth")):
            print(f"[demo] step 1/{len(STEPS)}: reusing the teacher in {out}")
            seconds = float("nan")
        else:
            seconds = run_step(i, name, config, out, teacher_dir if i == 3 else None, args.quick)
        ap, s_iter = final_metrics(out)
        results.append((name, backbone, distill, ap, s_iter, seconds, out))

    header = "| model | backbone | distillation | AP | AP50 | AP75 | s/iter | train+eval s |"
    lines = [header, "|" + "---|" * 8]
    for name, backbone, distill, ap, s_iter, seconds, _ in results:
        lines.append(
            f"| {name} | {backbone} | {distill} | {ap['bbox/AP']:.1f} | {ap['bbox/AP50']:.1f} | "
            f"{ap['bbox/AP75']:.1f} | {s_iter:.2f} | {seconds:.0f} |"
        )
    table = "\n".join(lines)
    png = os.path.join(args.output, "predictions.png")
    from detectron2.data import MetadataCatalog

    from lgdkd.data import register_deepforest

    register_deepforest()
    val = MetadataCatalog.get("deepforest_val")
    draw_predictions(val.json_file, val.image_root, [(r[0], r[6]) for r in results[1:]], png)
    total = time.time() - t_start
    summary = (
        f"DeepForest val (real NEON aerial imagery, {stats['val']['tiles']} tiles, "
        f"{stats['val']['boxes']} trees), COCO box AP, "
        f"{'QUICK SMOKE RUN, not a result' if args.quick else 'one run each'}.\n\n"
        f"{table}\n\nwhole job: {total / 60:.1f} min; predictions: {png}\n"
    )
    with open(os.path.join(args.output, "summary.md"), "w") as f:
        f.write(summary)
    print("\n" + summary)


if __name__ == "__main__":
    main()
