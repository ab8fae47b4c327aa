"""Train a distillation chain stage by stage and evaluate every stage: teacher -> (assistants)
-> student, as LD's Self-LD and teacher-assistant recipes do (Zheng et al., arXiv:2102.12252
v1/v2; HikariTJU/LD issue #23).

Stage 1 is an ordinary detector config (the teacher, trained without distillation). Every
later stage is a distillation config whose teacher is replaced by the previous stage: its
MODEL.DISTILL.TEACHER.CONFIG_FILE becomes the previous stage's config (a distillation config
there describes its student, which is what is loaded) and TEACHER.WEIGHTS that stage's
model_final.pth (its ``student.*`` weights). Each stage trains from its own initialisation
(ImageNet backbone) with a frozen, eval-mode teacher and is evaluated on DATASETS.TEST.

    # Self-LD: the same architecture trained beforehand, then a fresh student taught by it
    python projects/LD/train_chain.py --stages configs/LD/DeepForest/gfl_EffLite0.yaml \\
        configs/LD/DeepForest/gfl_EffLite0_ld.yaml --output output/LD/self_ld
    # teacher -> assistant -> student
    python projects/LD/train_chain.py --stages configs/LD/DeepForest/gfl_EffLite0_teacher.yaml \\
        configs/LD/DeepForest/gfl_EffLite0_ld.yaml \\
        configs/LD/DeepForest/gfl_EffLite0_small_ld.yaml --output output/LD/chain

Stage k goes to OUTPUT/stage<k>_<config name>; finished stages are not trained again. The
AP / AP50 / AP75 of every stage is printed and written to OUTPUT/summary.md.
"""

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tools"))

from seed_runs import METRICS, final_record, train  # noqa: E402


def stage_dirs(stages, output):
    return [
        os.path.join(output, f"stage{k}_{os.path.splitext(os.path.basename(c))[0]}")
        for k, c in enumerate(stages, start=1)
    ]


def check_stages(stages):
    """Every stage after the first must be a distillation config with a PretrainedTeacher."""
    sys.path.insert(0, ROOT)
    import lgdkd  # noqa: F401
    from lgdkd.config import get_cfg

    for k, path in enumerate(stages, start=1):
        if not os.path.isfile(path):
            raise SystemExit(f"stage {k}: config file {path!r} not found")
        cfg = get_cfg()
        cfg.merge_from_file(path)
        distill = cfg.MODEL.META_ARCHITECTURE == "DistillationDetector"
        if k > 1 and (not distill or cfg.MODEL.DISTILL.TEACHER.NAME != "PretrainedTeacher"):
            raise SystemExit(
                f"stage {k} ({path}) must be a distillation config with MODEL.DISTILL.TEACHER.NAME "
                "'PretrainedTeacher': its teacher is the previous stage."
            )


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stages", nargs="+", required=True, help="config files, teacher first")
    p.add_argument("--output", required=True)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides for every stage")
    args = p.parse_args(argv)
    if len(args.stages) < 2:
        p.error("--stages needs a teacher and at least one distilled stage")
    stages = [os.path.abspath(s) for s in args.stages]
    check_stages(stages)
    dirs = stage_dirs(stages, os.path.abspath(args.output))
    rows = []
    for k, (config, out) in enumerate(zip(stages, dirs), start=1):
        opts = list(args.opts)
        if k > 1:
            prev_weights = os.path.join(dirs[k - 2], "model_final.pth")
            opts += ["MODEL.DISTILL.TEACHER.CONFIG_FILE", stages[k - 2]]
            opts += ["MODEL.DISTILL.TEACHER.WEIGHTS", prev_weights]
        rec, _ = final_record(out)
        if rec is None:
            train(config, args.seed, out, opts, tag=f"chain stage {k}")
            rec, _ = final_record(out)
        rows.append(
            f"| {k} | {os.path.relpath(config, ROOT)} | "
            + " | ".join(f"{rec[m]:.1f}" for m in METRICS)
            + " |"
        )
    table = "\n".join(["| stage | config | AP | AP50 | AP75 |", "|---|---|---|---|---|", *rows])
    print(table)
    with open(os.path.join(args.output, "summary.md"), "w") as f:
        f.write(f"seed {args.seed}\n\n{table}\n")


if __name__ == "__main__":
    main()
