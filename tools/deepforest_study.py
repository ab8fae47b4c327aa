"""The kits' DeepForest seed studies, one entry point: trains the study's teacher (once, when an
arm distils from one), then every arm for several seeds, evaluates every run and prints a
markdown table of mean and spread of AP / AP50 / AP75 and each arm's paired comparison with its
baseline (per-seed differences, 95 % CI, Welch p, pooled seed std, tile bootstrap, gate (c),
verdict on --primary, AP50 by default), also written to OUTPUT/summary.md.

    python tools/deepforest_study.py lad                        # PAA vs LAD, SoLAD, CoLAD
    python tools/deepforest_study.py lad --methods baseline boxloss lad --choose-teacher \\
        --seeds 1 2 3 4 5 6 7 8 --jobs 2 --threads 1            # teacher chosen on dev
    python tools/deepforest_study.py head --methods baseline assist --seeds 1 2 3 4 5 6 7 8
    python tools/deepforest_study.py ld --methods baseline ld ld_wsum
    python tools/deepforest_study.py lgd --methods retinanet retinanet_lgd
    python tools/deepforest_study.py ld --jobs 6 \\
        --teacher-config configs/LD/DeepForest/gfl_EffLite0_teacher_ms4x.yaml   # on a GPU

Runs go to OUTPUT/<config name>/<key>/seed<k>, the key being a hash of the resolved config, the
weights it names and its teacher's config and weights (tools/seed_runs.py). Finished runs under
the same key are not repeated, so a study can be stopped and started again; an edited config or
a retrained teacher gives new keys, and so new runs.
"""

import argparse
import os
import sys
from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from seed_runs import ROOT, add_primary_arg, add_teacher_args, run_comparison  # noqa: E402


@dataclass(frozen=True)
class Study:
    """One kit's study: its configs folder (configs/<kit>/DeepForest), the arms by name, which
    arms distil from the teacher, each arm's baseline and control."""

    kit: str
    methods: Dict[str, str]  # name -> config file in the folder
    default: Tuple[str, ...]
    baselines: Dict[str, str]  # arm -> its baseline arm
    teacher: Optional[str] = None
    teacher_alternative: Optional[str] = None
    with_teacher: Tuple[str, ...] = ()
    controls: Dict[str, str] = field(default_factory=dict)  # arm -> its control arm

    @property
    def folder(self) -> str:
        return os.path.join(ROOT, "configs", self.kit, "DeepForest")

    def config(self, method: str) -> str:
        return os.path.join(self.folder, self.methods[method])


def _against(baseline: str, arms: Sequence[str]) -> Dict[str, str]:
    return {a: baseline for a in arms}


STUDIES = {
    "lad": Study(
        kit="LAD",
        methods={
            "baseline": "paa_EffLite0.yaml",
            "boxloss": "paa_EffLite0_boxloss.yaml",
            "lad": "paa_EffLite0_lad.yaml",
            "solad": "paa_EffLite0_solad.yaml",
            "colad": "paa_EffLite0_colad.yaml",
            "softlabel": "paa_EffLite0_softlabel.yaml",
        },
        default=("baseline", "lad", "solad", "colad"),
        baselines=_against("baseline", ("boxloss", "lad", "solad", "colad", "softlabel")),
        teacher="paa_EffLite0_teacher.yaml",
        teacher_alternative="paa_EffLite0_teacher_ms4x.yaml",
        with_teacher=("lad", "solad", "softlabel"),
        # LAD's config also switches the box loss; the control switches only that
        controls={"lad": "boxloss"},
    ),
    "head": Study(
        kit="HEAD",
        methods={
            "baseline": "retinanet_EffLite0.yaml",
            "assist": "retinanet_EffLite0_assist.yaml",
            "head": "retinanet_EffLite0_head.yaml",
            "tfhead": "retinanet_EffLite0_tfhead.yaml",
        },
        default=("baseline", "assist", "head", "tfhead"),
        baselines=_against("baseline", ("assist", "head", "tfhead")),
        teacher="faster_rcnn_EffLite0_teacher_ms2x.yaml",
        with_teacher=("head",),
    ),
    "ld": Study(
        kit="LD",
        methods={
            "baseline": "gfl_EffLite0.yaml",
            "ld": "gfl_EffLite0_ld.yaml",
            "ld_kd": "gfl_EffLite0_ld_kd.yaml",
            "ld_wsum": "gfl_EffLite0_ld_wsum.yaml",
            "ld_wsum_x10": "gfl_EffLite0_ld_wsum_x10.yaml",
            "small": "gfl_EffLite0_small.yaml",
            "small_ld": "gfl_EffLite0_small_ld.yaml",
        },
        default=("baseline", "ld"),
        baselines={
            **_against("baseline", ("ld", "ld_kd", "ld_wsum", "ld_wsum_x10")),
            "small_ld": "small",
        },
        teacher="gfl_EffLite0_teacher.yaml",
        teacher_alternative="gfl_EffLite0_teacher_ms4x.yaml",
        with_teacher=("ld", "ld_kd", "ld_wsum", "ld_wsum_x10", "small_ld"),
    ),
    "lgd": Study(
        kit="LGD",
        methods={
            "retinanet": "retinanet_EffLite0.yaml",
            "retinanet_lgd": "retinanet_EffLite0_lgd.yaml",
            "faster_rcnn": "faster_rcnn_EffLite0.yaml",
            "faster_rcnn_lgd": "faster_rcnn_EffLite0_lgd.yaml",
        },
        default=("retinanet", "retinanet_lgd", "faster_rcnn", "faster_rcnn_lgd"),
        baselines={"retinanet_lgd": "retinanet", "faster_rcnn_lgd": "faster_rcnn"},
    ),
}


def parse_args(argv=None):
    """The study's name, then its options (``--help`` after the name lists its arms)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("study", nargs="?", choices=sorted(STUDIES))
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("study", choices=sorted(STUDIES))
    name = pre.parse_known_args(argv)[0].study
    if name is None:  # no study named: the parser says so (or prints the general help)
        p.parse_args(argv)
    study = STUDIES[name]
    if study.teacher:
        add_teacher_args(
            p,
            os.path.join(study.folder, study.teacher),
            study.teacher_alternative and os.path.join(study.folder, study.teacher_alternative),
        )
    else:
        p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
        p.add_argument("--jobs", type=int, default=1, help="runs at a time (GPU: several fit)")
        p.add_argument("--threads", type=int, default=None, help="OMP / MKL threads of each run")
        add_primary_arg(p)
    p.add_argument(
        "--methods",
        nargs="+",
        choices=list(study.methods),
        default=list(study.default),
        help="the arms (a baseline is trained with any arm compared to it)",
    )
    p.add_argument("--output", default=os.path.join(ROOT, "output", study.kit, "DeepForest"))
    return study, p.parse_args(argv)


def main(argv=None) -> str:
    study, args = parse_args(argv)
    # every arm comes with its baseline
    methods = set(args.methods) | {study.baselines[m] for m in args.methods if m in study.baselines}
    baselines = {
        study.config(m): study.config(b)
        for m, b in study.baselines.items()
        if m in methods and b in methods
    }
    controls = {
        study.config(m): study.config(c)
        for m, c in study.controls.items()
        if m in methods and c in methods
    }
    ordered = [m for m in study.methods if m in methods]
    return run_comparison(
        args,
        [study.config(m) for m in ordered],
        [study.config(m) for m in study.with_teacher],
        f"{study.kit.lower()}-seeds",
        controls,
        baselines,
    )


if __name__ == "__main__":
    main()
