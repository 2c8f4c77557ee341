import pytest
import yaml

from breastgan.config import ConfigError, RunConfig, apply_overrides, load_config


def test_defaults_validate(tiny_config):
    cfg = load_config(tiny_config)
    assert cfg.model.generator.component == "dcgan"
    assert cfg.model.generator.args == {"base_width": 8, "latent_dim": 16}
    assert cfg.loss.args["label_smoothing"] == [0.8, 1.1]


def test_unknown_key_names_allowed_keys(tiny_config):
    tiny_config["train"]["batchsize"] = 3
    with pytest.raises(ConfigError) as e:
        load_config(tiny_config)
    assert "train.batchsize: unknown key" in str(e.value)
    assert "batch_size" in str(e.value)


def test_wrong_type_and_range(tiny_config):
    tiny_config["train"]["batch_size"] = "many"
    with pytest.raises(ConfigError, match=r"train.batch_size: .*integer.*'many'"):
        load_config(tiny_config)
    tiny_config["train"]["batch_size"] = 0
    with pytest.raises(ConfigError, match=r"train.batch_size: Input should be greater than or equal to 1"):
        load_config(tiny_config)


def test_unknown_architecture_lists_available(tiny_config):
    tiny_config["model"]["generator"]["arch"] = "stylegan9"
    with pytest.raises(ConfigError, match=r"unknown generator architecture 'stylegan9'; available: dcgan"):
        load_config(tiny_config)


def test_component_option_errors_name_the_option(tiny_config):
    tiny_config["model"]["discriminator"]["kernal_size"] = 6
    with pytest.raises(ConfigError, match=r"kernal_size: unknown option for 'dcgan'; allowed options: .*kernel_size"):
        load_config(tiny_config)
    tiny_config["model"]["discriminator"].pop("kernal_size")
    tiny_config["model"]["discriminator"]["norm"] = "weird"
    with pytest.raises(ConfigError, match=r"norm: Input should be 'batch', 'instance', 'layer', 'group' or 'none'"):
        load_config(tiny_config)


def test_batchnorm_with_gradient_penalty_rejected(tiny_config):
    tiny_config["loss"] = {"name": "wgan-gp"}
    with pytest.raises(ConfigError, match="batch norm is invalid with a gradient penalty"):
        load_config(tiny_config)
    tiny_config["model"]["discriminator"]["norm"] = "layer"
    assert load_config(tiny_config).loss.name == "wgan-gp"


def test_overrides_parse_yaml_values(tiny_config, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny_config))
    cfg = load_config(path, ["train.max_steps=99", "loss.label_smoothing=[0.7, 1.0]", "model.generator.base_width=4"])
    assert cfg.train.max_steps == 99
    assert cfg.loss.args["label_smoothing"] == [0.7, 1.0]
    assert cfg.model.generator.args["base_width"] == 4
    with pytest.raises(ConfigError, match="expected key=value"):
        apply_overrides({}, ["train.max_steps"])
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")


def test_training_length_required(tiny_config):
    tiny_config["train"].pop("max_steps")
    with pytest.raises(ConfigError, match="set train.epochs or train.max_steps"):
        load_config(tiny_config)


def test_best_metric_must_name_a_configured_callback(tiny_config):
    tiny_config["train"]["best_metric"] = "pixel_stats/hist_w1"
    with pytest.raises(ConfigError, match="not in train.eval"):
        load_config(tiny_config)


def test_yaml_round_trip(tiny_config):
    cfg = load_config(tiny_config)
    again = RunConfig.model_validate(yaml.safe_load(cfg.to_yaml()))
    assert again == cfg


def test_shipped_configs_validate():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "configs"
    files = sorted(p for p in root.glob("*.yaml"))
    assert files, "no example configs shipped"
    for f in files:
        if "base" in (yaml.safe_load(f.read_text()) or {}):
            continue  # a `breastgan sweep` file (base + axes), validated in tests/training/test_dgan_recipes.py
        load_config(f)
