from ..distill.registries import (  # noqa: F401
    DISTILLER_REGISTRY,
    build_distillers,
    import_role_modules,
)
from .feature_mimic import FeatureMimicDistiller  # noqa: F401
from .head import HEADDistiller, TFHEADDistiller  # noqa: F401
from .ld import LDDistiller  # noqa: F401
from .lgd import LGDDistiller  # noqa: F401
from .soft_label import SoftLabelDistiller  # noqa: F401

import_role_modules(__name__, __path__)  # and every other module here
