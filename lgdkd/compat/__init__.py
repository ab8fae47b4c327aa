"""Compatibility layer for detectron2 v0.6 installed without its compiled extension.

The upstream v0.6 Python sources (PyPI ``pb1-detectron2==0.6``, see tools/install_detectron2.py)
import ``detectron2._C`` at module level in four places, and use ``PIL.Image.LINEAR`` (removed in
Pillow 10). :mod:`lgdkd.compat.hook` installs an import hook that

* serves ``detectron2._C`` from :mod:`lgdkd.compat.d2_ops` *only when no compiled ``_C`` can be
  found* (the hook sits at the end of ``sys.meta_path``, so a real extension always wins):
  deformable convolution (plain and modulated) through ``torchvision.ops.deform_conv2d``, the fast
  COCOeval through faster-coco-eval's C++ core, and a clear error for rotated-box ops;
* when that fallback is in use, routes ``detectron2.layers.deform_conv``'s autograd functions to
  torchvision on every device (v0.6 raises on CPU and ignores ``groups`` there);
* when that fallback is in use, makes ``detectron2.layers.nms.nms_rotated`` raise the same clear
  error as the other rotated-box ops (v0.6 calls a compiled operator directly);
* gives ``detectron2.data.datasets.pascal_voc`` the ``np.str`` alias numpy 2 removed (VOC sets
  could not be loaded otherwise);
* defines ``PIL.Image.LINEAR`` as an alias of ``BILINEAR`` when Pillow lacks it, and lets
  ``RetinaNetHead`` / ``FCOSHead`` be built with ``norm="GN"`` where torch rejects the
  ``GroupNorm(32, 1)`` probe v0.6 builds (both depend on the Pillow / torch version, not on the
  compiled extension, and act only where those versions would fail).

The hook is installed by ``import lgdkd`` and, in the project's environment, by a ``.pth`` file
written by tools/setup_env.sh, so that ``import detectron2.modeling`` works in any import order.
"""

import importlib.util
import sys


def compat_status():
    """Which detectron2 ops back this process: ``"compiled"`` or ``"lgdkd.compat"``.

    Imports ``detectron2._C`` to find out.
    """
    if importlib.util.find_spec("detectron2") is None:
        return "detectron2 not installed"
    import detectron2._C as c  # noqa: F401

    mod = sys.modules["detectron2._C"]
    if getattr(mod, "LGDKD_FALLBACK", False):
        return "lgdkd.compat (pure-Python detectron2: ops served by torchvision/faster-coco-eval)"
    return "compiled (detectron2's own _C extension)"


def using_fallback_ops():
    """True when detectron2's compiled ops are served by lgdkd.compat."""
    return compat_status().startswith("lgdkd.compat")
