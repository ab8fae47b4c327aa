"""lgdkd: knowledge distillation for object detection on detectron2.

Importing this package is cheap on purpose: it only makes sure that a pure-Python detectron2
(without compiled ops) imports (see :mod:`lgdkd.compat`). Components register themselves in
detectron2's and lgdkd's registries when :mod:`lgdkd.modeling` is imported.
"""

from .compat import hook as _hook

_hook.install()

__version__ = "0.1.0"
