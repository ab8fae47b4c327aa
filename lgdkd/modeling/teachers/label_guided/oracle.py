"""LGD's oracle: the implicit teacher's maps run through the student's own head, evaluated as
a detector (it reads the ground truth, so its AP is an upper bound, not a result)."""

from torch import nn

from ...distill.adapters import build_adapter
from ...distill.roles import Borrowed

__all__ = ["LGDOracleDetector"]


class _FixedFeatures(nn.Module):
    """Stands in for a backbone and returns precomputed features (same padding rules)."""

    def __init__(self, backbone, features):
        super().__init__()
        self._inner = [backbone]  # not a sub-module
        self._features = features

    @property
    def size_divisibility(self):
        return self._inner[0].size_divisibility

    @property
    def padding_constraints(self):
        return getattr(self._inner[0], "padding_constraints", {})

    def output_shape(self):
        return self._inner[0].output_shape()

    def forward(self, x):
        return self._features


class LGDOracleDetector(nn.Module):
    """The student detector run on LGD's teacher maps, for MODEL.DISTILL.TEACHER.EVAL.

    This is an ORACLE: the teacher maps are built from the ground-truth boxes of the evaluated
    images, so its AP says how useful the teacher's maps are, not how well any deployable
    detector performs. Its inputs must keep their annotations (``needs_annotations``).
    """

    needs_annotations = True
    evaluation_note = (
        "LGD teacher = the student's head on label-guided maps built from the GROUND-TRUTH "
        "boxes of the evaluated images (an oracle diagnostic, not a deployable detector)"
    )

    def __init__(self, student, teacher: nn.Module):
        super().__init__()
        self.parts = Borrowed(student=student, teacher=teacher)  # no copy, no state

    def forward(self, batched_inputs):
        student, teacher = self.parts.student, self.parts.teacher
        if any("instances" not in x for x in batched_inputs):
            raise ValueError(
                "The LGD teacher is evaluated from ground truth: the test loader must keep the "
                "annotations (lgdkd.data.build_test_loader(..., keep_annotations=True))."
            )
        # the parts are not sub-modules: put them in inference mode here (and back after)
        student_mode, teacher_mode = student.training, teacher.training
        student.eval()
        teacher.eval()
        adapter = build_adapter(student)
        images = student.preprocess_image(batched_inputs)
        gt = [x["instances"].to(images.tensor.device) for x in batched_inputs]
        outputs = adapter.run(student, images, gt, with_head=False)
        maps = teacher(batched_inputs, outputs).features
        backbone = student.backbone
        student.backbone = _FixedFeatures(backbone, maps)
        try:
            return student(batched_inputs)
        finally:
            student.backbone = backbone
            student.train(student_mode)
            teacher.train(teacher_mode)
