"""One image from a config: its input, its weights, and every layer drawn (:func:`visualize`)."""

from typing import Dict, Optional, Sequence, Tuple

import torch
from detectron2.data import MetadataCatalog
from detectron2.modeling import build_model

from ..data import AnnotatedTestMapper
from ..data.box_counts import load_dataset_dicts
from ..engine.checkpointer import load_for_evaluation, load_initial_weights
from .draw import write_layers
from .step import check_layers, inspect_step

__all__ = ["load_input", "load_weights", "visualize"]


# ----------------------------------------------------------------------------- one image
def load_input(
    cfg, dataset: Optional[str] = None, index: Optional[int] = None, image_id=None
) -> Tuple[dict, str]:
    """One record of ``dataset`` (default DATASETS.TRAIN[0]) mapped as the test loader maps it
    (test-time resize) with its annotations kept (:class:`lgdkd.data.AnnotatedTestMapper`).

    ``index``: position in the set's records (default 0); ``image_id``: the record whose
    ``image_id`` equals it (compared as text). Returns (mapped dict, data set name)."""
    name = dataset or (cfg.DATASETS.TRAIN[0] if cfg.DATASETS.TRAIN else "")
    if not name:
        raise ValueError("No data set: pass --dataset NAME (DATASETS.TRAIN is empty).")
    dicts = load_dataset_dicts(name)
    if image_id is not None:
        found = [i for i, d in enumerate(dicts) if str(d.get("image_id")) == str(image_id)]
        if not found:
            ids = [str(d.get("image_id")) for d in dicts[:5]]
            raise ValueError(
                f"Data set {name!r} has no image_id {image_id!r} ({len(dicts)} images; the "
                f"first ids: {', '.join(ids)})."
            )
        index = found[0]
    index = 0 if index is None else int(index)
    if not 0 <= index < len(dicts):
        raise ValueError(
            f"--image-index {index} is outside data set {name!r} ({len(dicts)} images)."
        )
    return AnnotatedTestMapper(cfg)(dicts[index]), name


def load_weights(model, cfg, weights: str = "") -> None:
    """``weights`` loaded strictly as for ``--eval-only``, or, without ``weights``, the model
    as training starts (MODEL.WEIGHTS into the student; a frozen teacher always comes from its
    own file)."""
    if weights:
        load_for_evaluation(model, weights, what="--weights")
    else:
        load_initial_weights(model, cfg.MODEL.WEIGHTS)


def visualize(
    cfg,
    output_dir: str,
    *,
    model=None,
    weights: str = "",
    dataset: Optional[str] = None,
    image_index: Optional[int] = None,
    image_id=None,
    layers: Optional[Sequence[str]] = None,
    score_thresh: float = 0.3,
    top_proposals: int = 20,
) -> Dict[str, str]:
    """Draw ``layers`` (default: every layer the config supports) for one image; see
    :func:`load_input`, :func:`inspect_step` and :func:`write_layers`. ``model``: an already
    built model (``weights`` is then ignored); otherwise it is built with torch seeded by SEED
    (0 when negative), so that randomly initialised parts are the same in every call.
    Returns {layer or "combined": PNG path}."""
    seed = max(int(cfg.SEED), 0)
    built = model is None
    if built:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # random initial weights: the same in every call
            model = build_model(cfg)
    layers = check_layers(model, layers)  # before the weights: a wrong layer fails fast
    if built:
        load_weights(model, cfg, weights)
    inputs, name = load_input(cfg, dataset, image_index, image_id)
    view = inspect_step(
        model,
        inputs,
        layers,
        input_format=cfg.INPUT.FORMAT,
        class_names=MetadataCatalog.get(name).get("thing_classes", None),
        score_thresh=score_thresh,
        seed=seed,
    )
    return write_layers(
        view, layers, output_dir, score_thresh=score_thresh, top_proposals=top_proposals
    )
