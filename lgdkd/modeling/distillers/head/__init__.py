"""HEAD: hetero-assists distillation (Wang et al., ECCV 2022, arXiv:2207.05345; official code
LutingWang/HEAD, branch ``refactor`` for HEAD and ``dev`` for TF-HEAD).

A RetinaNet student gets an *assistant*: the second stage of a Faster R-CNN on the student's
FPN, trained on proposals made from the student's own (detached) RetinaNet outputs. The
assistant's losses reach the student's FPN and backbone through RoIAlign. With a frozen
Faster R-CNN teacher the assistant's box-head activations on the sampled RoIs are regressed
to the teacher's on the same RoIs (AKD), and the student's RetinaNet cls-tower feature at the
anchor that produced each RoI is regressed to the teacher's last box-head activation (CKD).
The teacher-free variant (TF-HEAD) trains the assistants jointly and regresses the student's
head features onto their detached features.

The assistant lives in the distiller (``distillers.<i>.*`` in the state dict), so the
exported student is a plain RetinaNet.

Shape shorthand: N images, L levels, A anchors per location, K classes, R proposals of one
image, S sampled RoIs of the batch, D width of a box-head activation.

Modules: ``proposals`` (the student's detections as RoIs), ``assistant`` (the Faster R-CNN
second stage on the student's FPN), ``losses`` (AKD, CKD and their adapters), ``hetero``
(HEAD: Assist + AKD + CKD) and ``teacher_free`` (TF-HEAD).
"""

from .assistant import HEADAssistant, box_head_activations
from .hetero import HEADDistiller
from .losses import akd_loss, anchor_feature_loss
from .proposals import retina_proposals
from .teacher_free import TFHEADDistiller

__all__ = [
    "HEADDistiller",
    "TFHEADDistiller",
    "HEADAssistant",
    "retina_proposals",
    "box_head_activations",
    "akd_loss",
    "anchor_feature_loss",
]
