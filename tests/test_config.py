"""Composition of every config option, multi-source, the schema, and configs found from the packaged folder."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from transfer_cli.config import CONFIG_DIR, GROUPS, group_options, register_schema_and_domains


@pytest.fixture
def composer():
    register_schema_and_domains([CONFIG_DIR])
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        yield lambda *overrides: compose("config", overrides=list(overrides))
    GlobalHydra.instance().clear()


def test_defaults(composer):
    cfg = composer()
    assert list(cfg.source) == ["books"] and list(cfg.target) == ["movies"]
    assert cfg.model.name == "minilm" and cfg.strategy.name == "source_only" and cfg.hardware.name == "auto"
    assert cfg.protocol == "inductive"


@pytest.mark.parametrize("group", [g for g in GROUPS if g != "experiment"])
def test_every_option_composes(composer, group):
    options = group_options(group, [CONFIG_DIR])
    assert options, group
    for name in options:
        extra = ["source=dvd"] if group == "target" and name == "books" else []
        cfg = composer(f"{group}={name}", *extra)
        node = cfg[group]
        if group in ("source", "target"):
            assert list(node) == [name] and node[name].name == name
        else:
            assert node.name == name
        OmegaConf.to_object(cfg)  # validates against the schema (raises)


@pytest.mark.parametrize("experiment", list(group_options("experiment", [CONFIG_DIR])))
def test_experiments_compose(composer, experiment):
    cfg = composer(f"experiment={experiment}")
    assert cfg.description
    OmegaConf.to_object(cfg)


def test_demo_is_offline(composer):
    cfg = composer("experiment=demo")
    for domain in [*cfg.source.values(), *cfg.target.values()]:
        assert domain.loader == "synthetic"
    assert cfg.model.name == "minilm"


def test_multi_source(composer):
    cfg = composer("source=[books,dvd,electronics]", "target=kitchen")
    assert list(cfg.source) == ["books", "dvd", "electronics"]
    assert cfg.source.dvd.path == "amazon-multi-domain/dvd"


def test_every_strategy_has_a_module_and_description():
    from transfer_cli.config import describe
    from transfer_cli.strategies import strategy_class

    for name, path in group_options("strategy", [CONFIG_DIR]).items():
        assert strategy_class(name).name == name
        assert describe(path)


def test_schema_rejects_typo_and_bad_value(composer):
    with pytest.raises(Exception, match="lrr"):
        composer("train.lrr=0.1")
    with pytest.raises(Exception, match="fp8"):
        composer("hardware.precision=fp8")
    with pytest.raises(Exception, match="protocol|nductive"):
        composer("protocol=sometimes")


def test_an_option_newer_than_a_completed_sweep_keeps_its_digest_at_its_null_default():
    """A completed sweep job is not run again because the config grew a key it did not have: at null (its default),
    data.split_seed, strategy.average_from and strategy.sharpness_rho leave the digest as it was; set, they change it."""
    from transfer_cli.app import config_digest

    before = OmegaConf.create({"data": {"max_length": 128}, "strategy": {"name": "dann", "weight": 1.0}})
    digest = config_digest(before)
    for group, key in (("data", "split_seed"), ("strategy", "average_from"), ("strategy", "sharpness_rho")):
        grown = OmegaConf.merge(before, {group: {key: None}})
        assert config_digest(grown) == digest
        grown[group][key] = 0
        assert config_digest(grown) != digest
