"""Data sets from the config: registration, eager checks and the class count.

- :func:`register_datasets_from_cfg` registers the embedded DeepForest sets, the proving
  ground, the toy sets and every ``DATASETS.COCO_FORMAT`` entry, then checks that each name
  of ``DATASETS.TRAIN`` / ``DATASETS.TEST`` is registered and that its files are where the
  catalog says.
  detectron2's builtin COCO / VOC / LVIS / Cityscapes names are registered by detectron2
  itself (under ``$DETECTRON2_DATASETS``) and only checked here.
- :func:`num_classes_of` reads a set's class count without loading its annotations.
- :func:`apply_num_classes` writes that count into every class-count key of the model.
"""

import difflib
import json
import os

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances

from .deepforest import check_deepforest_available, register_deepforest
from .deepforest_dev import register as register_deepforest_dev
from .errors import DatasetError
from .generated import default_datasets_root
from .proving_ground import check_proving_ground_available, register_proving_ground
from .toy import register_builtin_toy

__all__ = [
    "NUM_CLASSES_KEYS",
    "DatasetError",
    "apply_num_classes",
    "check_datasets",
    "num_classes_of",
    "read_coco_categories",
    "register_coco_format",
    "register_datasets_from_cfg",
]

# Every config key that holds the number of (foreground) classes of a detector. Detectors
# added later (GFL, PAA, ...) append their key here; keys absent from a config are skipped.
NUM_CLASSES_KEYS = (
    "MODEL.RETINANET.NUM_CLASSES",
    "MODEL.ROI_HEADS.NUM_CLASSES",
    "MODEL.FCOS.NUM_CLASSES",
    "MODEL.GFL.NUM_CLASSES",
    "MODEL.PAA.NUM_CLASSES",
)

# COCO json files up to this size are parsed completely to be validated; larger ones
# (COCO train2017: 450 MB) are scanned for their top-level keys and only the "categories"
# list is decoded, so start-up does not pay a second full load.
FULL_PARSE_MAX_BYTES = 32 << 20
_COCO_KEYS = ("images", "annotations", "categories")
_HOW_TO_REGISTER = (
    "Register a COCO-format set from the config or the command line with "
    'DATASETS.COCO_FORMAT \'[["name", "path/to/annotations.json", "path/to/images"]]\' '
    "(see datasets/README.md)."
)


# Names registered by detectron2 itself (COCO, LVIS, VOC, Cityscapes, ADE20K under
# $DETECTRON2_DATASETS), taken when detectron2.data has just been imported. Only these have
# their files checked before loading: other sets may create their files on first load.
_D2_BUILTIN_NAMES = frozenset(DatasetCatalog.list())


# --------------------------------------------------------------------------------------------
# COCO json headers
# --------------------------------------------------------------------------------------------
_categories_cache = {}


def read_coco_categories(json_file, full_parse_max_bytes=None):
    """The ``categories`` list of a COCO json, after checking that it is a COCO file.

    Small files are parsed fully; files over ``full_parse_max_bytes`` (default
    :data:`FULL_PARSE_MAX_BYTES`) are scanned for the ``"images"``, ``"annotations"`` and
    ``"categories"`` keys and only the categories list is decoded. Results are cached by
    (path, size, mtime).

    Returns:
        list of category dicts, each with an int ``"id"`` and a str ``"name"``.
    """
    limit = FULL_PARSE_MAX_BYTES if full_parse_max_bytes is None else full_parse_max_bytes
    path = os.path.abspath(json_file)
    st = os.stat(path)
    key = (path, st.st_size, st.st_mtime_ns, st.st_size <= limit)
    if key not in _categories_cache:
        if st.st_size <= limit:
            categories = _categories_by_parsing(path)
        else:
            categories = _categories_by_scanning(path)
        _check_categories(path, categories)
        _categories_cache[key] = categories
    return [dict(c) for c in _categories_cache[key]]


def _not_coco(path, why):
    return DatasetError(
        f"{path} is not a COCO detection json ({why}). A COCO json is an object with "
        f'"images" (id, file_name, height, width), "annotations" (image_id, category_id, '
        f'bbox [x, y, w, h], iscrowd) and "categories" (id, name).'
    )


def _categories_by_parsing(path):
    try:
        with open(path, "rb") as f:
            data = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise _not_coco(path, f"not valid json: {e}") from e
    if not isinstance(data, dict):
        raise _not_coco(path, f"top level is a {type(data).__name__}, not an object")
    missing = [k for k in _COCO_KEYS if k not in data]
    if missing:
        raise _not_coco(path, f"missing key(s) {missing}; it has {sorted(data)[:10]}")
    for k in _COCO_KEYS:
        if not isinstance(data[k], list):
            raise _not_coco(path, f'"{k}" is a {type(data[k]).__name__}, not a list')
    return data["categories"]


def _categories_by_scanning(path, chunk_size=16 << 20):
    """Find ``"<key>": [`` for the three COCO keys in a large file; decode the categories."""
    found = {}
    with open(path, "rb") as f:
        offset, tail = 0, b""
        while len(found) < len(_COCO_KEYS):
            chunk = f.read(chunk_size)
            if not chunk:
                break
            buf = tail + chunk
            base = offset - len(tail)
            for k in _COCO_KEYS:
                if k not in found:
                    pos = _find_key(buf, k)
                    if pos is not None:
                        found[k] = base + pos
            offset += len(chunk)
            tail = buf[-64:]
        missing = [k for k in _COCO_KEYS if k not in found]
        if missing:
            raise _not_coco(path, f"no top-level key(s) {missing} found")
        decoder = json.JSONDecoder()
        size = 1 << 20
        while True:
            f.seek(found["categories"])
            text = f.read(size).decode("utf-8", errors="replace")
            try:
                categories, _ = decoder.raw_decode(text)
                return categories
            except ValueError:
                if len(text.encode("utf-8")) < size or size >= 256 << 20:
                    raise _not_coco(path, '"categories" is not a readable json list') from None
                size *= 4


def _find_key(buf, key):
    """Offset of the ``[`` that opens ``"key": [`` in ``buf``, or None."""
    needle = b'"' + key.encode() + b'"'
    start = 0
    while True:
        i = buf.find(needle, start)
        if i < 0:
            return None
        j = i + len(needle)
        while j < len(buf) and buf[j : j + 1] in b" \t\r\n":
            j += 1
        if buf[j : j + 1] == b":":
            j += 1
            while j < len(buf) and buf[j : j + 1] in b" \t\r\n":
                j += 1
            if buf[j : j + 1] == b"[":
                return j
        start = i + 1


def _check_categories(path, categories):
    if not isinstance(categories, list) or not categories:
        raise _not_coco(path, '"categories" is empty: a detector needs at least one class')
    for c in categories:
        if not (isinstance(c, dict) and isinstance(c.get("id"), int) and "name" in c):
            raise _not_coco(path, f"category {c!r} has no int 'id' and 'name'")
    ids = [c["id"] for c in categories]
    if len(set(ids)) != len(ids):
        raise _not_coco(path, f"category ids repeat: {sorted(ids)}")


# --------------------------------------------------------------------------------------------
# Registration
# --------------------------------------------------------------------------------------------
def register_coco_format(name, json_file, image_root):
    """Register a COCO-format detection set (checked now, loaded lazily by detectron2).

    Relative paths are resolved from the current directory. Registering the same name with
    the same paths again is a no-op; with other paths it is an error.

    Returns:
        ``name``.
    """
    where = f"DATASETS.COCO_FORMAT entry {name!r}"
    json_abs = os.path.abspath(os.path.expanduser(json_file))
    root_abs = os.path.abspath(os.path.expanduser(image_root))
    if not os.path.isfile(json_abs):
        raise DatasetError(
            f"{where}: annotation file {json_file!r} not found (looked for {json_abs}; "
            f"relative paths are resolved from the current directory {os.getcwd()})."
        )
    if not os.path.isdir(root_abs):
        raise DatasetError(
            f"{where}: image root {image_root!r} is not a folder (looked for {root_abs}; "
            f"relative paths are resolved from the current directory {os.getcwd()}). It is the "
            f"folder that the json's image file_name values are relative to."
        )
    categories = read_coco_categories(json_abs)
    if name in DatasetCatalog.list():
        meta = MetadataCatalog.get(name)
        old = (getattr(meta, "json_file", None), getattr(meta, "image_root", None))
        if old == (json_abs, root_abs):
            return name
        raise DatasetError(
            f"{where}: the name is already registered with json {old[0]} and image root "
            f"{old[1]}; choose another name (builtin names such as coco_2017_train are taken)."
        )
    register_coco_instances(name, {}, json_abs, root_abs)
    # The same order as detectron2's load_coco_json (sorted by id), so that loading later
    # sets an equal value.
    MetadataCatalog.get(name).thing_classes = [
        c["name"] for c in sorted(categories, key=lambda c: c["id"])
    ]
    return name


def register_datasets_from_cfg(cfg, check=True):
    """Register the sets lgdkd provides and ``cfg.DATASETS.COCO_FORMAT``, then check the
    names of ``DATASETS.TRAIN`` / ``DATASETS.TEST``.

    lgdkd's own sets are registered lazily under :func:`default_datasets_root`:
    ``deepforest_train`` / ``deepforest_val``, the dev split carved from the training scene
    ``deepforest_traindev`` / ``deepforest_dev`` (:mod:`lgdkd.data.deepforest_dev`), the
    generated ``lgdkd_toy_train`` / ``lgdkd_toy_val`` of configs/quick_schedules (files made on
    first load), and
    ``proving_ground_train`` / ``_dev`` / ``_test`` (built by
    ``datasets/prepare_proving_ground.py``; loading them unbuilt is a DatasetError that names
    the command). Idempotent: call it in every process before building models or loaders.

    Args:
        check: also check that the names of DATASETS.TRAIN / TEST are registered and their
            files exist. False for configs that only describe a model (e.g. a teacher's,
            whose training data need not be on this machine).

    Returns:
        list of the names registered (or confirmed) by this call.
    """
    root = default_datasets_root()
    names = list(register_deepforest(root))
    names.extend(register_deepforest_dev(root))
    names.extend(register_proving_ground(root))
    register_builtin_toy(root)
    for i, entry in enumerate(cfg.DATASETS.COCO_FORMAT):
        if not (
            isinstance(entry, (list, tuple))
            and len(entry) == 3
            and all(isinstance(v, str) and v for v in entry)
        ):
            raise DatasetError(
                f"DATASETS.COCO_FORMAT[{i}] is {entry!r}; each entry must be "
                f'["name", "annotations.json", "image_root"] (three non-empty strings).'
            )
        names.append(register_coco_format(*entry))
    if check:
        check_datasets(cfg.DATASETS.TRAIN, "DATASETS.TRAIN")
        check_datasets(cfg.DATASETS.TEST, "DATASETS.TEST")
    return names


def check_datasets(names, option="DATASETS.TRAIN"):
    """Raise DatasetError for a name that is not registered or whose files are missing.

    Files are checked without loading for detectron2's builtin names (COCO-style
    ``json_file`` / ``image_root`` metadata, VOC-style ``dirname``), for DeepForest
    (generated on first load: the wheel must then be installed) and for the proving ground
    (built by its command, which the error names). ``DATASETS.COCO_FORMAT`` sets were
    checked when registered; other sets are checked by their own loader.
    """
    registered = DatasetCatalog.list()
    for name in names:
        if name not in registered:
            close = difflib.get_close_matches(name, registered, n=5, cutoff=0.5)
            hint = f" Close registered names: {close}." if close else ""
            raise DatasetError(
                f"{option} names {name!r}, which is not a registered data set.{hint} "
                f"{_HOW_TO_REGISTER}"
            )
        _check_files(name)


def _d2_root_hint():
    env = os.environ.get("DETECTRON2_DATASETS")
    now = f"DETECTRON2_DATASETS={env}" if env else "DETECTRON2_DATASETS is not set"
    return (
        f"detectron2's builtin data sets live under $DETECTRON2_DATASETS (default: "
        f"'datasets' relative to the current directory {os.getcwd()}; now {now}). Set "
        f"DETECTRON2_DATASETS to the folder that holds coco/, VOC2007/, ... before starting, "
        f"see datasets/README.md for the layout."
    )


def _check_files(name):
    meta = MetadataCatalog.get(name)
    if hasattr(meta, "deepforest_root"):
        check_deepforest_available(meta.deepforest_root)
        return
    if hasattr(meta, "proving_ground_root"):
        check_proving_ground_available(meta.proving_ground_root)
        return
    if name not in _D2_BUILTIN_NAMES:
        return
    json_file = getattr(meta, "json_file", None)
    if json_file is not None:
        if not os.path.isfile(json_file):
            raise DatasetError(
                f"Data set {name!r}: annotation file {os.path.abspath(json_file)} not found. "
                f"{_d2_root_hint()}"
            )
        image_root = getattr(meta, "image_root", None)
        if image_root is not None and not os.path.isdir(image_root):
            raise DatasetError(
                f"Data set {name!r}: image folder {os.path.abspath(image_root)} not found. "
                f"{_d2_root_hint()}"
            )
    dirname = getattr(meta, "dirname", None)
    split = getattr(meta, "split", None)
    if dirname is not None and split is not None:
        list_file = os.path.join(dirname, "ImageSets", "Main", split + ".txt")
        if not os.path.isfile(list_file):
            raise DatasetError(
                f"Data set {name!r} (Pascal VOC layout): {os.path.abspath(list_file)} not "
                f"found; expected {os.path.abspath(dirname)} with Annotations/, JPEGImages/ "
                f"and ImageSets/Main/. {_d2_root_hint()}"
            )


# --------------------------------------------------------------------------------------------
# Class count
# --------------------------------------------------------------------------------------------
def num_classes_of(dataset_name):
    """Number of (thing) classes of a registered set, without loading its annotations.

    Uses the ``thing_classes`` metadata when set (DeepForest, builtin COCO/VOC/LVIS, sets
    registered by :func:`register_coco_format`), else the ``categories`` of the set's
    ``json_file``.
    """
    if dataset_name not in DatasetCatalog.list():
        check_datasets([dataset_name], option="num_classes_of")
    meta = MetadataCatalog.get(dataset_name)
    if hasattr(meta, "thing_classes"):
        return len(meta.thing_classes)
    json_file = getattr(meta, "json_file", None)
    if json_file is not None:
        _check_files(dataset_name)
        if not os.path.isfile(json_file):
            raise DatasetError(
                f"Cannot tell the number of classes of data set {dataset_name!r}: its annotation "
                f"file {os.path.abspath(json_file)} does not exist."
            )
        return len(read_coco_categories(json_file))
    raise DatasetError(
        f"Cannot tell the number of classes of data set {dataset_name!r}: its metadata has "
        f"neither thing_classes nor json_file. Set MetadataCatalog.get({dataset_name!r})."
        f"thing_classes where it is registered, or set DATASETS.NUM_CLASSES_FROM_DATA False and "
        f"the model's NUM_CLASSES keys by hand."
    )


def _describe(name, count):
    classes = getattr(MetadataCatalog.get(name), "thing_classes", None)
    shown = "" if classes is None else f": {list(classes)[:6]}{'...' if count > 6 else ''}"
    return f"{name!r} ({count} class{'' if count == 1 else 'es'}{shown})"


def apply_num_classes(cfg):
    """Set every key of :data:`NUM_CLASSES_KEYS` present in ``cfg`` from the data.

    Does nothing when ``cfg.DATASETS.NUM_CLASSES_FROM_DATA`` is False. The count comes from
    ``DATASETS.TRAIN`` (all entries must agree), or from ``DATASETS.TEST`` for an
    evaluation-only config; TEST sets must have the same count. The teacher's config
    (MODEL.DISTILL.TEACHER) is not touched: its class count is checked when it is built.
    A frozen ``cfg`` is defrosted for the change and frozen again.

    Returns:
        the class count written, or None when nothing was done.
    """
    if not cfg.DATASETS.NUM_CLASSES_FROM_DATA:
        return None
    train, test = list(cfg.DATASETS.TRAIN), list(cfg.DATASETS.TEST)
    source = train or test
    if not source:
        return None
    counts = {name: num_classes_of(name) for name in source}
    num_classes = counts[source[0]]
    option = "DATASETS.TRAIN" if train else "DATASETS.TEST"
    if len(set(counts.values())) > 1:
        raise DatasetError(
            f"The sets of {option} have different class counts: "
            + "; ".join(_describe(n, c) for n, c in counts.items())
            + ". One model needs one label space: train on sets with the same categories."
        )
    for name in test if train else []:
        count = num_classes_of(name)
        if count != num_classes:
            raise DatasetError(
                f"DATASETS.TEST set {_describe(name, count)} differs from the training set "
                f"{_describe(source[0], num_classes)}: evaluation needs the same classes."
            )
    was_frozen = cfg.is_frozen()
    cfg.defrost()
    for key in NUM_CLASSES_KEYS:
        node = cfg
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.get(part) if node is not None else None
        if node is not None and leaf in node:
            node[leaf] = num_classes
    if was_frozen:
        cfg.freeze()
    return num_classes
