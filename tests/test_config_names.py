"""Renamed config keys and values (lgdkd.config.RENAMED_KEYS / RENAMED_VALUES): old configs,
old dumped config.yaml files and old command-line options still load, under the new names,
with a warning that names the new key."""

import logging
from types import SimpleNamespace

import pytest
import yaml

from lgdkd.config import RENAMED_KEYS, RENAMED_VALUES, CfgNode, get_cfg
from lgdkd.engine import ConfigKeyError, load_config

OLD_YAML = """
MODEL:
  GFL:
    LOSS_WEIGHT_QFL: 3.0
  PAA:
    LOSS_WEIGHT_IOU: 0.7
  DISTILL:
    HEAD:
      AKD:
        WEIGHT: 0.5
      ASSIST:
        LOSS_CLS_WEIGHT: 0.25
    LGD:
      INTERACT_PATTERN: "labelGuided"
"""


def test_old_names_in_a_file_load_under_the_new_ones(tmp_path, caplog):
    path = tmp_path / "old.yaml"
    path.write_text(OLD_YAML)
    cfg = get_cfg()
    with caplog.at_level(logging.WARNING, logger="lgdkd.config"):
        cfg.merge_from_file(str(path))
    assert cfg.MODEL.GFL.QFL_WEIGHT == 3.0 and cfg.MODEL.PAA.IOU_WEIGHT == 0.7
    assert cfg.MODEL.DISTILL.HEAD.AKD.LOSS_WEIGHT == 0.5
    assert cfg.MODEL.DISTILL.HEAD.ASSIST.CLS_WEIGHT == 0.25
    assert cfg.MODEL.DISTILL.LGD.INTERACT_PATTERN == "label_guided"
    assert "LOSS_WEIGHT_QFL" not in cfg.MODEL.GFL and "WEIGHT" not in cfg.MODEL.DISTILL.HEAD.AKD
    text = caplog.text
    assert "MODEL.GFL.LOSS_WEIGHT_QFL is now called MODEL.GFL.QFL_WEIGHT" in text
    assert "'labelGuided' is now called 'label_guided'" in text


def test_old_names_on_the_command_line_and_through_load_config(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text(OLD_YAML)
    opts = ["MODEL.DISTILL.HEAD.CKD.WEIGHT", "0.125", "MODEL.DISTILL.LGD.INTERACT_PATTERN"]
    cfg = load_config(SimpleNamespace(config_file=str(path), opts=opts + ["stuGuided"]))
    assert cfg.MODEL.DISTILL.HEAD.CKD.LOSS_WEIGHT == 0.125
    assert cfg.MODEL.DISTILL.LGD.INTERACT_PATTERN == "student_guided"
    assert cfg.MODEL.GFL.QFL_WEIGHT == 3.0
    # a key that never existed is still an error naming it
    with pytest.raises(ConfigKeyError, match="MODEL.GFL.LOSS_WEIGHT_QFX"):
        load_config(SimpleNamespace(config_file="", opts=["MODEL.GFL.LOSS_WEIGHT_QFX", "1"]))


def test_every_new_name_exists_and_dumps_round_trip(tmp_path):
    cfg = get_cfg()
    assert isinstance(cfg, CfgNode) and isinstance(cfg.MODEL.DISTILL.HEAD.AKD, CfgNode)
    assert isinstance(cfg.clone().MODEL.GFL, CfgNode)
    for old, new in RENAMED_KEYS.items():
        node, leaf = cfg, new.split(".")
        for part in leaf[:-1]:
            node = node[part]
        assert leaf[-1] in node, new
        assert old.rsplit(".", 1)[-1] not in node or old == new, old
    for key, values in RENAMED_VALUES.items():
        assert set(values.values()) <= {"student_guided", "label_guided"}, key
    path = tmp_path / "dump.yaml"
    path.write_text(cfg.dump())
    again = get_cfg()
    again.merge_from_file(str(path))
    assert yaml.safe_load(again.dump()) == yaml.safe_load(cfg.dump())
