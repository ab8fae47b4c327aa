from ..distill.registries import (  # noqa: F401
    ASSIGNER_REGISTRY,
    build_assigner,
    import_role_modules,
)
from .atss import ATSSAssigner  # noqa: F401
from .colad import CoLADAssigner  # noqa: F401
from .lad import LADAssigner  # noqa: F401
from .regions import GTBoxAssigner, gt_box_masks, valid_region_masks  # noqa: F401

import_role_modules(__name__, __path__)  # and every other module here
