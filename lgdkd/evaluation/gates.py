"""Sanity gates of a distillation study, as pure functions of logged numbers.

* :func:`gap_gate` (before a study): is the teacher-student gap large enough that the share of
  it the method is expected to recover would exceed twice the seed spread of the student?
  If not, even a method that works as published cannot show a gain with these seeds.
* :func:`collapse_gate` (early in a run): at iteration 10, is every distillation loss
  (``loss_distill_*``) at most the task loss (the sum of the other ``loss_*`` terms), and is
  the pre-clip gradient norm (``grad_norm``, logged by the trainer at every iteration) within
  5x the baseline's? A distillation term that dominates the task loss or
  blows up the gradient is the usual sign of a mis-scaled or collapsing distiller.

Each gate returns a :class:`GateResult`: pass (True), fail (False) or cannot be checked
(None), with the numbers it was decided on. :func:`read_metrics` and :func:`training_record`
read them from a run's ``metrics.json`` (detectron2's JSONWriter: one JSON record per line).
"""

import json
import math
import os
import statistics
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence

__all__ = [
    "GateResult",
    "collapse_gate",
    "collapse_gate_for_runs",
    "gap_gate",
    "read_metrics",
    "training_record",
]

DISTILL_PREFIX = "loss_distill_"


@dataclass(frozen=True)
class GateResult:
    """The outcome of a gate.

    Attributes:
        name: the gate.
        passed: True (pass), False (fail) or None (cannot be checked).
        numbers: the values the decision was made on.
        reasons: one line per check, with its numbers.
    """

    name: str
    passed: Optional[bool]
    numbers: Dict[str, object] = field(default_factory=dict)
    reasons: List[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        """ "pass", "fail" or "cannot be checked"."""
        return {True: "pass", False: "fail", None: "cannot be checked"}[self.passed]

    def __str__(self):
        return f"{self.name}: {self.status} ({'; '.join(self.reasons)})"


# --------------------------------------------------------------------------------------------
# Reading a run
# --------------------------------------------------------------------------------------------
def read_metrics(path: str) -> List[dict]:
    """The records of a run's ``metrics.json`` (``path`` is the file or the run's folder), in
    order. A line that is not JSON (a record cut short by a crash) is skipped."""
    if os.path.isdir(path):
        path = os.path.join(path, "metrics.json")
    records = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict):
                records.append(rec)
    return records


def training_record(records: Sequence[Mapping], iteration: int = 10) -> Optional[dict]:
    """The training record (one with ``loss_*`` keys) logged after ``iteration`` iterations.

    detectron2 numbers iterations from 0, so that is the record whose "iteration" is
    ``iteration - 1``; when that iteration was not logged (SOLVER.LOG_PERIOD does not divide
    it), the first training record after it. None when there is none.
    """
    later = [
        r
        for r in records
        if any(k.startswith("loss_") for k in r) and r.get("iteration", -1) >= iteration - 1
    ]
    if not later:
        return None
    return dict(min(later, key=lambda r: r["iteration"]))


# --------------------------------------------------------------------------------------------
# Gates
# --------------------------------------------------------------------------------------------
def _grad_norm(record: Mapping) -> Optional[float]:
    value = record.get("grad_norm")
    return None if value is None else float(value)


def collapse_gate(
    distill: Optional[Mapping],
    baseline: Optional[Mapping],
    max_grad_ratio: float = 5.0,
) -> GateResult:
    """Gate (c) on two training records at the same iteration (see :func:`training_record`):
    the distillation run's and its baseline's.

    Fails when a ``loss_distill_*`` term exceeds the task loss (the sum of the distillation
    run's other ``loss_*`` terms) or when the distillation run's ``grad_norm`` exceeds
    ``max_grad_ratio`` times the baseline's. Cannot be checked (``passed`` None) when a record
    is missing, the run logs no distillation loss, or ``grad_norm`` is absent (runs written
    before the trainer logged it) and nothing else failed.
    """
    name = "gate (c) distillation loss and gradient norm"
    if distill is None or baseline is None:
        which = "distillation run" if distill is None else "baseline"
        return GateResult(name, None, {}, [f"no training record of the {which} to check"])
    losses = {k: float(v) for k, v in distill.items() if k.startswith("loss_")}
    distill_losses = {k: v for k, v in losses.items() if k.startswith(DISTILL_PREFIX)}
    task = sum(v for k, v in losses.items() if not k.startswith(DISTILL_PREFIX))
    numbers: Dict[str, object] = {
        "iteration": distill.get("iteration"),
        "baseline_iteration": baseline.get("iteration"),
        "distill_losses": distill_losses,
        "task_loss": task,
    }
    failed, unknown, reasons = False, False, []
    if not distill_losses:
        unknown = True
        reasons.append("no loss_distill_* term logged")
    for k, v in sorted(distill_losses.items()):
        ok = v <= task
        failed |= not ok
        ratio = v / task if task > 0 else math.inf
        reasons.append(f"{k} {v:.4g} {'<=' if ok else '>'} task loss {task:.4g} ({ratio:.3g}x)")
    grad, base_grad = _grad_norm(distill), _grad_norm(baseline)
    numbers.update(grad_norm=grad, baseline_grad_norm=base_grad, grad_ratio=None)
    if grad is None or base_grad is None:
        unknown = True
        missing = " and ".join(
            w for w, g in (("distillation run", grad), ("baseline", base_grad)) if g is None
        )
        reasons.append(
            f"grad_norm not logged by the {missing} (a run from before the trainer logged it): "
            "the gradient cannot be checked"
        )
    else:
        ratio = grad / base_grad if base_grad > 0 else (math.inf if grad > 0 else 1.0)
        numbers["grad_ratio"] = ratio
        ok = ratio <= max_grad_ratio
        failed |= not ok
        reasons.append(
            f"grad_norm {grad:.4g} = {ratio:.3g}x the baseline's {base_grad:.4g} "
            f"({'<=' if ok else '>'} {max_grad_ratio:g}x)"
        )
    passed = False if failed else (None if unknown else True)
    return GateResult(name, passed, numbers, reasons)


def collapse_gate_for_runs(
    distill_run: str, baseline_run: str, iteration: int = 10, max_grad_ratio: float = 5.0
) -> GateResult:
    """:func:`collapse_gate` on the records of two runs' folders (or metrics.json files) after
    ``iteration`` iterations."""
    return collapse_gate(
        training_record(read_metrics(distill_run), iteration),
        training_record(read_metrics(baseline_run), iteration),
        max_grad_ratio,
    )


def gap_gate(
    teacher_ap: float, student_aps: Sequence[float], expected_share: float, factor: float = 2.0
) -> GateResult:
    """Gate (a): passes when ``expected_share`` × (teacher AP − mean student AP) exceeds
    ``factor`` (2) × the sample std of the student's seeds. Cannot be checked with fewer than
    two student seeds.

    Args:
        teacher_ap: the teacher's metric.
        student_aps: the baseline student's metric, one per seed.
        expected_share: the fraction of the gap the method is expected to recover (> 0), e.g.
            the published gain over the published teacher-student gap.
    """
    name = "gate (a) teacher-student gap"
    if not expected_share > 0:
        raise ValueError(f"expected_share must be > 0, got {expected_share}")
    aps = [float(a) for a in student_aps]
    if not aps:
        raise ValueError("gap_gate needs the student's metric for at least one seed")
    gap = float(teacher_ap) - statistics.mean(aps)
    expected = expected_share * gap
    numbers: Dict[str, object] = {
        "teacher": float(teacher_ap),
        "student_mean": statistics.mean(aps),
        "gap": gap,
        "expected_share": expected_share,
        "expected_gain": expected,
        "seed_std": None,
        "threshold": None,
    }
    if len(aps) < 2:
        return GateResult(
            name, None, numbers, ["one student seed: no seed spread to compare the gap with"]
        )
    spread = statistics.stdev(aps)
    numbers.update(seed_std=spread, threshold=factor * spread)
    ok = expected > factor * spread
    reason = (
        f"expected gain {expected_share:g} x gap {gap:.3g} = {expected:.3g} "
        f"{'>' if ok else '<='} {factor:g} x seed std {spread:.3g} = {factor * spread:.3g}"
    )
    return GateResult(name, ok, numbers, [reason])
