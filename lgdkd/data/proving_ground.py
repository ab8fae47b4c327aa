"""The proving ground: real product photos pasted into real photos, 10 classes, 3 splits.

A deterministic, semi-real detection set on which distillation methods can be compared on a
CPU in minutes: the 70,000 Fashion-MNIST product photos (:mod:`lgdkd.data.fashion_mnist`)
pasted (:mod:`lgdkd.data.composite`) into 256x256 crops of real photos that installed
packages ship (DeepForest's aerial scenes, matplotlib's and scikit-image's sample photos).
The objects are real photos and the backgrounds are real photos, but the scenes are
composites, not natural ones. Layout, under :func:`default_datasets_root`::

    proving_ground/
      annotations/proving_ground_{train,dev,test}.json
      train/000001.png ...  dev/...  test/...

Splits share neither items nor background photos: train items are Fashion-MNIST train
images 0-53,999, dev items train images 54,000-59,999, test items the 10,000 t10k images;
the background photos of each split are listed in :data:`BACKGROUNDS`. Each image takes its
background from the split's aerial scenes or its ground-level photos with probability 1/2
each (then uniformly among them), a random crop, and a random rotation by a multiple of 90
degrees and/or a left-right flip (aerial scenes) or a left-right flip (photos).

Determinism: with the same options, items and backgrounds, the json files are
byte-identical and the images pixel-identical (each image record holds the sha256 of its RGB
pixels, so the json's sha256 covers them); the PNG bytes are identical wherever the zlib
library is. The sources are checked before a build (the idx files by file sha256, the
backgrounds by the sha256 of their decoded pixels), and the json files of the default
options are pinned in :data:`JSON_SHA256`: a build that does not reproduce them fails.
"""

import json
import logging
import os

import numpy as np
from detectron2.data.datasets import load_coco_json

from .backgrounds import BACKGROUNDS, background_crop, load_backgrounds, pixels_sha256
from .composite import ProvingGroundOptions, compose_image, encode_png
from .errors import DatasetError
from .fashion_mnist import (
    CLASS_NAMES,
    FashionMnistError,
    fetch_fashion_mnist,
    find_fashion_mnist,
    how_to_get,
    load_fashion_mnist,
)
from .generated import default_datasets_root, publish_folder, register_lazy_set, sha256_file

__all__ = [
    "BACKGROUNDS",
    "DEFAULT_OPTIONS",
    "JSON_SHA256",
    "PROVING_GROUND_SPLITS",
    "ProvingGroundError",
    "ProvingGroundOptions",
    "build_proving_ground",
    "check_proving_ground_available",
    "load_backgrounds",
    "prepare_proving_ground",
    "proving_ground_statistics",
    "register_proving_ground",
    "verify_proving_ground",
]

logger = logging.getLogger(__name__)

FOLDER = "proving_ground"
FORMAT_VERSION = "lgdkd-proving-ground-v1"
PROVING_GROUND_SPLITS = ("train", "dev", "test")
BUILD_COMMAND = "python datasets/prepare_proving_ground.py"
DEFAULT_OPTIONS = ProvingGroundOptions()
# sha256 of the json files built with DEFAULT_OPTIONS.
JSON_SHA256 = {
    "train": "6c3ae4df87eaa5ef8e6493f76ede21d83cc8f27853af582bc9a4c53212e598ed",
    "dev": "55a31419288e6765aefd32314a4f549521f639a11786db81aa4ce3f8027c2772",
    "test": "f25af197dd36aa3a8322b0ac5196513981a87df53dcf51cda7ff42a87ceb44dc",
}
LICENSE = (
    "items: Fashion-MNIST (Zalando SE), MIT; backgrounds: NEON imagery via DeepForest, CC0 1.0; "
    "scikit-image sample photos, CC0 / public domain; Grace Hopper (matplotlib), public domain"
)


class ProvingGroundError(DatasetError):
    """The proving-ground set is missing, cannot be built, or differs from its pins."""


def item_pools(items):
    """Indices of the items each split draws from: dev takes the last tenth of the train
    split, train the rest, test the whole t10k split.

    Returns:
        dict split -> (source split, int64 array of indices).
    """
    n = len(items["train"][1])
    return {
        "train": ("train", np.arange(0, n - n // 10)),
        "dev": ("train", np.arange(n - n // 10, n)),
        "test": ("t10k", np.arange(len(items["t10k"][1]))),
    }


def build_split(out_dir, split, items, backgrounds, options):
    """Compose and write the images of one split; returns its COCO dict."""
    code = PROVING_GROUND_SPLITS.index(split)
    num_images = options.sizes[code]
    seed = [options.seed, code]
    counts = np.random.RandomState(seed + [0]).randint(
        options.objects[0], options.objects[1] + 1, size=num_images, dtype=np.int64
    )
    source, pool = item_pools(items)[split]
    if len(pool) == 0 and counts.sum() > 0:
        raise ProvingGroundError(f"no items for the {split} split")
    order_rng, order = np.random.RandomState(seed + [2]), []
    while sum(len(o) for o in order) < counts.sum():
        order.append(pool[order_rng.permutation(len(pool))])
    order = np.concatenate(order + [pool[:0]])
    images, labels = items[source]
    categories = [
        {"id": k + 1, "name": n, "supercategory": "fashion"} for k, n in enumerate(CLASS_NAMES)
    ]
    coco = {"categories": categories, "images": [], "annotations": []}
    image_dir = os.path.join(out_dir, split)
    os.makedirs(image_dir, exist_ok=True)
    offset, left_out = 0, 0
    for i in range(num_images):
        rng = np.random.RandomState(seed + [1, i])
        bg, bg_name, bg_box, transform = background_crop(
            rng, backgrounds[split], options.image_size
        )
        chosen = order[offset : offset + counts[i]]
        offset += counts[i]
        image, objects = compose_image(rng, bg, [(images[k], labels[k]) for k in chosen], options)
        left_out += len(chosen) - len(objects)
        rgb = np.ascontiguousarray(image[:, :, ::-1])
        file_name = f"{i + 1:06d}.png"
        with open(os.path.join(image_dir, file_name), "wb") as f:
            f.write(encode_png(rgb))
        coco["images"].append(
            {
                "id": i + 1,
                "file_name": file_name,
                "width": options.image_size,
                "height": options.image_size,
                "background": bg_name,
                "background_box": bg_box,
                "background_transform": transform,
                "pixels_sha256": pixels_sha256(rgb),
            }
        )
        for obj in objects:
            x0, y0, x1, y1 = obj["box"]
            coco["annotations"].append(
                {
                    "id": len(coco["annotations"]) + 1,
                    "image_id": i + 1,
                    "category_id": obj["label"] + 1,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": obj["area"],
                    "iscrowd": 0,
                    "item": [source, int(chosen[obj["index"]])],
                    "scale": obj["scale"],
                    "flip": obj["flip"],
                    "tint_rgb": obj["tint"][::-1],
                }
            )
        if (i + 1) % 500 == 0:
            logger.info("proving ground %s: %d / %d images", split, i + 1, num_images)
    coco["info"] = {
        "description": "lgdkd proving ground: Fashion-MNIST photos pasted into real photos",
        "version": FORMAT_VERSION,
        "split": split,
        "options": options.to_json(),
        "items": (
            f"Fashion-MNIST {source} [{int(pool[0])}, {int(pool[-1]) + 1})" if len(pool) else ""
        ),
        "backgrounds": [b.name for b in backgrounds[split]],
        "objects_left_out": left_out,
        "license": LICENSE,
    }
    return coco


def _json_path(dataset_dir, split):
    return os.path.join(dataset_dir, "annotations", f"proving_ground_{split}.json")


def build_proving_ground(out_dir, items, backgrounds, options=DEFAULT_OPTIONS):
    """Write the three splits into ``out_dir`` (no pin check; see :func:`verify_proving_ground`).

    Args:
        items: dict "train" / "t10k" -> (uint8 (N, 28, 28) photos, (N,) labels 0-9).
        backgrounds: dict split -> list of :class:`Background`.

    Returns:
        dict split -> path of its json file.
    """
    os.makedirs(os.path.join(out_dir, "annotations"), exist_ok=True)
    paths = {}
    for split in PROVING_GROUND_SPLITS:
        coco = build_split(out_dir, split, items, backgrounds, options)
        paths[split] = _json_path(out_dir, split)
        with open(paths[split], "wb") as f:
            f.write(json.dumps(coco, sort_keys=True, separators=(",", ":")).encode("utf-8"))
    return paths


def _missing(dataset_dir, what):
    force = " --force" if os.path.isdir(dataset_dir) else ""
    return ProvingGroundError(
        f"The proving-ground set is not built: {what}. Build it with `{BUILD_COMMAND}{force}` "
        f"(add --root {os.path.dirname(dataset_dir)} unless that is $DETECTRON2_DATASETS or "
        f"the checkout's datasets/ folder); see datasets/README.md."
    )


def verify_proving_ground(dataset_dir, pins=None, check_images=False):
    """Check a built folder; raise :class:`ProvingGroundError` on a problem.

    Every json must exist. Its sha256 is compared with ``pins`` (dict split -> sha256) when
    given, else with :data:`JSON_SHA256` when its options are the defaults; a build with other
    options is not pinned. ``check_images``: also check that every listed image exists.

    Returns:
        dict split -> the json's options (a dict).
    """
    found = {}
    for split in PROVING_GROUND_SPLITS:
        path = _json_path(dataset_dir, split)
        if not os.path.isfile(path):
            raise _missing(dataset_dir, f"{path} does not exist")
        actual = sha256_file(path)
        try:
            with open(path, "rb") as f:
                coco = json.load(f)
            found[split] = coco["info"]["options"]
        except (ValueError, KeyError, TypeError) as e:
            raise _missing(dataset_dir, f"{path} is not a proving-ground json ({e!r})") from e
        expected = (pins or {}).get(split)
        if pins is None and coco["info"]["options"] == DEFAULT_OPTIONS.to_json():
            expected = JSON_SHA256[split]
        if expected is not None and actual != expected:
            raise ProvingGroundError(
                f"{path} has sha256 {actual}, but the pinned build gives {expected}: this "
                f"build does not reproduce the pinned proving-ground set (another version of "
                f"the code, the items or the background photos, or a modified file). "
                f"Rebuild with `{BUILD_COMMAND} --force`; if that fails the same way, the "
                f"sources here differ from the pinned ones."
            )
        if check_images:
            folder = os.path.join(dataset_dir, split)
            absent = [
                im["file_name"]
                for im in coco["images"]
                if not os.path.isfile(os.path.join(folder, im["file_name"]))
            ]
            if absent:
                raise _missing(dataset_dir, f"{len(absent)} image(s) of {folder} are missing")
    return found


def prepare_proving_ground(
    root=None, options=DEFAULT_OPTIONS, items_dir=None, fetch=True, force=False
):
    """Build ``<root>/proving_ground`` (unless it exists with these options) and verify it.

    Args:
        root: data sets root (default: :func:`default_datasets_root`).
        items_dir: folder of the Fashion-MNIST idx files (see
            :func:`~lgdkd.data.fashion_mnist.find_fashion_mnist` for where they are looked for).
        fetch: when the files are not found, fetch them with apt-get (where available).
        force: rebuild even if the folder exists.

    Returns:
        the path of the ``proving_ground`` folder.
    """
    root = os.path.abspath(root or default_datasets_root())
    dataset_dir = os.path.join(root, FOLDER)
    if os.path.isdir(dataset_dir) and not force:
        found = verify_proving_ground(dataset_dir, check_images=True)
        if any(o != options.to_json() for o in found.values()):
            raise ProvingGroundError(
                f"{dataset_dir} exists, built with other options ({found['train']}); "
                f"use --force to replace it."
            )
        return dataset_dir
    folder = find_fashion_mnist(items_dir, root)
    if folder is None:
        if not fetch:
            raise FashionMnistError(
                "The Fashion-MNIST idx files are not found. " + how_to_get(root)
            )
        logger.info("Fetching Fashion-MNIST with apt-get into %s", root)
        folder = fetch_fashion_mnist(root)
    items = load_fashion_mnist(folder, root)
    backgrounds = load_backgrounds()

    def build(tmp):
        build_proving_ground(tmp, items, backgrounds, options)
        verify_proving_ground(tmp)

    publish_folder(dataset_dir, build, replace=True)
    return dataset_dir


def proving_ground_statistics(dataset_dir):
    """Counts and box sizes per split of a built folder.

    Returns:
        dict split -> {"images", "boxes", "per_class" (name -> count), "objects_left_out",
        "objects_per_image" / "width" / "height" / "sqrt_area" (min, median, max),
        "coco_sizes" (small / medium / large counts by area), "backgrounds" (name -> images),
        "json_sha256"}.
    """
    stats = {}
    for split in PROVING_GROUND_SPLITS:
        path = _json_path(dataset_dir, split)
        with open(path, "rb") as f:
            coco = json.load(f)
        anns = coco["annotations"]
        wh = np.array([a["bbox"][2:] for a in anns], dtype=np.float64).reshape(-1, 2)
        area = np.array([a["area"] for a in anns], dtype=np.float64)
        image_ids = [a["image_id"] for a in anns]
        per_image = np.bincount(image_ids, minlength=len(coco["images"]) + 1)[1:]

        def summary(v):
            return (float(v.min()), float(np.median(v)), float(v.max())) if v.size else None

        backgrounds = {}
        for im in coco["images"]:
            backgrounds[im["background"]] = backgrounds.get(im["background"], 0) + 1
        stats[split] = {
            "images": len(coco["images"]),
            "boxes": len(anns),
            "per_class": {
                c["name"]: sum(a["category_id"] == c["id"] for a in anns)
                for c in coco["categories"]
            },
            "objects_left_out": coco["info"]["objects_left_out"],
            "objects_per_image": summary(per_image.astype(np.float64)),
            "width": summary(wh[:, 0]),
            "height": summary(wh[:, 1]),
            "sqrt_area": summary(np.sqrt(area)),
            "coco_sizes": {
                "small": int((area < 32**2).sum()),
                "medium": int(((area >= 32**2) & (area < 96**2)).sum()),
                "large": int((area >= 96**2).sum()),
            },
            "backgrounds": backgrounds,
            "json_sha256": sha256_file(path),
        }
    return stats


# --------------------------------------------------------------------------------------------
# detectron2 catalogs
# --------------------------------------------------------------------------------------------
def check_proving_ground_available(root):
    """Raise :class:`ProvingGroundError` (a DatasetError) when ``<root>/proving_ground`` is not
    built or does not match its pins; nothing is built here."""
    verify_proving_ground(os.path.join(root, FOLDER))


def _load_split(split, root, name):
    dataset_dir = os.path.join(root, FOLDER)
    verify_proving_ground(dataset_dir, check_images=True)
    return load_coco_json(
        _json_path(dataset_dir, split), os.path.join(dataset_dir, split), dataset_name=name
    )


def register_proving_ground(root=None, prefix="proving_ground"):
    """Register ``<prefix>_train``, ``<prefix>_dev`` and ``<prefix>_test`` (lazy).

    Registration only records paths; loading a set whose files are missing raises
    :class:`ProvingGroundError` naming the command that builds them. Idempotent for the same
    ``root``; registering an existing name with another root is an error.

    Returns:
        tuple of the registered names.
    """
    root = os.path.abspath(root or default_datasets_root())
    dataset_dir = os.path.join(root, FOLDER)
    return tuple(
        register_lazy_set(
            f"{prefix}_{split}",
            _json_path(dataset_dir, split),
            os.path.join(dataset_dir, split),
            lambda s=split, n=f"{prefix}_{split}": _load_split(s, root, n),
            ProvingGroundError,
            thing_classes=list(CLASS_NAMES),
            proving_ground_root=root,
        )
        for split in PROVING_GROUND_SPLITS
    )
