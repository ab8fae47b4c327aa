"""A tiny generated COCO-format data set for fast tests (never for accuracy claims).

Images are noise backgrounds with filled rectangles and ellipses of two classes; every
image may also be left without objects (``empty_every``) to exercise the no-box paths.
"""

import json
import os

import cv2
import numpy as np

from .generated import publish_folder

TOY_CLASSES = ["rectangle", "ellipse"]


def make_toy_coco(root, num_images=8, image_size=(96, 128), seed=0, empty_every=4):
    """Write ``num_images`` images and a COCO json under ``root``. Deterministic in ``seed``.

    Args:
        root: output folder (created); images go to ``root/images``.
        image_size: (height, width) of every image.
        empty_every: every ``empty_every``-th image (index 0, k, 2k, ...) has no object;
            0 disables that.

    Returns:
        (json_path, image_root)
    """
    rng = np.random.RandomState(seed)
    h, w = image_size
    image_root = os.path.join(root, "images")
    os.makedirs(image_root, exist_ok=True)
    images, annotations = [], []
    for i in range(num_images):
        img = rng.randint(0, 60, size=(h, w, 3)).astype(np.uint8)
        n = 0 if (empty_every and i % empty_every == 0) else rng.randint(1, 4)
        for _ in range(n):
            bw, bh = rng.randint(w // 8, w // 3), rng.randint(h // 8, h // 3)
            x0, y0 = rng.randint(0, w - bw), rng.randint(0, h - bh)
            cls = rng.randint(len(TOY_CLASSES))
            color = tuple(int(c) for c in rng.randint(120, 255, size=3))
            if cls == 0:
                cv2.rectangle(img, (x0, y0), (x0 + bw - 1, y0 + bh - 1), color, -1)
            else:
                center = (x0 + bw // 2, y0 + bh // 2)
                cv2.ellipse(img, center, (bw // 2, bh // 2), 0, 0, 360, color, -1)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": cls + 1,
                    "bbox": [float(x0), float(y0), float(bw), float(bh)],
                    "area": float(bw * bh),
                    "iscrowd": 0,
                }
            )
        file_name = f"toy_{i:04d}.png"
        cv2.imwrite(os.path.join(image_root, file_name), img)
        images.append({"id": i + 1, "file_name": file_name, "height": h, "width": w})
    data = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": k + 1, "name": n} for k, n in enumerate(TOY_CLASSES)],
    }
    json_path = os.path.join(root, "annotations.json")
    with open(json_path, "w") as f:
        json.dump(data, f)
    return json_path, image_root


def register_toy(name, root, **kwargs):
    """Generate (if needed) and register a toy set as ``name`` in detectron2's catalogs."""
    from detectron2.data import DatasetCatalog
    from detectron2.data.datasets import register_coco_instances

    json_path = os.path.join(root, "annotations.json")
    image_root = os.path.join(root, "images")
    if not os.path.exists(json_path):
        json_path, image_root = make_toy_coco(root, **kwargs)
    if name not in DatasetCatalog.list():
        register_coco_instances(name, {}, json_path, image_root)
    return name


def _generate_once(root, **kwargs):
    """Generate into a private folder, then rename: safe with several processes at once."""
    if not os.path.exists(os.path.join(root, "annotations.json")):
        publish_folder(root, lambda tmp: make_toy_coco(tmp, **kwargs))


# name -> (num_images, seed); generated under <datasets root>/lgdkd_toy/<name> on first use
TOY_SPLITS = {"lgdkd_toy_train": (8, 0), "lgdkd_toy_val": (4, 1)}


def register_builtin_toy(datasets_root):
    """Register ``lgdkd_toy_train`` / ``lgdkd_toy_val`` lazily (generated on first load).

    Used by configs/quick_schedules (tests and smoke runs), never for accuracy figures.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import load_coco_json

    for name, (num_images, seed) in TOY_SPLITS.items():
        if name in DatasetCatalog.list():
            continue
        root = os.path.join(datasets_root, "lgdkd_toy", name)
        json_path = os.path.join(root, "annotations.json")
        image_root = os.path.join(root, "images")

        def load(name=name, root=root, image_root=image_root, num_images=num_images, seed=seed):
            _generate_once(root, num_images=num_images, seed=seed)
            return load_coco_json(os.path.join(root, "annotations.json"), image_root, name)

        DatasetCatalog.register(name, load)
        MetadataCatalog.get(name).set(
            thing_classes=list(TOY_CLASSES),
            json_file=json_path,
            image_root=image_root,
            evaluator_type="coco",
        )
