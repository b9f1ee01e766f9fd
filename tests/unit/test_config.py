from pathlib import Path

import pytest
import yaml

from mltrain.config import TrainConfig, parse_overrides
from mltrain.errors import ConfigError
from tests.helpers import REPO, call_cli

LAB_DEFAULTS = {
    "initial_epochs": 5,
    "total_epochs": 20,
    "patience": 5,
    "batch_size": 32,
    "lr": 1e-4,
    "fine_tune_lr": 1e-5,
    "model_architecture": "MobileNetV2",
    "dropout_probability": 0.5,
    "random_horizontal_flip": 0.5,
    "random_rotation": 15,
    "color_jitter_brightness": 0.2,
    "color_jitter_contrast": 0.2,
    "color_jitter_saturation": 0.2,
    "color_jitter_hue": 0.1,
}


def test_defaults_are_the_labs() -> None:
    dumped = TrainConfig().model_dump()
    for key, value in LAB_DEFAULTS.items():
        assert dumped[key] == value, key
    assert dumped["image_size"] == 224
    assert dumped["pretrained"] is True


def test_every_field_has_help() -> None:
    for name, info in TrainConfig.model_fields.items():
        assert info.description, f"{name} has no docstring"


def test_yaml_then_overrides(tmp_path: Path) -> None:
    file = tmp_path / "c.yaml"
    file.write_text("lr: 0.01\ntotal_epochs: 7\npretrained: false\n")
    config = TrainConfig.build(file, ["lr=3e-4", "batch_size=8", "num_workers=2"])
    assert config.lr == pytest.approx(3e-4)
    assert config.total_epochs == 7
    assert config.batch_size == 8
    assert config.num_workers == 2
    assert config.pretrained is False


def test_override_values_are_typed() -> None:
    assert parse_overrides(["a=1", "b=0.5", "c=false", "d=text", "e=1e-4"]) == {
        "a": 1,
        "b": 0.5,
        "c": False,
        "d": "text",
        "e": "1e-4",  # YAML 1.1 keeps this a string; pydantic coerces it to float
    }
    assert TrainConfig.build(overrides=["lr=1e-4"]).lr == pytest.approx(1e-4)


def test_unknown_key_lists_valid_keys() -> None:
    with pytest.raises(ConfigError) as err:
        TrainConfig.build(overrides=["learning_rate=0.1"])
    message = str(err.value)
    assert "learning_rate" in message
    assert "valid keys" in message and "fine_tune_lr" in message and "batch_size" in message


def test_close_misspelling_gets_a_suggestion() -> None:
    with pytest.raises(ConfigError, match="did you mean 'patience'"):
        TrainConfig.build(overrides=["patiense=3"])


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("batch_size=abc", "batch_size='abc'"),
        ("batch_size=2.5", "batch_size=2.5"),
        ("pretrained=maybe", "pretrained='maybe'"),
        ("lr=-0.1", "greater than 0"),
        ("fine_tune_lr=0", "greater than 0"),
        ("dropout_probability=1.5", "less than 1"),
        ("color_jitter_hue=0.9", "less than or equal to 0.5"),
        ("num_workers=-2", "must be 'auto' or an integer >= 0"),
        ("model_architecture=ResNet50", "MobileNetV2"),
        ("engine=jax", "torch"),
    ],
)
def test_bad_values_say_what_is_allowed(override: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        TrainConfig.build(overrides=[override])
    assert fragment in str(err.value)


def test_total_epochs_below_initial_epochs() -> None:
    with pytest.raises(ConfigError, match=r"total_epochs \(3\) must be >= initial_epochs \(5\)"):
        TrainConfig.build(overrides=["total_epochs=3"])


def test_several_devices_need_lightning() -> None:
    with pytest.raises(ConfigError, match="engine=lightning"):
        TrainConfig.build(overrides=["devices=2"])
    assert TrainConfig.build(overrides=["devices=2", "engine=lightning"]).devices == 2


def test_malformed_override_and_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="key=value"):
        TrainConfig.build(overrides=["lr"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        TrainConfig.build(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        TrainConfig.build(tmp_path / "missing.yaml")


def test_resolved_config_round_trips(tmp_path: Path) -> None:
    config = TrainConfig.build(overrides=["lr=0.002", "seed=7"])
    saved = config.save_yaml(tmp_path / "out" / "config.yaml")
    assert TrainConfig.build(saved) == config
    params = config.to_params()
    assert set(params) == set(TrainConfig.keys())
    assert params["lr"] == "0.002"


@pytest.mark.parametrize("path", sorted((REPO / "src/mltrain/configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path: Path) -> None:
    assert isinstance(yaml.safe_load(path.read_text()), dict)
    TrainConfig.build(path)


def test_cli_config_error_exits_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    done = call_cli(capsys, "train", "--set", "lr=-1", "--data", "nowhere")
    assert done.returncode == 2
    assert done.stderr.startswith("error: invalid config: lr=-1")
    assert "Traceback" not in done.stderr
    done = call_cli(capsys, "config", "show", "--set", "batchsize=3")
    assert done.returncode == 2
    assert "unknown config key 'batchsize'" in done.stderr


def test_cli_config_show(capsys: pytest.CaptureFixture[str]) -> None:
    done = call_cli(capsys, "config", "show", "--set", "total_epochs=30")
    assert done.returncode == 0, done.stderr
    assert "total_epochs: 30" in done.stdout
    assert "initial_epochs: 5" in done.stdout


def test_resume_keeps_the_checkpoint_config_and_allows_only_steering_keys() -> None:
    from mltrain.config import resolve_resume

    saved = TrainConfig(image_size=96, total_epochs=8, pretrained=False).model_dump()
    config, changes, _ = resolve_resume(saved, overrides=["total_epochs=12", "num_workers=0"])
    assert config.image_size == 96 and config.total_epochs == 12  # the checkpoint's config, not the defaults
    assert changes == {"total_epochs": (8, 12), "num_workers": ("auto", 0)}
    assert resolve_resume(saved)[1] == {}
    with pytest.raises(ConfigError, match=r"image_size: checkpoint has 96, asked 224"):
        resolve_resume(saved, overrides=["image_size=224"])
    with pytest.raises(ConfigError, match=r"cannot change batch_size, seed"):
        resolve_resume(saved, overrides={"batch_size": 64, "seed": 1})
    with pytest.raises(ConfigError, match="unknown config key"):
        resolve_resume(saved, overrides=["epochs=3"])


def test_launcher_keys_are_not_config_keys_but_files_that_hold_them_still_load(tmp_path: Path) -> None:
    from mltrain.config import LEGACY_LAUNCHER_KEYS, resolve

    assert not set(LEGACY_LAUNCHER_KEYS) & set(TrainConfig.keys())
    with pytest.raises(ConfigError, match="workers: where a training runs is the launcher's business"):
        TrainConfig.build(overrides=["workers=2"])
    with pytest.raises(ConfigError, match="engine=ray"):
        TrainConfig.from_mapping({"engine": "ray"})
    # What `config show` wrote before 0.2: every key, the Ray launcher's among them.
    old = tmp_path / "old.yaml"
    old.write_text("engine: ray\nworkers: 2\ncpus_per_worker: 0.5\nstorage: null\nlr: 0.002\n")
    config, launch = resolve(old, ["total_epochs=7"])
    assert config.engine == "lightning" and config.lr == 0.002 and config.total_epochs == 7
    assert launch.launcher == "ray" and launch.options == {"workers": 2, "cpus_per_worker": 0.5, "storage": None}
    assert resolve(old, ["engine=torch"])[1].launcher is None  # asked for by name: no alias
    assert TrainConfig.from_saved({**config.model_dump(), "workers": 2}) == config


def test_a_checkpoint_of_before_0_2_resumes_with_its_launcher_keys_apart() -> None:
    from mltrain.config import resolve_resume

    saved = {**TrainConfig(total_epochs=8).model_dump(), "engine": "ray", "workers": 2, "max_failures": 3}
    config, changes, launch = resolve_resume(saved, overrides=["total_epochs=12", "workers=1"])
    assert config.engine == "lightning" and changes == {"total_epochs": (8, 12)}
    assert launch.launcher == "ray" and launch.options == {"workers": 1, "max_failures": 3}
    # The same checkpoint on another launcher: the engine named keeps the checkpoint's (lightning).
    config, changes, launch = resolve_resume(saved, overrides=["engine=lightning"])
    assert changes == {} and launch.launcher is None
    with pytest.raises(ConfigError, match="cannot change engine"):
        resolve_resume(saved, overrides=["engine=torch"])
