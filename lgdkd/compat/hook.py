"""Import hook that lets detectron2 v0.6 run without its compiled extension.

Kept free of heavy imports: it may run at interpreter start (from a ``.pth`` file).
"""

import importlib.abc
import importlib.util
import sys

FALLBACK_MODULE = "lgdkd.compat.d2_ops"
# modules patched right after they execute, and the function that patches each
_POST_EXEC_PATCHES = {
    "detectron2.layers.deform_conv": "lgdkd.compat.deform:patch_detectron2_deform_conv",
    "detectron2.layers.nms": "lgdkd.compat.hook:rotated_nms_unavailable",
    "detectron2.evaluation.fast_eval_api": "lgdkd.compat.coco_eval:patch_fast_eval_api",
    "detectron2.modeling.meta_arch.retinanet": "lgdkd.compat.hook:retinanet_norm_probe",
    "detectron2.data.datasets.pascal_voc": "lgdkd.compat.hook:voc_numpy_str",
}
_PRE_EXEC_PATCHES = {
    "detectron2.data.transforms.transform": "lgdkd.compat.hook:pillow_linear_alias",
}


def pillow_linear_alias(module=None):
    """Pillow 10 removed ``Image.LINEAR``; detectron2 v0.6 uses it as a default argument."""
    from PIL import Image

    if not hasattr(Image, "LINEAR"):
        Image.LINEAR = Image.BILINEAR


def rotated_nms_unavailable(module):
    """Make ``detectron2.layers.nms.nms_rotated`` raise the fallback's clear NotImplementedError.

    v0.6 calls ``torch.ops.detectron2.nms_rotated``, an operator registered only by the compiled
    extension; without it the call fails with an obscure AttributeError. Applied only when
    ``detectron2._C`` is lgdkd's fallback (``batched_nms_rotated`` calls the patched name too).
    """
    ops = importlib.import_module("detectron2._C")
    if getattr(ops, "LGDKD_FALLBACK", False):
        module.nms_rotated = ops.nms_rotated


def retinanet_norm_probe(module):
    """Let v0.6's ``RetinaNetHead`` (hence ``FCOSHead``) be built with ``norm="GN"``.

    It calls ``get_norm(norm, 1)`` only to read the type of the norm layer. Recent torch checks
    ``num_channels % num_groups`` when a GroupNorm is built, so ``GroupNorm(32, 1)`` raises and
    no GN head (FCOS's default) can be built, from yacs or LazyConfig. That probe, the module's
    only 1-channel call, gets a 32-channel layer of the same type instead, as later detectron2
    versions do. Independent of the compiled extension: applied only where torch raises.
    """
    from torch import nn

    try:
        nn.GroupNorm(32, 1)
        return
    except ValueError:
        pass
    get_norm = module.get_norm

    def get_norm_32_channel_probe(norm, out_channels):
        return get_norm(norm, 32 if out_channels == 1 else out_channels)

    module.get_norm = get_norm_32_channel_probe


class _NumpyWithStr:
    """numpy, plus the ``np.str`` alias (of ``str``) that numpy 2 removed."""

    str = str

    def __getattr__(self, name):
        import numpy

        return getattr(numpy, name)


def voc_numpy_str(module):
    """v0.6's ``load_voc_instances`` reads the image-id list with ``np.loadtxt(dtype=np.str)``,
    which numpy 2 refuses: every Pascal VOC set failed to load. The module (only it) sees a
    numpy whose ``str`` is the builtin, as numpy < 1.24 had it."""
    import numpy

    if "str" not in vars(numpy):  # hasattr would trigger numpy's FutureWarning
        module.np = _NumpyWithStr()


def _call(target, module):
    mod_name, fn_name = target.split(":")
    fn = getattr(importlib.import_module(mod_name), fn_name)
    fn(module)


class _PatchingLoader(importlib.abc.Loader):
    """Wraps the real loader of a detectron2 module to patch it before/after it executes."""

    def __init__(self, loader, fullname):
        self._loader = loader
        self._fullname = fullname

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        if self._fullname in _PRE_EXEC_PATCHES:
            _call(_PRE_EXEC_PATCHES[self._fullname], module)
        self._loader.exec_module(module)
        if self._fullname in _POST_EXEC_PATCHES:
            _call(_POST_EXEC_PATCHES[self._fullname], module)

    def __getattr__(self, name):  # get_source, get_filename, ... for tracebacks and inspect
        return getattr(self._loader, name)


class _PatchFinder(importlib.abc.MetaPathFinder):
    """First on ``sys.meta_path``: finds the few patched modules with the other finders."""

    def find_spec(self, fullname, path, target=None):
        if fullname not in _POST_EXEC_PATCHES and fullname not in _PRE_EXEC_PATCHES:
            return None
        for finder in sys.meta_path:
            if isinstance(finder, (_PatchFinder, _FallbackOpsFinder)):
                continue
            find = getattr(finder, "find_spec", None)
            spec = find(fullname, path, target) if find else None
            if spec is not None and spec.loader is not None:
                spec.loader = _PatchingLoader(spec.loader, fullname)
                return spec
        return None


class _FallbackOpsLoader(importlib.abc.Loader):
    def create_module(self, spec):
        return None

    def exec_module(self, module):
        fallback = importlib.import_module(FALLBACK_MODULE)
        module.__dict__.update({k: v for k, v in vars(fallback).items() if not k.startswith("__")})
        module.__doc__ = fallback.__doc__


class _FallbackOpsFinder(importlib.abc.MetaPathFinder):
    """Last on ``sys.meta_path``: reached for ``detectron2._C`` only if no compiled one exists."""

    def find_spec(self, fullname, path, target=None):
        if fullname != "detectron2._C":
            return None
        return importlib.util.spec_from_loader(
            fullname, _FallbackOpsLoader(), origin=FALLBACK_MODULE
        )


def install():
    """Add the two finders to ``sys.meta_path`` (idempotent)."""
    if not any(isinstance(f, _PatchFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _PatchFinder())
    if not any(isinstance(f, _FallbackOpsFinder) for f in sys.meta_path):
        sys.meta_path.append(_FallbackOpsFinder())
    # modules imported before the hook existed still get their patches
    if "detectron2.data.transforms.transform" in sys.modules:
        pillow_linear_alias()
    if "detectron2.data.datasets.pascal_voc" in sys.modules:
        voc_numpy_str(sys.modules["detectron2.data.datasets.pascal_voc"])
    if "detectron2.layers.deform_conv" in sys.modules:
        _call(
            _POST_EXEC_PATCHES["detectron2.layers.deform_conv"],
            sys.modules["detectron2.layers.deform_conv"],
        )
