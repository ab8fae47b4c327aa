"""Build the proving-ground set (Fashion-MNIST photos pasted into real photos) and print its
statistics.

    python datasets/prepare_proving_ground.py               # $DETECTRON2_DATASETS or datasets/
    python datasets/prepare_proving_ground.py --root /data  # under /data/proving_ground
    python datasets/prepare_proving_ground.py --force       # delete and build again
    python datasets/prepare_proving_ground.py --sizes 400 100 200 --seed 1   # not pinned

The Fashion-MNIST idx files are looked for in --items, $LGDKD_FASHION_MNIST,
<root>/fashion-mnist and /usr/share/datasets/fashion-mnist; when none has them and apt-get is
available they are fetched into <root>/fashion-mnist (`apt-get download dataset-fashion-mnist`
+ `dpkg -x`), otherwise the error says how to get them. The default build is checked against
the sha256 pinned in lgdkd/data/proving_ground.py.
"""

import argparse
import json
import logging
import os
import sys
import time

try:
    import lgdkd  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lgdkd.data.catalog import DatasetError  # noqa: E402
from lgdkd.data.generated import default_datasets_root  # noqa: E402
from lgdkd.data.proving_ground import (  # noqa: E402
    DEFAULT_OPTIONS,
    JSON_SHA256,
    ProvingGroundOptions,
    prepare_proving_ground,
    proving_ground_statistics,
)


def write_examples(dataset_dir, path, split="train", count=6, columns=3):
    """A mosaic of the first ``count`` images of ``split`` with their boxes and class names,
    as a 256-colour PNG (smaller; colours are approximate)."""
    import cv2
    import numpy as np
    from PIL import Image

    with open(os.path.join(dataset_dir, "annotations", f"proving_ground_{split}.json")) as f:
        coco = json.load(f)
    names = {c["id"]: c["name"] for c in coco["categories"]}
    tiles = []
    for im in coco["images"][:count]:
        image = cv2.imread(os.path.join(dataset_dir, split, im["file_name"]), cv2.IMREAD_COLOR)
        for a in coco["annotations"]:
            if a["image_id"] == im["id"]:
                x, y, w, h = a["bbox"]
                cv2.rectangle(image, (x, y), (x + w - 1, y + h - 1), (0, 255, 255), 1)
                cv2.putText(
                    image,
                    names[a["category_id"]],
                    (x, max(y - 2, 8)),
                    cv2.FONT_HERSHEY_PLAIN,
                    0.7,
                    (0, 255, 255),
                    1,
                )
        tiles.append(image)
    tiles += [np.zeros_like(tiles[0])] * (-len(tiles) % columns)
    rows = [np.concatenate(tiles[i : i + columns], 1) for i in range(0, len(tiles), columns)]
    mosaic = Image.fromarray(np.ascontiguousarray(np.concatenate(rows, 0)[:, :, ::-1]))
    mosaic.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def _summary(values, fmt="{:g}"):
    return "/".join(fmt.format(v) for v in values) if values else "-"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--root",
        default=None,
        help="data sets root (default: $DETECTRON2_DATASETS, else the checkout's datasets/)",
    )
    parser.add_argument(
        "--sizes",
        type=int,
        nargs=3,
        default=list(DEFAULT_OPTIONS.sizes),
        metavar=("TRAIN", "DEV", "TEST"),
        help="images per split (default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=DEFAULT_OPTIONS.seed, help="default: 0")
    parser.add_argument(
        "--items", default=None, help="folder of the Fashion-MNIST idx files (or of `dpkg -x`)"
    )
    parser.add_argument(
        "--no-fetch", action="store_true", help="never run apt-get to fetch Fashion-MNIST"
    )
    parser.add_argument("--force", action="store_true", help="replace an existing build")
    parser.add_argument(
        "--examples", default=None, metavar="PNG", help="also write a mosaic of train images"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    options = ProvingGroundOptions(sizes=tuple(args.sizes), seed=args.seed)
    root = os.path.abspath(args.root or default_datasets_root())
    start = time.perf_counter()
    try:
        dataset_dir = prepare_proving_ground(
            root, options, items_dir=args.items, fetch=not args.no_fetch, force=args.force
        )
    except DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    seconds = time.perf_counter() - start
    print(f"Proving ground in {dataset_dir} ({seconds:.0f} s)")
    stats = proving_ground_statistics(dataset_dir)
    print(
        f"{'split':<6} {'images':>6} {'boxes':>6} {'left out':>8}  per image  "
        f"box w / h min/med/max"
    )
    for split, s in stats.items():
        print(
            f"{split:<6} {s['images']:>6} {s['boxes']:>6} {s['objects_left_out']:>8}  "
            f"{_summary(s['objects_per_image']):<9}  {_summary(s['width'])} / "
            f"{_summary(s['height'])}"
        )
    for split, s in stats.items():
        print(f"{split}: boxes per class {s['per_class']}")
        print(f"{split}: COCO sizes by area {s['coco_sizes']}, backgrounds {s['backgrounds']}")
        pinned = options == DEFAULT_OPTIONS and s["json_sha256"] == JSON_SHA256[split]
        print(
            f"{split}: annotations/proving_ground_{split}.json sha256 {s['json_sha256']} "
            f"({'matches the pin' if pinned else 'not pinned: options differ from the default'})"
        )
    if args.examples:
        write_examples(dataset_dir, args.examples)
        print(f"examples: {args.examples} ({os.path.getsize(args.examples) // 1024} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
