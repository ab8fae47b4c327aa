#!/usr/bin/env python
"""The main job: label assignment distillation (LAD) on the proving ground, end to end.

    python tools/demo.py                 # or `make demo`, which sets up the environment first
    python tools/demo.py --seeds 1 2 3 4 5   # more student seeds (about 2 more minutes each)

LAD is the method whose gain the proving-ground study established on CPU (+2.24 AP
[+0.57, +3.91] over PAA on the dev split, seeds 1-3, and +1.98 over its box-loss control; see
projects/ProvingGround/README.md). The job:

0. builds the proving-ground set if it is not there (``datasets/prepare_proving_ground.py``:
   Fashion-MNIST photos, fetched with ``apt-get download dataset-fashion-mnist``, pasted into
   real photos; 10 classes);
1. trains the teacher: PAA, EfficientNet-Lite2 FPN-128, 600 iterations
   (configs/ProvingGround/paa_EffLite2_teacher.yaml), seed 1;
2. trains the student alone: PAA, EfficientNet-Lite0 FPN-64, 200 iterations
   (configs/ProvingGround/paa_EffLite0.yaml), one run per seed;
3. trains the same student with LAD: the frozen teacher's PAA assignment replaces the
   student's (configs/ProvingGround/paa_EffLite0_lad.yaml), the same seeds;
4. prints AP / AP50 / AP75 on ``proving_ground_dev`` per seed with the seed spread, the paired
   difference LAD - student per seed, and beside them the study's own three seeds (the same
   configs, so seeds it shares should give the same numbers); writes OUTPUT/summary.md and
   OUTPUT/predictions.png (ground truth and both students' detections on dev images).

Two trainings run at a time with one thread each (as in the study): the teacher beside the
baseline students, then the LAD students. Every training is an ordinary ``train_net.py`` run
whose log, metrics and checkpoints stay in OUTPUT/<config name>/seed<k>; progress and ETA
lines are shown as they come. ``--quick`` runs 3 iterations per training (a smoke test, the
numbers mean nothing) on whatever proving-ground set is built.
"""
import argparse
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tools"))

TEACHER = ("teacher", "configs/ProvingGround/paa_EffLite2_teacher.yaml", "EffLite2-FPN128", "-")
STUDENT = ("student", "configs/ProvingGround/paa_EffLite0.yaml", "EffLite0-FPN64", "none")
DISTILLED = (
    "student+LAD",
    "configs/ProvingGround/paa_EffLite0_lad.yaml",
    "EffLite0-FPN64",
    "LAD from the teacher",
)
TEACHER_SEED = 1
DEV_SET = "proving_ground_dev"
# AP on proving_ground_dev of the proving-ground study's CPU tier, per seed (teacher: seed 1;
# three decimals from the runs' metrics.json, so that the paired statistics are the study's),
# as published in projects/ProvingGround/README.md ("Results"), measured with
# `python tools/proving_ground.py --tier cpu` (2 jobs of 1 thread each); tests/test_demo.py
# checks these numbers against that README.
STUDY = {
    "teacher": {1: 52.227},
    "student": {1: 29.733, 2: 29.681, 3: 30.963},
    "student+LAD": {1: 32.671, 2: 31.278, 3: 33.159},
}
STUDY_COMMAND = "python tools/proving_ground.py --tier cpu"
QUICK_OPTS = ["SOLVER.MAX_ITER", "3", "SOLVER.WARMUP_ITERS", "1", "SOLVER.STEPS", "()"]
THREADS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
SHOWN = ("eta:", "copypaste:", "Error", "error:", "Traceback", "Overall training speed")
_print_lock = threading.Lock()


def say(text):
    with _print_lock:
        print(text, flush=True)


def run_dir(output, config, seed):
    return os.path.join(output, os.path.splitext(os.path.basename(config))[0], f"seed{seed}")


def run_training(name, config, seed, out_dir, teacher_dir, quick):
    """One train_net.py run (one thread); shows its progress lines; returns its seconds."""
    cmd = [sys.executable, os.path.join(ROOT, "train_net.py"), "--config-file", config]
    opts = ["SEED", str(seed), "OUTPUT_DIR", out_dir]
    if teacher_dir is not None:
        opts += ["MODEL.DISTILL.TEACHER.WEIGHTS", os.path.join(teacher_dir, "model_final.pth")]
    if quick:
        opts += QUICK_OPTS
    tag = f"{name} seed {seed}"
    say(f"[demo] start {tag}: {' '.join(['python train_net.py', '--config-file', config] + opts)}")
    say(f"[demo] full log: {os.path.join(out_dir, 'log.txt')}")
    t0 = time.time()
    proc = subprocess.Popen(
        cmd + opts,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(os.environ, **THREADS),
    )
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if any(s in line for s in SHOWN):
            text = line.rstrip()
            start = text.find("eta:") if "eta:" in text else text.find("copypaste:")
            say(f"[{tag}] {text[start:] if start >= 0 else text}")
    if proc.wait() != 0:
        tail = "".join(lines[-40:])
        raise SystemExit(f"[demo] {tag} failed (exit {proc.returncode}):\n{tail}")
    seconds = time.time() - t0
    say(f"[demo] {tag} done in {seconds:.0f} s")
    return seconds


def final_metrics(out_dir):
    """The last evaluation written to OUTPUT_DIR/metrics.json, and the mean s/iter."""
    from seed_runs import final_record

    ap, s_iter = final_record(out_dir)
    if ap is None:
        raise SystemExit(f"[demo] no final evaluation found in {out_dir}")
    return ap, s_iter


def prepare_data(quick):
    """The proving-ground set: built (and fetched) when absent, verified when present.

    Returns (dataset folder, whether it is the pinned default build)."""
    from lgdkd.data.generated import default_datasets_root
    from lgdkd.data.proving_ground import (
        DEFAULT_OPTIONS,
        prepare_proving_ground,
        proving_ground_statistics,
        verify_proving_ground,
    )

    root = default_datasets_root()
    dataset_dir = os.path.join(root, "proving_ground")
    if os.path.isdir(dataset_dir):
        options = verify_proving_ground(dataset_dir, check_images=True)
    else:
        say(f"[demo] building the proving-ground set under {dataset_dir} (about 2 minutes)")
        t0 = time.time()
        prepare_proving_ground(root)
        say(f"[demo] built in {time.time() - t0:.0f} s")
        options = verify_proving_ground(dataset_dir)
    pinned = all(o == DEFAULT_OPTIONS.to_json() for o in options.values())
    if not pinned:
        say(
            f"[demo] {dataset_dir} was built with other options than the pinned default set; "
            f"its numbers are not comparable with the study's"
            + (
                ""
                if quick
                else " (rebuild it with `python datasets/prepare_proving_ground.py " "--force`)"
            )
        )
    for split, st in proving_ground_statistics(dataset_dir).items():
        say(
            f"[demo] proving_ground_{split}: {st['images']} images, {st['boxes']} objects "
            f"(median {st['objects_per_image'][1]:.0f} per image), object width "
            f"min/median/max {st['width'][0]:.0f}/{st['width'][1]:.0f}/{st['width'][2]:.0f} px"
        )
    return dataset_dir, pinned


def spread(values):
    """'mean ± sample std' (or the single value) of a list of APs."""
    import statistics

    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def per_seed(values_by_seed):
    return " / ".join(f"{v:.1f}" for _, v in sorted(values_by_seed.items()))


def comparison_lines(student, distilled, source):
    """The paired difference of two {seed: AP} dicts, in words."""
    from lgdkd.evaluation.stats import paired_comparison

    c = paired_comparison(student, distilled)
    deltas = " / ".join(f"{d:+.1f}" for d in c.deltas)
    seeds = ", ".join(str(s) for s in c.seeds)
    text = f"{source}: LAD - student per seed ({seeds}): {deltas}; mean {c.mean_delta:+.2f}"
    if c.ci is not None:
        text += f", 95 % CI [{c.ci[0]:+.2f}, {c.ci[1]:+.2f}] (paired t, {c.n - 1} df)"
        text += f", verdict: {c.verdict}"
    else:
        text += " (one seed: no interval; run more with --seeds 1 2 3)"
    return text


def draw_predictions(dataset_name, runs, path, num_images=3, score_thresh=0.5):
    """A grid: one row per dev image, columns ground truth + each run's detections, with
    class names."""
    import cv2
    import numpy as np
    from detectron2.data import MetadataCatalog

    meta = MetadataCatalog.get(dataset_name)
    with open(meta.json_file) as f:
        coco = json.load(f)
    names = {c["id"]: c["name"] for c in coco["categories"]}
    gts = {}
    for a in coco["annotations"]:
        gts.setdefault(a["image_id"], []).append((a["bbox"], a["category_id"]))
    images = coco["images"][:num_images]
    preds = []
    for _, out_dir in runs:
        with open(
            os.path.join(out_dir, "inference", dataset_name, "coco_instances_results.json")
        ) as f:
            res = json.load(f)
        by_image = {}
        for r in res:
            if r["score"] >= score_thresh:
                by_image.setdefault(r["image_id"], []).append((r["bbox"], r["category_id"]))
        preds.append(by_image)

    def panel(im, boxes, color, title):
        img = cv2.imread(os.path.join(meta.image_root, im["file_name"]))
        img = cv2.resize(img, None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST)
        for (x, y, w, h), c in boxes:
            x0, y0, x1, y1 = (int(round(2 * v)) for v in (x, y, x + w, y + h))
            cv2.rectangle(img, (x0, y0), (x1, y1), color, 2)
            cv2.putText(
                img, names[c], (x0 + 2, max(y0 + 12, 12)), cv2.FONT_HERSHEY_PLAIN, 0.9, color, 1
            )
        bar = np.full((28, img.shape[1], 3), 255, np.uint8)
        cv2.putText(bar, title, (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
        return np.vstack([bar, img])

    rows = []
    for im in images:
        gt = gts.get(im["id"], [])
        cells = [panel(im, gt, (0, 200, 0), f"ground truth ({len(gt)})")]
        for (label, _), by_image in zip(runs, preds):
            boxes = by_image.get(im["id"], [])
            cells.append(
                panel(im, boxes, (0, 0, 230), f"{label} ({len(boxes)}, score>={score_thresh})")
            )
        cells = [
            cv2.copyMakeBorder(c, 0, 6, 0, 6, cv2.BORDER_CONSTANT, value=(255,) * 3) for c in cells
        ]
        rows.append(np.hstack(cells))
    cv2.imwrite(path, np.vstack(rows))


def main(argv=None):
    p = argparse.ArgumentParser(description="LAD on the proving ground, end to end.")
    p.add_argument("--output", default=os.path.join(ROOT, "output", "Demo"))
    p.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[1, 2, 3],
        help="the students' seeds (default 1 2 3, the study's)",
    )
    p.add_argument("--quick", action="store_true", help="3 iterations per training (smoke test)")
    p.add_argument(
        "--reuse-teacher",
        action="store_true",
        help="skip the teacher when OUTPUT/paa_EffLite2_teacher/seed1/model_final.pth exists",
    )
    args = p.parse_args(argv)
    if len(set(args.seeds)) != len(args.seeds):
        p.error(f"--seeds repeats a seed: {args.seeds}")
    os.makedirs(args.output, exist_ok=True)
    t_start = time.time()

    _, pinned = prepare_data(args.quick)
    from lgdkd.data import register_proving_ground

    register_proving_ground()
    say(
        f"[demo] {1 + 2 * len(args.seeds)} trainings follow, two at a time; on 2 CPU cores "
        f"the job takes about {10 + 2 * len(args.seeds)} minutes."
        if not args.quick
        else "[demo] --quick: 3 iterations per training, the numbers mean nothing."
    )

    teacher_dir = run_dir(args.output, TEACHER[1], TEACHER_SEED)
    teacher_done = threading.Event()
    seconds = {}

    def teacher():
        if args.reuse_teacher and os.path.exists(os.path.join(teacher_dir, "model_final.pth")):
            say(f"[demo] reusing the teacher in {teacher_dir}")
            seconds[TEACHER[0], TEACHER_SEED] = float("nan")
        else:
            seconds[TEACHER[0], TEACHER_SEED] = run_training(
                TEACHER[0], TEACHER[1], TEACHER_SEED, teacher_dir, None, args.quick
            )
        teacher_done.set()

    def student(step, seed):
        def task():
            teacher_path = None
            if step is DISTILLED:
                teacher_done.wait()
                teacher_path = teacher_dir
            out = run_dir(args.output, step[1], seed)
            seconds[step[0], seed] = run_training(
                step[0], step[1], seed, out, teacher_path, args.quick
            )

        return task

    # two workers: the teacher beside the baselines, then the LAD students (which wait for it)
    tasks = [teacher] + [student(STUDENT, s) for s in args.seeds]
    tasks += [student(DISTILLED, s) for s in args.seeds]
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(t) for t in tasks]
        try:
            for f in futures:
                f.result()
        except BaseException:
            teacher_done.set()
            raise

    rows, ap_by = [], {}
    for step, seeds in ((TEACHER, [TEACHER_SEED]), (STUDENT, args.seeds), (DISTILLED, args.seeds)):
        records = {s: final_metrics(run_dir(args.output, step[1], s)) for s in seeds}
        ap_by[step[0]] = {s: r[0]["bbox/AP"] for s, r in records.items()}
        study = STUDY[step[0]]
        rows.append(
            f"| {step[0]} | {step[2]} | {step[3]} | {', '.join(map(str, seeds))} | "
            f"{per_seed(ap_by[step[0]])} | **{spread(list(ap_by[step[0]].values()))}** | "
            f"{spread([r[0]['bbox/AP50'] for r in records.values()])} | "
            f"{spread([r[0]['bbox/AP75'] for r in records.values()])} | "
            f"{per_seed(study)} ({spread(list(study.values()))}) | "
            f"{sum(r[1] for r in records.values()) / len(records):.2f} | "
            f"{sum(seconds[step[0], s] for s in seeds):.0f} |"
        )
    header = (
        "| model | backbone | distillation | seeds | AP per seed | AP (mean ± std) | AP50 | AP75 "
        "| the study's AP per seed (mean ± std) | s/iter | train+eval s |"
    )
    table = "\n".join([header, "|" + "---|" * 11] + rows)
    lines = [comparison_lines(ap_by["student"], ap_by["student+LAD"], "this run")]
    lines.append(comparison_lines(STUDY["student"], STUDY["student+LAD"], "the study"))
    shared = sorted(set(args.seeds) & set(STUDY["student"]))
    if shared and pinned and not args.quick:
        pairs = [
            (name, s, ap_by[name][s], STUDY[name][s])
            for name in ("teacher", "student", "student+LAD")
            for s in (shared if name != "teacher" else [TEACHER_SEED])
        ]
        differ = [p for p in pairs if abs(p[2] - p[3]) > 0.0005]
        if not differ:
            lines.append(
                f"same configs and seeds as the study: all {len(pairs)} runs reproduce its AP "
                f"(to 0.001 AP)"
            )
        else:
            lines.append(
                "same configs and seeds as the study, but different AP (another torch, CPU "
                "or thread count changes the floating-point sums): "
                + "; ".join(f"{n} seed {s}: {a:.3f} here, {b:.3f} there" for n, s, a, b in differ)
            )

    png = os.path.join(args.output, "predictions.png")
    draw_predictions(
        DEV_SET,
        [
            (f"{STUDENT[0]} seed {args.seeds[0]}", run_dir(args.output, STUDENT[1], args.seeds[0])),
            (
                f"{DISTILLED[0]} seed {args.seeds[0]}",
                run_dir(args.output, DISTILLED[1], args.seeds[0]),
            ),
        ],
        png,
    )
    total = time.time() - t_start
    kind = (
        "QUICK SMOKE RUN, not a result"
        if args.quick
        else f"student seeds {', '.join(map(str, args.seeds))}"
    )
    summary = (
        f"Proving ground, {DEV_SET} (Fashion-MNIST photos pasted into real photos, 10 classes), "
        f"COCO box AP, {kind}; the study: `{STUDY_COMMAND}`, "
        f"projects/ProvingGround/README.md.\n\n{table}\n\n"
        + "\n".join(f"- {line}" for line in lines)
        + f"\n\nwhole job: {total / 60:.1f} min; predictions: {png}\n"
    )
    with open(os.path.join(args.output, "summary.md"), "w") as f:
        f.write(summary)
    print("\n" + summary)


if __name__ == "__main__":
    main()
