"""The proving-ground set: generator, splits, boxes, pins, items and registration.

Everything runs on items and backgrounds made here (30 items of 28x28, backgrounds of
80x96 px, images of 64 px): no apt, no network, no Fashion-MNIST files.
"""

import gzip
import hashlib
import importlib.util
import json
import os

import cv2
import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from proving_ground_fakes import make_backgrounds as _make_backgrounds
from proving_ground_fakes import make_items as _make_items

import lgdkd.data.fashion_mnist as fm
import lgdkd.data.proving_ground as pg
from lgdkd.config import get_cfg
from lgdkd.data import DatasetError, check_datasets, register_datasets_from_cfg
from lgdkd.data.backgrounds import BACKGROUNDS
from lgdkd.data.composite import (
    MASK_ALPHA,
    ProvingGroundOptions,
    compose_image,
    encode_png,
    resize_u8,
    tight_box,
)

OPTIONS = ProvingGroundOptions(
    sizes=(6, 3, 4), seed=3, image_size=64, objects=(2, 4), scale=(8, 24)
)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A tiny set built under ``<root>/proving_ground``; returns (root, dataset_dir)."""
    root = tmp_path_factory.mktemp("pg")
    dataset_dir = os.path.join(str(root), pg.FOLDER)
    pg.build_proving_ground(dataset_dir, _make_items(), _make_backgrounds(), OPTIONS)
    return str(root), dataset_dir


def _coco(dataset_dir, split):
    with open(os.path.join(dataset_dir, "annotations", f"proving_ground_{split}.json")) as f:
        return json.load(f)


def _files(folder):
    out = {}
    for base, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(base, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = f.read()
    return out


def test_build_is_deterministic(built, tmp_path):
    _, first = built
    again = str(tmp_path / "again")
    pg.build_proving_ground(again, _make_items(), _make_backgrounds(), OPTIONS)
    a, b = _files(first), _files(again)
    assert sorted(a) == sorted(b) and len(a) == 3 + sum(OPTIONS.sizes)
    assert all(a[k] == b[k] for k in a), "a rebuild changed some bytes"
    other = str(tmp_path / "other_seed")
    options = ProvingGroundOptions(**dict(OPTIONS.__dict__, seed=4))
    pg.build_proving_ground(other, _make_items(), _make_backgrounds(), options)
    assert (
        _files(other)["annotations/proving_ground_train.json"]
        != a["annotations/proving_ground_train.json"]
    )


def test_images_match_their_records(built):
    _, dataset_dir = built
    for split, size in zip(pg.PROVING_GROUND_SPLITS, OPTIONS.sizes):
        coco = _coco(dataset_dir, split)
        assert len(coco["images"]) == size
        for im in coco["images"]:
            image = cv2.imread(os.path.join(dataset_dir, split, im["file_name"]), cv2.IMREAD_COLOR)
            assert image.shape == (im["height"], im["width"], 3) == (64, 64, 3)
            rgb = np.ascontiguousarray(image[:, :, ::-1])
            assert hashlib.sha256(rgb.tobytes()).hexdigest() == im["pixels_sha256"]


def test_splits_share_no_items_and_no_backgrounds(built):
    _, dataset_dir = built
    items, backgrounds = {}, {}
    for split in pg.PROVING_GROUND_SPLITS:
        coco = _coco(dataset_dir, split)
        items[split] = {tuple(a["item"]) for a in coco["annotations"]}
        backgrounds[split] = {im["background"] for im in coco["images"]}
        assert backgrounds[split] <= {f"{split}-aerial", f"{split}-photo"}
    assert {s for s, _ in items["train"]} == {s for s, _ in items["dev"]} == {"train"}
    assert {s for s, _ in items["test"]} == {"t10k"}
    assert max(i for _, i in items["train"]) < 18 <= min(i for _, i in items["dev"])
    assert not items["train"] & items["dev"]
    for a in pg.PROVING_GROUND_SPLITS:
        for b in pg.PROVING_GROUND_SPLITS:
            if a < b:
                assert not backgrounds[a] & backgrounds[b]


def test_default_pools_and_background_table_are_disjoint():
    fake = {"train": (None, np.zeros(60000)), "t10k": (None, np.zeros(10000))}
    pools = pg.item_pools(fake)
    assert (pools["train"][1][0], pools["train"][1][-1]) == (0, 53999)
    assert (pools["dev"][1][0], pools["dev"][1][-1]) == (54000, 59999)
    assert pools["test"][0] == "t10k" and len(pools["test"][1]) == 10000
    by_split = {}
    for src in BACKGROUNDS:
        by_split.setdefault(src.split, []).append(src)
        assert len(src.pixels_sha256) == 64
    assert sorted(by_split) == sorted(pg.PROVING_GROUND_SPLITS)
    names = [src.name for src in BACKGROUNDS]
    assert len(set(names)) == len(names)
    for sources in by_split.values():
        assert {s.group for s in sources} == {"aerial", "photo"}


def test_boxes_are_tight_around_the_masks():
    items = _make_items()
    rng = np.random.RandomState(5)
    background = rng.randint(0, 256, (64, 64, 3)).astype(np.uint8)
    for trial in range(20):
        chosen = [(items["train"][0][k], items["train"][1][k]) for k in rng.randint(0, 20, 4)]
        image, objects = compose_image(rng, background, chosen, OPTIONS)
        assert image.shape == background.shape and image.dtype == np.uint8
        union = np.zeros((64, 64), dtype=int)
        for obj in objects:
            assert obj["area"] == int(obj["mask"].sum()) > 0
            assert obj["box"] == tight_box(obj["mask"])
            x0, y0, x1, y1 = obj["box"]
            assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
            assert obj["mask"][y0:y1, x0].any() and obj["mask"][y0:y1, x1 - 1].any()
            assert obj["mask"][y0, x0:x1].any() and obj["mask"][y1 - 1, x0:x1].any()
            union += obj["mask"]
        assert union.max() <= 1, "visible masks overlap"
        boxes = [o["box"] for o in objects]
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                assert _iou(boxes[i], boxes[j]) < OPTIONS.max_iou_percent / 100
        changed = (image != background).any(axis=2)
        assert changed[union > 0].mean() > 0.9


def _iou(a, b):
    iw = max(min(a[2], b[2]) - max(a[0], b[0]), 0)
    ih = max(min(a[3], b[3]) - max(a[1], b[1]), 0)
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1])
    return iw * ih / (area - iw * ih)


def test_boxes_inside_images_and_object_counts(built):
    _, dataset_dir = built
    for split in pg.PROVING_GROUND_SPLITS:
        coco = _coco(dataset_dir, split)
        counts = {im["id"]: 0 for im in coco["images"]}
        for a in coco["annotations"]:
            x, y, w, h = a["bbox"]
            assert all(isinstance(v, int) for v in a["bbox"])
            assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= 64 and y + h <= 64
            assert 0 < a["area"] <= w * h
            assert 1 <= a["category_id"] <= 10 and max(w, h) <= a["scale"] <= 24
            counts[a["image_id"]] += 1
        assert coco["info"]["objects_left_out"] == 0
        assert set(counts.values()) <= set(range(OPTIONS.objects[0], OPTIONS.objects[1] + 1))
        assert [c["name"] for c in coco["categories"]] == list(fm.CLASS_NAMES)


def test_pins_detect_a_changed_build(built, tmp_path):
    _, dataset_dir = built
    digests = {s: fm.sha256_file(pg._json_path(dataset_dir, s)) for s in pg.PROVING_GROUND_SPLITS}
    assert pg.verify_proving_ground(dataset_dir, pins=digests)["train"] == OPTIONS.to_json()
    with pytest.raises(pg.ProvingGroundError, match="does not reproduce the pinned"):
        pg.verify_proving_ground(dataset_dir, pins=dict(digests, dev="0" * 64))
    # a json that claims the default options is checked against JSON_SHA256
    copy = str(tmp_path / "copy")
    os.makedirs(os.path.join(copy, "annotations"))
    for split in pg.PROVING_GROUND_SPLITS:
        coco = _coco(dataset_dir, split)
        coco["info"]["options"] = pg.DEFAULT_OPTIONS.to_json()
        with open(pg._json_path(copy, split), "w") as f:
            json.dump(coco, f)
    with pytest.raises(pg.ProvingGroundError, match=r"proving_ground_train\.json has sha256"):
        pg.verify_proving_ground(copy)


def test_encoders_are_exact(tmp_path):
    rng = np.random.RandomState(0)
    rgb = rng.randint(0, 256, (17, 23, 3)).astype(np.uint8)
    path = str(tmp_path / "x.png")
    with open(path, "wb") as f:
        f.write(encode_png(rgb))
    assert (cv2.imread(path, cv2.IMREAD_COLOR)[:, :, ::-1] == rgb).all()
    grey = rgb[:, :, 0]
    assert (resize_u8(grey, 17, 23) == grey).all()
    for h, w in ((40, 31), (9, 12)):
        reference = cv2.resize(grey, (w, h), interpolation=cv2.INTER_LINEAR).astype(int)
        assert np.abs(resize_u8(grey, h, w).astype(int) - reference).max() <= 1
    assert MASK_ALPHA == 128


@pytest.fixture
def no_items_anywhere(monkeypatch, tmp_path):
    monkeypatch.delenv(fm.ENV_VAR, raising=False)
    monkeypatch.setattr(fm, "SYSTEM_DIR", str(tmp_path / "no-system-install"))


def test_missing_items_say_how_to_get_them(no_items_anywhere, tmp_path, monkeypatch):
    root = str(tmp_path / "root")
    with pytest.raises(fm.FashionMnistError) as e:
        pg.prepare_proving_ground(root, OPTIONS, fetch=False)
    message = str(e.value)
    for needle in (
        "apt-get download dataset-fashion-mnist",
        "dpkg -x dataset-fashion-mnist_*.deb DIR",
        os.path.join(root, "fashion-mnist"),
        "--items DIR",
        fm.ENV_VAR,
    ):
        assert needle in message
    assert isinstance(e.value, DatasetError)
    monkeypatch.setattr(fm.shutil, "which", lambda name: None)
    with pytest.raises(fm.FashionMnistError, match="no apt-get to fetch them"):
        pg.prepare_proving_ground(root, OPTIONS, fetch=True)
    with pytest.raises(fm.FashionMnistError, match="holds neither the four"):
        pg.prepare_proving_ground(root, OPTIONS, items_dir=str(tmp_path))
    assert not os.path.exists(os.path.join(root, pg.FOLDER))


def _load_script():
    path = os.path.join(
        os.path.dirname(os.path.dirname(__file__)), "datasets", "prepare_proving_ground.py"
    )
    spec = importlib.util.spec_from_file_location("prepare_proving_ground", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_command_builds_once_and_refuses_other_options(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(pg, "find_fashion_mnist", lambda *args: "items")
    monkeypatch.setattr(pg, "load_fashion_mnist", lambda *args: _make_items())
    monkeypatch.setattr(pg, "load_backgrounds", _make_backgrounds)
    monkeypatch.setattr(pg, "DEFAULT_OPTIONS", OPTIONS)  # the tiny options, with pins:
    digests = {}
    build = pg.build_proving_ground(
        str(tmp_path / "reference"), _make_items(), _make_backgrounds(), OPTIONS
    )
    for split, path in build.items():
        digests[split] = fm.sha256_file(path)
    monkeypatch.setattr(pg, "JSON_SHA256", digests)
    monkeypatch.setattr(pg, "ProvingGroundOptions", lambda sizes, seed: OPTIONS)
    main = _load_script().main  # after the patches: it imports these names
    root = str(tmp_path / "root")
    args = ["--root", root, "--sizes", *map(str, OPTIONS.sizes), "--seed", str(OPTIONS.seed)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"train: annotations/proving_ground_train.json sha256 {digests['train']}" in out
    assert out.count("(matches the pin)") == 3
    assert not [n for n in os.listdir(root) if n.startswith(".proving_ground-tmp-")]
    stamp = os.path.getmtime(pg._json_path(os.path.join(root, pg.FOLDER), "train"))
    assert main(args) == 0  # already built: verified, not rebuilt
    assert os.path.getmtime(pg._json_path(os.path.join(root, pg.FOLDER), "train")) == stamp
    with pytest.raises(pg.ProvingGroundError, match="built with other options"):
        pg.prepare_proving_ground(root, ProvingGroundOptions(**dict(OPTIONS.__dict__, seed=9)))
    monkeypatch.setattr(pg, "JSON_SHA256", dict(digests, test="0" * 64))
    assert main(args + ["--force"]) == 1
    assert "does not reproduce the pinned proving-ground set" in capsys.readouterr().err
    assert os.path.getmtime(pg._json_path(os.path.join(root, pg.FOLDER), "train")) == stamp


def _fake_tool(folder, name, script):
    path = os.path.join(str(folder), name)
    with open(path, "w") as f:
        f.write("#!/bin/sh\n" + script)
    os.chmod(path, 0o755)
    return path


def test_fetch_runs_apt_get_and_dpkg_then_checks_the_files(tmp_path, monkeypatch):
    """With stand-ins for apt-get and dpkg: the .deb is downloaded and unpacked in a
    temporary folder, its idx files are checked (these are not the pinned ones), and a failing
    apt-get is reported with its output and the manual steps."""
    tools = {
        "apt-get": _fake_tool(tmp_path, "apt-get", "touch dataset-fashion-mnist_1_all.deb\n"),
        "dpkg": _fake_tool(
            tmp_path,
            "dpkg",
            'd="$3/usr/share/datasets/fashion-mnist"; mkdir -p "$d"\n'
            "for f in train-images-idx3 train-labels-idx1 t10k-images-idx3 t10k-labels-idx1; "
            'do echo x > "$d/$f-ubyte.gz"; done\n',
        ),
    }
    monkeypatch.setattr(fm.shutil, "which", tools.get)
    root = str(tmp_path / "root")
    with pytest.raises(fm.FashionMnistError, match=r"train-images-idx3-ubyte\.gz has sha256"):
        fm.fetch_fashion_mnist(root)
    assert os.listdir(root) == []  # the temporary folder is gone, nothing was copied
    tools["apt-get"] = _fake_tool(tmp_path, "apt-get", "echo 'E: Unable to locate'; exit 100\n")
    with pytest.raises(fm.FashionMnistError, match="(?s)exit code 100.*Unable to locate.*dpkg -x"):
        fm.fetch_fashion_mnist(root)


def test_idx_files_are_read_and_pinned(no_items_anywhere, tmp_path):
    folder = tmp_path / "x" / "usr" / "share" / "datasets" / "fashion-mnist"
    folder.mkdir(parents=True)
    images = np.arange(3 * 28 * 28, dtype=np.int64).reshape(3, 28, 28).astype(np.uint8)
    for split in fm.SPLITS:
        header = b"\x00\x00\x08\x03" + np.array([3, 28, 28], ">u4").tobytes()
        (folder / f"{split}-images-idx3-ubyte.gz").write_bytes(
            gzip.compress(header + images.tobytes())
        )
        header = b"\x00\x00\x08\x01" + np.array([3], ">u4").tobytes()
        (folder / f"{split}-labels-idx1-ubyte.gz").write_bytes(
            gzip.compress(header + b"\x01\x02\x09")
        )
    assert (fm.read_idx(str(folder / "t10k-images-idx3-ubyte.gz")) == images).all()
    assert fm.read_idx(str(folder / "train-labels-idx1-ubyte.gz")).tolist() == [1, 2, 9]
    assert fm.find_fashion_mnist(str(tmp_path / "x")) == str(folder)  # a `dpkg -x` target
    with pytest.raises(fm.FashionMnistError, match="has sha256 .* expected"):
        fm.load_fashion_mnist(str(folder))


def test_names_are_registered_and_missing_files_are_a_dataset_error(tmp_path, built):
    names = register_datasets_from_cfg(get_cfg(), check=False)
    for split in pg.PROVING_GROUND_SPLITS:
        assert f"proving_ground_{split}" in names
        assert len(MetadataCatalog.get(f"proving_ground_{split}").thing_classes) == 10
    empty_root = str(tmp_path / "empty")
    assert pg.register_proving_ground(empty_root, prefix="pgtest") == (
        "pgtest_train",
        "pgtest_dev",
        "pgtest_test",
    )
    assert pg.register_proving_ground(empty_root, prefix="pgtest")[0] == "pgtest_train"
    with pytest.raises(DatasetError, match=r"python datasets/prepare_proving_ground\.py"):
        DatasetCatalog.get("pgtest_train")
    with pytest.raises(DatasetError, match="not built"):
        check_datasets(["pgtest_dev"], "DATASETS.TEST")
    with pytest.raises(DatasetError, match="already registered"):
        pg.register_proving_ground(str(tmp_path / "elsewhere"), prefix="pgtest")
    root, _ = built
    pg.register_proving_ground(root, prefix="pgbuilt")
    check_datasets(["pgbuilt_train", "pgbuilt_test"])
    records = DatasetCatalog.get("pgbuilt_dev")
    assert len(records) == OPTIONS.sizes[1]
    assert all(r["annotations"] and r["height"] == 64 for r in records)
