"""Data layer: DeepForest conversion, registration from the config, class counts, loaders.

CPU only. The DeepForest set is generated twice, into temporary folders (about 2 s); the
default names are registered here but never loaded.
"""

import importlib.util
import json
import os
import threading

import cv2
import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances

import lgdkd.data.deepforest as df
import lgdkd.data.deepforest_dev as dfdev
from lgdkd.config import get_cfg
from lgdkd.data import (
    NUM_CLASSES_KEYS,
    CheckedDatasetMapper,
    DatasetError,
    DeepForestError,
    ImageReadError,
    ImageSizeMismatchError,
    apply_num_classes,
    build_test_loader,
    num_classes_of,
    read_coco_categories,
    register_coco_format,
    register_datasets_from_cfg,
    register_deepforest,
)
from lgdkd.data.generated import publish_folder
from lgdkd.data.toy import TOY_CLASSES, make_toy_coco
from lgdkd.engine.trainer import Trainer

needs_wheel = pytest.mark.skipif(
    importlib.util.find_spec("deepforest") is None,
    reason="the deepforest wheel is not installed (bash tools/setup_env.sh)",
)
TRAIN_SCENES = {"2019_YELL_2_528000_4978000_image_crop2"}
VAL_SCENES = {"2019_YELL_2_541000_4977000_image_crop", "OSBS_029", "SOAP_061"}


def _load_json(dataset_dir, split):
    with open(os.path.join(dataset_dir, "annotations", f"deepforest_{split}.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def df_root(tmp_path_factory):
    """A data sets root prepared by two threads at once (the lock makes one of them wait),
    with a stale temporary folder that the preparation removes."""
    if importlib.util.find_spec("deepforest") is None:
        pytest.skip("the deepforest wheel is not installed (bash tools/setup_env.sh)")
    root = str(tmp_path_factory.mktemp("d2_datasets"))
    os.makedirs(os.path.join(root, ".deepforest-tmp-left-by-a-killed-run"))
    results, errors = [], []

    def prepare():
        try:
            results.append(df.prepare_deepforest(root))
        except Exception as e:  # surfaced by the test below
            errors.append(e)

    threads = [threading.Thread(target=prepare) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert results == [os.path.join(root, "deepforest")] * 2
    return root


# --------------------------------------------------------------------------------------------
# DeepForest
# --------------------------------------------------------------------------------------------
@needs_wheel
def test_prepare_is_atomic_and_pinned(df_root):
    leftovers = [n for n in os.listdir(df_root) if n.startswith(".deepforest-tmp-")]
    assert leftovers == []
    dataset_dir = os.path.join(df_root, "deepforest")
    for split in df.DEEPFOREST_SPLITS:
        path = os.path.join(dataset_dir, "annotations", f"deepforest_{split}.json")
        assert df.sha256_file(path) == df.JSON_SHA256[split]
    df.verify_deepforest(dataset_dir)


@needs_wheel
def test_conversion_is_deterministic(df_root, tmp_path):
    paths = df.convert_deepforest(str(tmp_path / "again"))
    for split, path in paths.items():
        with open(path, "rb") as f:
            again = f.read()
        first_path = os.path.join(df_root, "deepforest", "annotations", os.path.basename(path))
        with open(first_path, "rb") as f:
            assert f.read() == again
        assert df.sha256_file(path) == df.JSON_SHA256[split]


@needs_wheel
def test_split_is_by_scene(df_root):
    dataset_dir = os.path.join(df_root, "deepforest")
    train, val = _load_json(dataset_dir, "train"), _load_json(dataset_dir, "val")
    assert {im["scene"] for im in train["images"]} == TRAIN_SCENES
    assert {im["scene"] for im in val["images"]} == VAL_SCENES
    train_files = {im["file_name"] for im in train["images"]}
    val_files = {im["file_name"] for im in val["images"]}
    assert not train_files & val_files
    for im in train["images"] + val["images"]:
        assert im["file_name"].startswith(im["scene"] + "_x")
    assert sorted(os.listdir(os.path.join(dataset_dir, "train"))) == sorted(train_files)
    assert sorted(os.listdir(os.path.join(dataset_dir, "val"))) == sorted(val_files)


@needs_wheel
def test_box_statistics_and_bounds(df_root):
    dataset_dir = os.path.join(df_root, "deepforest")
    stats = df.deepforest_statistics(dataset_dir)
    assert (stats["train"]["tiles"], stats["train"]["boxes"]) == (64, 1041)
    assert (stats["val"]["tiles"], stats["val"]["boxes"]) == (14, 377)
    assert stats["train"]["empty_tiles"] <= 5 and stats["val"]["empty_tiles"] == 0
    for split in df.DEEPFOREST_SPLITS:
        s = stats[split]
        for side in ("width", "height"):
            lo, med, hi = s[side]
            assert df.MIN_BOX_SIDE <= lo <= med <= hi <= df.TILE_SIZE
            assert 20 <= med <= 60 and hi <= 120
        coco = _load_json(dataset_dir, split)
        assert coco["categories"] == [{"id": 1, "name": "Tree", "supercategory": "plant"}]
        images = {im["id"]: im for im in coco["images"]}
        for im in coco["images"]:
            assert max(im["width"], im["height"]) <= df.TILE_SIZE
            x0, y0, x1, y1 = im["scene_box"]
            assert (x1 - x0, y1 - y0) == (im["width"], im["height"])
            tile = cv2.imread(os.path.join(dataset_dir, split, im["file_name"]))
            assert tile.shape == (im["height"], im["width"], 3)
        for a in coco["annotations"]:
            im = images[a["image_id"]]
            x, y, w, h = a["bbox"]
            assert a["category_id"] == 1 and a["iscrowd"] == 0
            assert x >= 0 and y >= 0 and x + w <= im["width"] and y + h <= im["height"]
            assert min(w, h) >= df.MIN_BOX_SIDE and a["area"] == w * h
    labels = [a["source_label"] for a in _load_json(dataset_dir, "val")["annotations"]]
    assert (labels.count("Alive"), labels.count("Dead")) == (9, 28)


def test_tiling_windows():
    train = df.sliding_windows(2299, 400, 300)
    assert train[0] == (0, 400) and train[-1] == (1899, 2299) and len(train) == 8
    assert all(e - s == 400 for s, e in train)
    assert [s for s, _ in train[:-1]] == list(range(0, 2100, 300))
    assert df.sliding_windows(350, 400, 300) == [(0, 350)]
    assert df.sliding_windows(400, 400, 300) == [(0, 400)]
    grid = df.grid_windows(1249, 400)
    assert grid == [(0, 312), (312, 624), (624, 936), (936, 1249)]
    assert df.grid_windows(400, 400) == [(0, 400)]
    assert df.grid_windows(1035, 400) == [(0, 345), (345, 690), (690, 1035)]


def test_clipping_rule():
    boxes = np.array(
        [
            [10, 10, 30, 30],  # inside
            [390, 10, 410, 30],  # half outside: 50% visible, kept
            [392, 10, 412, 30],  # 40% visible: dropped
            [-30, 10, 1, 40],  # 1 px visible: dropped
            [500, 500, 520, 520],  # elsewhere
        ],
        dtype=np.float64,
    )
    kept, idx = df.clip_boxes_to_tile(boxes, (0, 0, 400, 400))
    assert idx.tolist() == [0, 1]
    assert kept.tolist() == [[10, 10, 30, 30], [390, 10, 400, 30]]
    kept, idx = df.clip_boxes_to_tile(boxes, (400, 0, 800, 400))
    assert idx.tolist() == [1, 2] and kept[:, 0].tolist() == [0, 0]


@needs_wheel
def test_registered_names_load(df_root):
    names = register_deepforest(df_root, prefix="dftest")
    assert names == ("dftest_train", "dftest_val")
    assert register_deepforest(df_root, prefix="dftest") == names
    for name in names:
        meta = MetadataCatalog.get(name)
        assert meta.thing_classes == ["Tree"] and meta.evaluator_type == "coco"
    val = DatasetCatalog.get("dftest_val")
    assert len(val) == 14 and sum(len(d["annotations"]) for d in val) == 377
    assert all(os.path.isfile(d["file_name"]) for d in val)
    cfg = get_cfg()
    cfg.INPUT.MIN_SIZE_TRAIN = (400,)
    mapped = CheckedDatasetMapper(cfg, True)(val[0])
    assert mapped["image"].shape[0] == 3
    assert len(mapped["instances"]) == len(val[0]["annotations"])
    with pytest.raises(DeepForestError, match="already registered"):
        register_deepforest(os.path.join(df_root, "elsewhere"), prefix="dftest")


@needs_wheel
def test_dev_split_is_carved_from_the_training_scene_without_shared_pixels(df_root, tmp_path):
    folder = dfdev.prepare_deepforest_dev(df_root)
    assert folder == os.path.join(df_root, "deepforest_dev")
    assert [n for n in os.listdir(df_root) if n.startswith(".deepforest_dev-tmp-")] == []
    traindev = _load_json(folder, "traindev")
    dev = _load_json(folder, "dev")
    train = _load_json(os.path.join(df_root, "deepforest"), "train")
    # traindev: the training tiles wholly above the cut, with their own annotations
    above = [im for im in train["images"] if im["scene_box"][3] <= dfdev.DEV_BAND_TOP]
    assert traindev["images"] == above and len(above) == 40
    ids = {im["id"] for im in above}
    assert traindev["annotations"] == [a for a in train["annotations"] if a["image_id"] in ids]
    # dev: a non-overlapping grid below the cut, every tile written, boxes inside their tile
    boxes = [im["scene_box"] for im in dev["images"]]
    assert len(boxes) == 12 and min(b[1] for b in boxes) == dfdev.DEV_BAND_TOP
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            assert min(a[2], b[2]) <= max(a[0], b[0]) or min(a[3], b[3]) <= max(a[1], b[1])
    assert max(im["scene_box"][3] for im in traindev["images"]) <= dfdev.DEV_BAND_TOP
    assert sorted(os.listdir(os.path.join(folder, "dev"))) == sorted(
        im["file_name"] for im in dev["images"]
    )
    sizes = {im["id"]: (im["width"], im["height"]) for im in dev["images"]}
    for a in dev["annotations"]:
        x, y, w, h = a["bbox"]
        W, H = sizes[a["image_id"]]
        assert 0 <= x and 0 <= y and x + w <= W and y + h <= H and min(w, h) >= df.MIN_BOX_SIDE
    assert len(dev["annotations"]) == 193
    # pinned and deterministic
    paths = dfdev.make_dev_split(str(tmp_path / "again"), os.path.join(df_root, "deepforest"))
    for split, path in paths.items():
        assert df.sha256_file(path) == dfdev.JSON_SHA256[split]
    # registered names load, from the right image folders
    names = dfdev.register(df_root, prefix="dfdevtest")
    assert names == ("dfdevtest_traindev", "dfdevtest_dev")
    loaded = {n: DatasetCatalog.get(n) for n in names}
    assert len(loaded["dfdevtest_dev"]) == 12 and len(loaded["dfdevtest_traindev"]) == 40
    assert all(os.path.isfile(d["file_name"]) for n in names for d in loaded[n])
    # a modified file is a clear error
    with open(os.path.join(folder, "annotations", "deepforest_dev.json"), "ab") as f:
        f.write(b" ")
    with pytest.raises(DeepForestError, match="was modified"):
        dfdev.prepare_deepforest_dev(df_root)


def test_default_names_are_registered_lazily(tmp_path):
    register_datasets_from_cfg(get_cfg())
    for name in ("deepforest_train", "deepforest_val", "deepforest_traindev", "deepforest_dev"):
        assert name in DatasetCatalog.list()
        assert MetadataCatalog.get(name).thing_classes == ["Tree"]
        assert num_classes_of(name) == 1
    # the generated toy set of configs/quick_schedules: its files appear on first load only,
    # so its names pass the start-up check without them
    cfg = _cfg("DATASETS.TRAIN", '("lgdkd_toy_train",)', "DATASETS.TEST", '("lgdkd_toy_val",)')
    register_datasets_from_cfg(cfg)  # idempotent
    assert num_classes_of("lgdkd_toy_train") == len(TOY_CLASSES)
    root = str(tmp_path / "not_yet")
    register_deepforest(root, prefix="dflazy")
    assert not os.path.exists(root)


def _copy_with_tampered_json(df_root, dst):
    """``dst/deepforest`` with symlinked tiles and a train json that differs by one byte."""
    src = os.path.join(df_root, "deepforest")
    out = os.path.join(dst, "deepforest")
    os.makedirs(os.path.join(out, "annotations"))
    for split in df.DEEPFOREST_SPLITS:
        os.symlink(os.path.join(src, split), os.path.join(out, split))
        with open(os.path.join(src, "annotations", f"deepforest_{split}.json"), "rb") as f:
            data = f.read()
        if split == "train":
            data = data.replace(b'"iscrowd":0', b'"iscrowd":1', 1)
        with open(os.path.join(out, "annotations", f"deepforest_{split}.json"), "wb") as f:
            f.write(data)
    return out


@needs_wheel
def test_json_checksum_mismatch_is_a_clear_error(df_root, tmp_path):
    out = _copy_with_tampered_json(df_root, str(tmp_path))
    with pytest.raises(DeepForestError, match=r"deepforest_train\.json has sha256") as e:
        df.verify_deepforest(out)
    assert f"Delete {out}" in str(e.value) and df.DEEPFOREST_WHEEL in str(e.value)
    with pytest.raises(DeepForestError, match="sha256"):
        df.prepare_deepforest(str(tmp_path))
    register_deepforest(str(tmp_path), prefix="dftampered")
    with pytest.raises(DeepForestError, match="sha256"):
        DatasetCatalog.get("dftampered_train")


@needs_wheel
def test_missing_tile_is_a_clear_error(df_root, tmp_path):
    out = tmp_path / "deepforest"
    (out / "annotations").mkdir(parents=True)
    (out / "train").mkdir()
    (out / "val").mkdir()
    for split in df.DEEPFOREST_SPLITS:
        name = f"deepforest_{split}.json"
        with open(os.path.join(df_root, "deepforest", "annotations", name), "rb") as f:
            (out / "annotations" / name).write_bytes(f.read())
    with pytest.raises(DeepForestError, match=r"64 tile\(s\) of train are missing"):
        df.verify_deepforest(str(out))


@needs_wheel
def test_source_checksum_mismatch(tmp_path):
    source = df.deepforest_source_dir()
    fake = tmp_path / "data"
    fake.mkdir()
    for name in os.listdir(source):
        if name != "SOAP_061.xml":
            os.symlink(os.path.join(source, name), fake / name)
    with open(os.path.join(source, "SOAP_061.xml")) as f:
        (fake / "SOAP_061.xml").write_text(f.read().replace("Dead", "Alive"))
    with pytest.raises(DeepForestError, match=r"SOAP_061\.xml has sha256") as e:
        df.convert_deepforest(str(tmp_path / "out"), source_dir=str(fake))
    assert df.DEEPFOREST_WHEEL in str(e.value)


def test_missing_wheel_is_a_clear_error(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "deepforest" else real(n, *a)
    )
    with pytest.raises(DeepForestError) as e:
        df.deepforest_source_dir()
    assert "pip install --no-deps deepforest==2.1.0" in str(e.value)
    assert "bash tools/setup_env.sh" in str(e.value)
    register_deepforest(str(tmp_path), prefix="dfnowheel")
    cfg = get_cfg()
    cfg.DATASETS.TRAIN = ("dfnowheel_train",)
    with pytest.raises(DeepForestError, match="deepforest==2.1.0"):
        register_datasets_from_cfg(cfg)


# --------------------------------------------------------------------------------------------
# COCO_FORMAT registration, names, class counts
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    json_path, image_root = make_toy_coco(str(root), num_images=6, image_size=(64, 80))
    return json_path, image_root


def _cfg(*opts):
    cfg = get_cfg()
    cfg.merge_from_list(list(opts))
    return cfg


def test_coco_format_from_command_line_strings(toy):
    json_path, image_root = toy
    cfg = _cfg(
        "DATASETS.COCO_FORMAT",
        f'[["toy_cli", "{json_path}", "{image_root}"]]',
        "DATASETS.TRAIN",
        '("toy_cli",)',
        "DATASETS.TEST",
        '("toy_cli",)',
    )
    assert cfg.DATASETS.COCO_FORMAT == [["toy_cli", json_path, image_root]]
    assert "toy_cli" in register_datasets_from_cfg(cfg)
    assert MetadataCatalog.get("toy_cli").thing_classes == TOY_CLASSES
    assert MetadataCatalog.get("toy_cli").evaluator_type == "coco"
    dicts = DatasetCatalog.get("toy_cli")
    assert len(dicts) == 6 and MetadataCatalog.get("toy_cli").thing_classes == TOY_CLASSES
    register_datasets_from_cfg(cfg)  # same name, same paths: no-op
    other = make_toy_coco(os.path.join(os.path.dirname(image_root), "other"), num_images=2)
    with pytest.raises(DatasetError, match="already registered"):
        register_coco_format("toy_cli", *other)
    with pytest.raises(DatasetError, match="already registered"):
        register_coco_format("coco_2017_val", json_path, image_root)


def test_coco_format_relative_paths(toy, monkeypatch):
    json_path, image_root = toy
    monkeypatch.chdir(os.path.dirname(json_path))
    register_coco_format("toy_rel", os.path.basename(json_path), "images")
    assert MetadataCatalog.get("toy_rel").json_file == json_path
    assert MetadataCatalog.get("toy_rel").image_root == image_root


def test_registration_errors(toy, tmp_path):
    json_path, image_root = toy
    with pytest.raises(DatasetError, match=r"annotation file .*nope\.json.* not found"):
        register_coco_format("toy_e1", str(tmp_path / "nope.json"), image_root)
    with pytest.raises(DatasetError, match=r"image root .*no_images.* is not a folder"):
        register_coco_format("toy_e2", json_path, str(tmp_path / "no_images"))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"images": [], "categories": [{"id": 1, "name": "a"}]}))
    with pytest.raises(DatasetError, match=r"not a COCO detection json.*'annotations'"):
        register_coco_format("toy_e3", str(bad), image_root)
    bad.write_text("[1, 2")
    with pytest.raises(DatasetError, match="not valid json"):
        register_coco_format("toy_e4", str(bad), image_root)
    with pytest.raises(DatasetError, match="three non-empty strings"):
        register_datasets_from_cfg(_cfg("DATASETS.COCO_FORMAT", '[["toy_e5", "a.json"]]'))
    assert "toy_e1" not in DatasetCatalog.list() and "toy_e3" not in DatasetCatalog.list()


def test_unknown_name_lists_close_names():
    cfg = _cfg("DATASETS.TRAIN", '("deepforest_trian",)')
    with pytest.raises(DatasetError) as e:
        register_datasets_from_cfg(cfg)
    msg = str(e.value)
    assert "DATASETS.TRAIN names 'deepforest_trian'" in msg
    assert "deepforest_train" in msg and "DATASETS.COCO_FORMAT" in msg
    with pytest.raises(DatasetError, match="DATASETS.TEST names 'nothing_like_it'"):
        register_datasets_from_cfg(_cfg("DATASETS.TEST", '("nothing_like_it",)'))


def test_missing_builtin_coco_folder_is_a_clear_error():
    json_file = MetadataCatalog.get("coco_2017_val").json_file
    if os.path.isfile(json_file):
        pytest.skip("COCO is installed here")
    with pytest.raises(DatasetError) as e:
        register_datasets_from_cfg(_cfg("DATASETS.TEST", '("coco_2017_val",)'))
    msg = str(e.value)
    assert "instances_val2017.json not found" in msg and "DETECTRON2_DATASETS" in msg


def test_read_coco_categories_by_scanning(toy, tmp_path):
    json_path, _ = toy
    parsed = read_coco_categories(json_path)
    assert [c["name"] for c in parsed] == TOY_CLASSES
    assert read_coco_categories(json_path, full_parse_max_bytes=0) == parsed
    with open(json_path) as f:
        data = json.load(f)
    data["info"] = {"note": '"categories": [] appears in a string', "categories": "decoy"}
    decoy = tmp_path / "decoy.json"
    decoy.write_text(json.dumps(data, indent=2))
    assert read_coco_categories(str(decoy), full_parse_max_bytes=0) == parsed
    del data["annotations"]
    decoy.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match="'annotations'"):
        read_coco_categories(str(decoy), full_parse_max_bytes=0)


def test_num_classes_of(toy):
    json_path, image_root = toy
    register_coco_instances("toy_plain_d2", {}, json_path, image_root)  # no thing_classes yet
    assert num_classes_of("toy_plain_d2") == 2
    register_coco_format("toy_n", json_path, image_root)
    assert num_classes_of("toy_n") == 2
    assert num_classes_of("coco_2017_train") == 80
    assert num_classes_of("voc_2007_trainval") == 20
    with pytest.raises(DatasetError, match="not a registered data set"):
        num_classes_of("no_such_set")


def test_apply_num_classes(toy):
    json_path, image_root = toy
    register_coco_format("toy_k", json_path, image_root)
    cfg = _cfg("DATASETS.TRAIN", '("toy_k",)', "DATASETS.TEST", '("toy_k",)')
    cfg.MODEL.DISTILL.TEACHER.OPTS = ["MODEL.RETINANET.NUM_CLASSES", "80"]
    cfg.freeze()
    assert apply_num_classes(cfg) == 2
    assert cfg.is_frozen()
    assert len(NUM_CLASSES_KEYS) == 5  # RetinaNet, R-CNN, FCOS, GFL, PAA
    for key in NUM_CLASSES_KEYS:
        node = cfg
        for part in key.split("."):
            node = node[part]
        assert node == 2, key
    assert cfg.MODEL.DISTILL.TEACHER.OPTS == ["MODEL.RETINANET.NUM_CLASSES", "80"]

    off = _cfg("DATASETS.TRAIN", '("toy_k",)', "DATASETS.NUM_CLASSES_FROM_DATA", "False")
    assert apply_num_classes(off) is None and off.MODEL.RETINANET.NUM_CLASSES == 80

    no_fcos = _cfg("DATASETS.TRAIN", '("toy_k",)')
    del no_fcos.MODEL["FCOS"]
    assert apply_num_classes(no_fcos) == 2 and no_fcos.MODEL.ROI_HEADS.NUM_CLASSES == 2

    test_only = _cfg("DATASETS.TEST", '("deepforest_val",)')
    register_deepforest()
    assert apply_num_classes(test_only) == 1

    mixed = _cfg("DATASETS.TRAIN", '("toy_k", "deepforest_train")')
    with pytest.raises(DatasetError, match="different class counts") as e:
        apply_num_classes(mixed)
    assert "'toy_k' (2 classes" in str(e.value) and "'deepforest_train' (1 class" in str(e.value)
    wrong_test = _cfg("DATASETS.TRAIN", '("toy_k",)', "DATASETS.TEST", '("deepforest_val",)')
    with pytest.raises(DatasetError, match="evaluation needs the same classes"):
        apply_num_classes(wrong_test)


# --------------------------------------------------------------------------------------------
# Mapper and loaders
# --------------------------------------------------------------------------------------------
def _small_cfg(train=(), test=(), **extra):
    cfg = get_cfg()
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = tuple(train), tuple(test)
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.INPUT.MIN_SIZE_TRAIN = (64,)
    cfg.INPUT.MAX_SIZE_TRAIN = 100
    cfg.INPUT.MIN_SIZE_TEST = 64
    cfg.INPUT.MAX_SIZE_TEST = 100
    for k, v in extra.items():
        cfg.merge_from_list([k, v])
    return cfg


def test_bad_images_name_the_file(tmp_path):
    json_path, image_root = make_toy_coco(str(tmp_path), num_images=4, image_size=(64, 80))
    register_coco_format("toy_bad", json_path, image_root)
    dicts = DatasetCatalog.get("toy_bad")
    mapper = CheckedDatasetMapper(_small_cfg(), True)
    assert mapper(dicts[1])["image"].shape == (3, 64, 80)

    with open(dicts[1]["file_name"], "wb") as f:
        f.write(os.urandom(300))
    with pytest.raises(ImageReadError) as e:
        mapper(dicts[1])
    msg = str(e.value)
    assert "toy_0001.png" in msg and "image_id=2" in msg and "remove the record" in msg

    with open(dicts[2]["file_name"], "rb") as f:
        data = f.read()
    with open(dicts[2]["file_name"], "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match=r"toy_0002\.png.*image_id=3"):
        mapper(dicts[2])

    os.remove(dicts[3]["file_name"])
    with pytest.raises(ImageReadError, match=r"toy_0003\.png.*FileNotFoundError"):
        CheckedDatasetMapper(_small_cfg(), False)(dicts[3])

    wrong = dict(dicts[0], width=81)
    with pytest.raises(ImageSizeMismatchError, match=r"toy_0000\.png.*image_id=1"):
        mapper(wrong)


def _train_loader(cfg):
    """The engine's training loader (lgdkd's dicts and checked mapper) at a fixed seed."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.SEED = 1
    return Trainer.build_train_loader(cfg)


def test_train_set_without_boxes(tmp_path):
    json_path, image_root = make_toy_coco(str(tmp_path), num_images=3, empty_every=1)
    register_coco_format("toy_empty", json_path, image_root)
    with pytest.raises(DatasetError, match="FILTER_EMPTY_ANNOTATIONS=True removes them all"):
        _train_loader(_small_cfg(train=["toy_empty"]))
    cfg = _small_cfg(train=["toy_empty"], **{"DATALOADER.FILTER_EMPTY_ANNOTATIONS": "False"})
    batch = next(iter(_train_loader(cfg)))
    assert len(batch) == 2 and all(len(d["instances"]) == 0 for d in batch)


def test_loaders(toy):
    json_path, image_root = toy
    register_coco_format("toy_loader", json_path, image_root)
    cfg = _small_cfg(train=["toy_loader"], test=["toy_loader"])
    batch = next(iter(_train_loader(cfg)))
    assert len(batch) == 2
    assert all(len(d["instances"]) > 0 for d in batch)  # empty images are filtered
    test = list(build_test_loader(cfg, "toy_loader"))
    assert len(test) == 6 and all("instances" not in d[0] for d in test)


def test_publish_folder_builds_once_replaces_on_request_and_cleans_up(tmp_path):
    folder = str(tmp_path / "set")
    calls = []

    def build(tmp, text="a"):
        calls.append(tmp)
        assert oct(os.stat(tmp).st_mode & 0o777) == oct(0o755)
        with open(os.path.join(tmp, "f.txt"), "w") as f:
            f.write(text)

    os.makedirs(tmp_path / ".set-tmp-left-by-a-killed-build")
    publish_folder(folder, build)
    publish_folder(folder, build)  # exists: not built again
    assert len(calls) == 1 and open(os.path.join(folder, "f.txt")).read() == "a"
    publish_folder(folder, lambda tmp: build(tmp, "b"), replace=True)
    assert open(os.path.join(folder, "f.txt")).read() == "b"

    def failing(tmp):
        build(tmp, "c")
        raise RuntimeError("build failed")

    with pytest.raises(RuntimeError, match="build failed"):
        publish_folder(folder, failing, replace=True)
    assert open(os.path.join(folder, "f.txt")).read() == "b"  # the old set stays
    assert sorted(os.listdir(tmp_path)) == [".set.lock", "set"]
