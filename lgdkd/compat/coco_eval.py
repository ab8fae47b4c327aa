"""COCOeval for detectron2's ``COCOEvaluator`` when detectron2's compiled COCOeval is missing.

detectron2 v0.6 evaluates with ``fast_eval_api.COCOeval_opt``, whose ``evaluate`` and
``accumulate`` call the compiled extension. With lgdkd's fallback ``_C``, that class is replaced
by faster-coco-eval's ``COCOeval_faster`` (a C++ port of the same algorithm, same results as
pycocotools), or by pycocotools' ``COCOeval`` when faster-coco-eval is not installed.
"""

import sys


def cocoeval_class():
    """The COCOeval implementation used in place of detectron2's compiled one."""
    try:
        from faster_coco_eval import COCOeval_faster

        class COCOevalFaster(COCOeval_faster):
            """faster-coco-eval's COCOeval, quiet like pycocotools' and detectron2's."""

            def __init__(self, cocoGt=None, cocoDt=None, iouType="segm", **kwargs):
                kwargs.setdefault("print_function", print)
                super().__init__(cocoGt, cocoDt, iouType, **kwargs)

        return COCOevalFaster
    except ImportError:
        from pycocotools.cocoeval import COCOeval

        return COCOeval


def patch_fast_eval_api(module):
    """Replace ``COCOeval_opt`` in ``detectron2.evaluation.fast_eval_api`` (fallback ops only)."""
    if not getattr(sys.modules.get("detectron2._C"), "LGDKD_FALLBACK", False):
        return
    module.COCOeval_opt = cocoeval_class()
