"""Compare finished runs of two checkouts (or two settings) bit for bit: for every run folder name
present under both roots, whether ``model_final.pth`` holds the same tensors and whether the
final evaluation (the last ``copypaste:`` line of ``log.txt``) is the same. A refactoring that
claims not to change behaviour trains the same configs with the same seeds in both checkouts
and shows "identical" for every run here.

    # the same runs from two checkouts, e.g. the toy configs of configs/quick_schedules
    (cd OLD && python train_net.py --config-file C SEED 3 OUTPUT_DIR /tmp/old/NAME)
    (cd NEW && python train_net.py --config-file C SEED 3 OUTPUT_DIR /tmp/new/NAME)
    python tools/compare_runs.py /tmp/old /tmp/new

Exit status 0 when every common run is identical, 1 otherwise.
"""

import argparse
import os
import sys
from typing import List, Optional

import torch


def final_evaluation(run_dir: str) -> Optional[str]:
    """The values of the last ``copypaste:`` line of the run's log (None without one)."""
    path = os.path.join(run_dir, "log.txt")
    if not os.path.exists(path):
        return None
    found = None
    with open(path) as f:
        for line in f:
            if "copypaste: " in line:
                found = line.split("copypaste: ", 1)[1].strip()
    return found


def same_weights(a: str, b: str) -> bool:
    """Whether two checkpoints hold the same tensor names with bitwise equal values."""
    wa = torch.load(a, map_location="cpu", weights_only=False)["model"]
    wb = torch.load(b, map_location="cpu", weights_only=False)["model"]
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def compare(root_a: str, root_b: str) -> List[str]:
    """One line per run folder found under both roots."""
    names = sorted(
        n
        for n in os.listdir(root_a)
        if os.path.isfile(os.path.join(root_a, n, "model_final.pth"))
        and os.path.isfile(os.path.join(root_b, n, "model_final.pth"))
    )
    lines = []
    for n in names:
        a, b = os.path.join(root_a, n), os.path.join(root_b, n)
        weights = same_weights(
            os.path.join(a, "model_final.pth"), os.path.join(b, "model_final.pth")
        )
        ev_a, ev_b = final_evaluation(a), final_evaluation(b)
        evaluation = "same" if ev_a == ev_b else f"differs ({ev_a} vs {ev_b})"
        verdict = "identical" if weights and ev_a == ev_b else "DIFFERENT"
        lines.append(
            f"{n}: {verdict} (weights {'equal' if weights else 'differ'}, evaluation {evaluation})"
        )
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("root_a")
    p.add_argument("root_b")
    args = p.parse_args(argv)
    lines = compare(args.root_a, args.root_b)
    if not lines:
        print("no run folder with model_final.pth under both roots")
        return 1
    print("\n".join(lines))
    return 0 if all(": identical" in line for line in lines) else 1


if __name__ == "__main__":
    sys.exit(main())
