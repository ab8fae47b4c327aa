"""Background photos of the proving-ground set: which, from which package, for which split.

Only photos that installed packages ship are used, read from the packages' data folders
(located with importlib, never imported): the ``deepforest`` wheel's aerial scenes (NEON,
CC0), matplotlib's ``grace_hopper.jpg`` (public domain) and scikit-image's sample photos (CC0
or public domain, see each photo's docstring in ``skimage.data``). Each split has its own
photos (:data:`BACKGROUNDS`); each is pinned by the sha256 of its decoded pixels (the uint8
BGR array that ``cv2.imread`` returns, EXIF orientation ignored), so that a different file or
decoder is caught before a build.

Groups: "aerial" scenes (nadir views: any multiple of 90 degrees and a flip keep them
plausible) and ground-level "photo"s (upright: left-right flips only).
"""

import hashlib
import importlib.util
import os
from dataclasses import dataclass

import cv2
import numpy as np

from .errors import DatasetError

__all__ = ["BACKGROUNDS", "Background", "BackgroundError", "background_crop", "load_backgrounds"]


class BackgroundError(DatasetError):
    """A background photo is missing or is not the pinned one."""


@dataclass(frozen=True)
class _Source:
    """A background photo shipped by an installed package, and what it decodes to."""

    package: str  # import name of the package that ships it
    path: str  # inside the package's data folder
    split: str
    group: str  # "aerial" (any rotation) or "photo" (upright: left-right flips only)
    pixels_sha256: str  # of the decoded (H, W, 3) uint8 BGR array

    @property
    def name(self):
        return f"{self.package}:{self.path}"


_DATA_DIRS = {"deepforest": "data", "matplotlib": "mpl-data/sample_data", "skimage": "data"}
_PIP_NAMES = {
    "deepforest": "deepforest==2.1.0",
    "matplotlib": "matplotlib",
    "skimage": "scikit-image",
}
# Not used: the deepforest wheel's "AWPE Pigeon Lake 2020 DJI_0005.JPG" (a drone photo of
# birds whose licence the wheel does not state) and OSBS_029.tif (the PNG's scene);
# scikit-image's camera.png (replaced by another photo in 0.16), motorcycle_*.png (licence
# not stated) and its non-photographic images.
BACKGROUNDS = (
    _Source(
        "deepforest",
        "2019_YELL_2_528000_4978000_image_crop2.png",
        "train",
        "aerial",
        "7770ba092543efa5b02b3b003fce1ea79675df2661d18e201a8f119d31272014",
    ),
    _Source(
        "skimage",
        "astronaut.png",
        "train",
        "photo",
        "f22309ff463ef566bffd5a41b9d9867c5fd9490e9ced354b29d4194820da2033",
    ),
    _Source(
        "skimage",
        "coffee.png",
        "train",
        "photo",
        "9597942f8acc753a928d4a1c3ee1cdb80331d7b5f2b8e62526c6bddfc7804019",
    ),
    _Source(
        "skimage",
        "grass.png",
        "train",
        "photo",
        "c7ca5c984d6b5a2787506e70a42bcac22b164b00e8e1cf9e06cf76b8110c5734",
    ),
    _Source(
        "skimage",
        "hubble_deep_field.jpg",
        "train",
        "photo",
        "7a7fe69a23e0b625eb7d03aed7e32d29a3dd58f656726288410c9d6ac63da21b",
    ),
    _Source(
        "deepforest",
        "OSBS_029.png",
        "dev",
        "aerial",
        "b25a74b6d62e46a9d870b26935475a2ea9a3e3ced2bbdbb6a922e4d77b9ff57d",
    ),
    _Source(
        "deepforest",
        "SOAP_031.png",
        "dev",
        "aerial",
        "5ada36f2b6eae85da1bc8d4749f912946831f1cb683ce2e61ba7c86fe2cfda49",
    ),
    _Source(
        "skimage",
        "chelsea.png",
        "dev",
        "photo",
        "2ae870185ec12f23e7f636043c834cdebe3f2a836d0769157047d4fcc3bb71f0",
    ),
    _Source(
        "skimage",
        "brick.png",
        "dev",
        "photo",
        "3501e216fb0968c378803347d3a13e3cc04021eaecc44b64c6528088c7ea0f64",
    ),
    _Source(
        "deepforest",
        "2019_YELL_2_541000_4977000_image_crop.png",
        "test",
        "aerial",
        "3126d06190f59f9b3d0faba865c2bdeb1a594ade747e5c046eea2cfef788a7fb",
    ),
    _Source(
        "deepforest",
        "SOAP_061.png",
        "test",
        "aerial",
        "196b1717dc989b17d293b3c5aea038fe257174f199e3736307a4344a89a7f956",
    ),
    _Source(
        "matplotlib",
        "grace_hopper.jpg",
        "test",
        "photo",
        "68064866c3304520edaae44e2609502a792e397a51c0a391e6f95a7aae64016c",
    ),
    _Source(
        "skimage",
        "rocket.jpg",
        "test",
        "photo",
        "8041b9cae11b2b6b738cb760f90f58da354f006cbbd6ac2dc08d486af84c2f3c",
    ),
    _Source(
        "skimage",
        "gravel.png",
        "test",
        "photo",
        "e73bd88250cbfd7f96f232357ecad0d2302252483457337f5cf79d2c5b82227a",
    ),
)


@dataclass(frozen=True)
class Background:
    """A decoded background photo: ``name``, ``group`` ("aerial" / "photo"), ``image``
    ((H, W, 3) uint8 BGR)."""

    name: str
    group: str
    image: np.ndarray


def pixels_sha256(image):
    """Hex sha256 of an array's bytes (C order)."""
    return hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()


def load_backgrounds(sources=BACKGROUNDS):
    """Decode the background photos and check them against their pixel sha256.

    Returns:
        dict split -> list of :class:`Background`, in the order of ``sources``.
    """
    out = {}
    for src in sources:
        spec = importlib.util.find_spec(src.package)
        if spec is None or not spec.submodule_search_locations:
            raise BackgroundError(
                f"The proving-ground backgrounds include {src.path} of the package "
                f"{src.package!r}, which is not installed: `pip install {_PIP_NAMES[src.package]}` "
                f"(only its data files are read)."
            )
        folder = os.path.join(list(spec.submodule_search_locations)[0], _DATA_DIRS[src.package])
        path = os.path.join(folder, src.path)
        image = cv2.imread(path, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        if image is None:
            raise BackgroundError(f"Background photo {path} is missing or not decodable.")
        actual = pixels_sha256(image)
        if src.pixels_sha256 and actual != src.pixels_sha256:
            raise BackgroundError(
                f"Background photo {path} decodes to pixels with sha256 {actual}, expected "
                f"{src.pixels_sha256}: this version of {src.package!r} ships another photo, or "
                f"this OpenCV decodes it differently. Install the version the set is pinned "
                f"to (see datasets/README.md)."
            )
        out.setdefault(src.split, []).append(Background(src.name, src.group, image))
    return out


def background_crop(rng, backgrounds, size):
    """Draw a background for one image: a group (1/2 each when the split has both), a photo
    of that group, a ``size`` x ``size`` crop and a transform (``t & 1``: left-right flip,
    ``t >> 1``: quarter turns; aerial 0-7, photo 0-1).

    Returns:
        (crop (size, size, 3) uint8, photo name, [x0, y0, x1, y1] in the photo, transform).
    """
    groups = sorted({b.group for b in backgrounds})
    group = groups[rng.randint(len(groups), dtype=np.int64)]
    members = [b for b in backgrounds if b.group == group]
    bg = members[rng.randint(len(members), dtype=np.int64)]
    h, w = bg.image.shape[:2]
    if h < size or w < size:
        raise BackgroundError(f"background {bg.name} ({w}x{h}) is smaller than {size} px")
    y0 = int(rng.randint(h - size + 1, dtype=np.int64))
    x0 = int(rng.randint(w - size + 1, dtype=np.int64))
    transform = int(rng.randint(8 if group == "aerial" else 2, dtype=np.int64))
    crop = bg.image[y0 : y0 + size, x0 : x0 + size]
    crop = np.rot90(crop[:, ::-1] if transform & 1 else crop, transform >> 1)
    return np.ascontiguousarray(crop), bg.name, [x0, y0, x0 + size, y0 + size], transform
