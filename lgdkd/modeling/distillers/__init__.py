from ..distill.registries import DISTILLER_REGISTRY, build_distillers  # noqa: F401
from .feature_mimic import FeatureMimicDistiller  # noqa: F401
from .head import HEADDistiller, TFHEADDistiller  # noqa: F401
from .ld import LDDistiller  # noqa: F401
from .lgd import LGDDistiller  # noqa: F401
from .soft_label import SoftLabelDistiller  # noqa: F401
