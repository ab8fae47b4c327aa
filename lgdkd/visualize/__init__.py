"""What one distillation step sees, drawn on one image (the library behind tools/visualize.py).

:func:`inspect_step` runs the parts of a model as :class:`DistillationDetector`'s training step
does (``adapter.preprocess`` / ``run``, the teacher, the assigner, the student's task losses,
which record its targets, and the distillers' public helpers), on one image, in training mode
and without gradient, with distillation on; :func:`render_layer` draws the result. Layers
(:data:`LAYERS`), each on the image as the test loader resizes it (INPUT.MIN_SIZE_TEST /
MAX_SIZE_TEST, without the batch padding), ``h x w`` below:

* ``gt``: ground-truth boxes with class names, one colour per box (h x w);
* ``student_pos``: the positives of the student's own assignment (ATSS for GFL, PAA's GMM split,
  detectron2's IoU matching for RetinaNet, FCOS's rule), anchor boxes (points for FCOS) in the
  colour of their box (h x w);
* ``teacher_pos``: LAD's teacher assignment, which replaces the student's, or CoLAD's shared
  one (h x w);
* ``ld_regions``: per head level, LD's main region (the student's ATSS positives, green) and
  VLR (orange), one cell per location (h x L w, L levels side by side);
* ``head_rois``: HEAD's proposals from the student (the best ``top_proposals`` after NMS,
  brighter = higher score) and the RoIs the assistant samples (positives green, negatives
  red) (h x 2 w);
* ``lgd_energy``: per level, the L2 norm over channels of the student's FPN map (top row) and of
  LGD's teacher map (bottom row), upsampled, each normalised to its own range, as a heat map
  (2 h x L w);
* ``predictions``: the student's detections (inference mode) with a score >= ``score_thresh``
  (h x w).

Which layers a model has: :func:`supported_layers`. The step uses batch statistics of this one
image where the student trains BatchNorm; buffers (and dense detectors' loss normaliser) are
restored afterwards, and the random draws (HEAD's RoI sampling) come from a fixed seed.
"""

from .draw import render_layer, write_layers
from .run import load_input, load_weights, visualize
from .step import LAYERS, Positives, StepView, check_layers, inspect_step, supported_layers

__all__ = [
    "LAYERS",
    "Positives",
    "StepView",
    "supported_layers",
    "check_layers",
    "inspect_step",
    "render_layer",
    "write_layers",
    "load_input",
    "load_weights",
    "visualize",
]
