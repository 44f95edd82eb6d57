"""Training specs: every shipped recipe validates; typos and impossible values name the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from ai4life_kit.config import load_spec, parse_spec, save_spec
from ai4life_kit.errors import ConfigError

SPECS = sorted((Path(__file__).parents[1] / "model_specs").glob("*.yaml"))


def test_required_recipes_exist():
    names = {p.stem for p in SPECS}
    assert {"n2v-2d", "n2v2-2d", "structn2v-2d", "n2n-2d", "care-2d", "n2v-3d", "care-3d"} <= names


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_shipped_spec_is_valid_and_round_trips(path, tmp_path):
    spec = load_spec(path)
    assert spec.name and spec.name.startswith(path.stem)
    assert len(spec.data.patch_size) == spec.data.dims
    if path.stem.endswith("-3d"):
        assert spec.data.dims == 3
    save_spec(spec, tmp_path / "copy.yaml")
    assert load_spec(tmp_path / "copy.yaml") == spec


@pytest.mark.parametrize("name", ["n2v-2d", "n2v2-2d", "n2v-3d", "n2v2-3d"])
def test_blind_spot_recipes_select_an_average_of_the_weights(name):
    """Measured over seeds (benchmarks/README.md): the average beat the raw weights in every N2V/N2V2 cell."""
    spec = load_spec(Path(__file__).parents[1] / "model_specs" / f"{name}.yaml")
    assert spec.training.ema_decay == 0.99


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"algorithm": {"name": "n2v", "masked_pixl_percentage": 1}}, "unknown key 'algorithm.masked_pixl_percentage'"),
        ({"algorithm": {"name": "n2v"}, "trainig": {}}, "unknown key 'trainig'"),
        ({"algorithm": {"name": "n2v3"}}, "n2v3"),
        ({}, "missing key 'algorithm'"),
        ({"algorithm": {"name": "n2v"}, "data": {"patch_size": [62, 64]}}, "multiple of 2**model.depth = 4"),
        ({"algorithm": {"name": "n2v"}, "data": {"dims": 3}}, "data.dims is 3"),
        ({"algorithm": {"name": "n2v"}, "data": {"dims": 3, "patch_size": [16, 64, 64], "axes": "SYX"}}, "no Z axis"),
        ({"algorithm": {"name": "structn2v", "struct_mask": {"span": 4}}}, "span must be odd"),
        ({"algorithm": {"name": "structn2v", "struct_mask": {"axis": "z"}}}, "'z' but data.dims is 2"),
        ({"algorithm": {"name": "n2v", "roi_size": 4}}, "roi_size must be odd"),
        ({"algorithm": {"name": "n2v"}, "model": {"residual": True}}, "residual must be false"),
        ({"algorithm": {"name": "care"}, "training": {"batch_size": 0}}, "training.batch_size = 0"),
        ({"algorithm": {"name": "care"}, "training": {"learning_rate": "fast"}}, "training.learning_rate = 'fast'"),
        ({"algorithm": {"name": "care"}, "data": {"axes": "QYX"}}, "axes 'QYX'"),
        ({"algorithm": {"name": "care"}, "version": 2}, "version = 2"),
    ],
)
def test_bad_specs_name_field_and_value(spec, message):
    with pytest.raises(ConfigError) as info:
        parse_spec(spec, "bad.yaml")
    text = str(info.value)
    assert message in text
    assert "\n" not in text and text.startswith("invalid spec bad.yaml")


def test_yaml_errors_are_config_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("algorithm: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_spec(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_spec(tmp_path / "missing.yaml")
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="expected a YAML mapping"):
        load_spec(bad)


def test_defaults_follow_the_algorithm():
    assert parse_spec({"algorithm": {"name": "n2v"}}).algorithm.resolved_replacement == "uniform"
    n2v2 = parse_spec({"algorithm": {"name": "n2v2"}})
    assert n2v2.algorithm.resolved_replacement == "median" and n2v2.uses_n2v2_network
    assert not parse_spec({"algorithm": {"name": "care"}}).is_self_supervised
