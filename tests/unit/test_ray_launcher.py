"""The Ray launcher without Ray processes: its options, which launcher a training gets, placement."""

from __future__ import annotations

from pathlib import Path

import pytest


# --- the launcher's options and its choice --------------------------------------------------------------------
def test_ray_options_are_validated_and_say_what_each_worker_reserves() -> None:
    from mltrain.errors import ConfigError
    from mltrain.launchers.ray import RayOptions, parse_workers

    options = RayOptions.of(**parse_workers("1-3"), cpus_per_worker=0.5, gpus_per_worker=0.25)
    assert options.elastic and options.fewest_workers == 1 and options.workers_text() == "1-3"
    assert options.per_worker() == {"CPU": 0.5, "GPU": 0.25}
    assert RayOptions().per_worker() == {"CPU": 1}  # no GPU asked: none reserved
    assert options.to_params()["workers"] == "3" and "address" not in options.to_params()
    for bad, message in [
        ({"workers": 2, "min_workers": 3}, "min_workers=3 is more than workers=2"),
        ({"gpus_per_worker": 1.5}, "a fraction below 1 or whole GPUs"),
        ({"cpus_per_worker": 0}, "cpus_per_worker=0"),
        ({"worker": 2}, "worker"),
    ]:
        with pytest.raises(ConfigError, match=message):
            RayOptions.of(**bad)
    with pytest.raises(ConfigError, match="expected 1 <= MIN <= MAX"):
        parse_workers("3-1")


def test_options_given_win_over_a_config_files_launcher_keys() -> None:
    from mltrain.launchers.ray import RayOptions

    given = RayOptions.of(workers=2, min_workers=None)
    merged = given.defaulted({"workers": 4, "min_workers": 1, "storage": "s3://ray/x", "max_failures": 5})
    assert (merged.workers, merged.min_workers, merged.storage, merged.max_failures) == (2, None, "s3://ray/x", 5)


def test_the_launcher_is_the_one_given_else_the_configs_alias_else_local() -> None:
    from mltrain.config import LaunchKeys, TrainConfig, resolve
    from mltrain.errors import ConfigError
    from mltrain.launchers import select_launcher
    from mltrain.launchers.local import LocalLauncher
    from mltrain.launchers.ray import RayLauncher, RayOptions

    assert isinstance(select_launcher(None, LaunchKeys()), LocalLauncher)
    config, keys = resolve(overrides=["engine=ray", "workers=2", "cpus_per_worker=0.5"])  # a file of before 0.2
    launcher = select_launcher(None, keys)
    assert isinstance(launcher, RayLauncher) and config.engine == "lightning"
    config, configured = launcher.configure(config, keys)
    assert isinstance(configured, RayLauncher) and configured.options.per_worker() == {"CPU": 0.5}
    assert configured.tags(config) == {"mltrain.engine": "ray", "mltrain.launcher": "ray"}

    # The Ray launcher trains the lightning engine: the default engine becomes it; an engine asked for by name stays.
    default, _ = RayLauncher().configure(TrainConfig(), LaunchKeys())
    assert default.engine == "lightning"
    with pytest.raises(ConfigError, match="the Ray launcher trains with the lightning engine"):
        RayLauncher().configure(TrainConfig(engine="torch"), LaunchKeys())
    with pytest.raises(ConfigError, match="needs GPUs per worker"):
        RayLauncher(RayOptions()).check(TrainConfig(engine="lightning", accelerator="gpu"))

    # Locally, the keys a config of before 0.2 lists at their defaults mean nothing; a group of workers does.
    old_defaults = {"workers": 1, "min_workers": None, "cpus_per_worker": 1, "storage": None, "max_failures": 2}
    assert LocalLauncher().configure(TrainConfig(), LaunchKeys(None, old_defaults))[0] == TrainConfig()
    with pytest.raises(ConfigError, match="workers=2 needs the Ray launcher"):
        LocalLauncher().configure(TrainConfig(), LaunchKeys(None, {"workers": 2}))


def test_the_placement_watch_counts_fractional_workers_on_live_nodes(monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    from mltrain.launchers.ray import RayOptions
    from mltrain.launchers.ray.placement import PlacementWatch
    from mltrain.tracking import NullLogger

    nodes = [
        {"Alive": True, "NodeName": "head", "Resources": {}},
        {"Alive": True, "NodeName": "a", "Resources": {"CPU": 0.3}},
        {"Alive": False, "NodeName": "b", "Resources": {"CPU": 8}},
    ]
    monkeypatch.setattr(ray, "nodes", lambda: nodes)
    watch = PlacementWatch(RayOptions(workers=3, cpus_per_worker=0.1), NullLogger())
    assert watch.places() == (3, ["head", "a"])  # 0.3 // 0.1 would say 2
    watch.check()
    assert not watch.waiting
    nodes[1]["Resources"] = {"CPU": 0.2}
    watch.check()
    assert watch.waiting


def test_a_config_built_in_python_leaves_the_engine_to_the_ray_launcher(tiny_data: Path) -> None:
    from mltrain.config import TrainConfig
    from mltrain.launchers.ray import RayLauncher, RayOptions
    from mltrain.training import plan_training

    config = TrainConfig.build(overrides=["initial_epochs=1", "total_epochs=2"])  # engine: the default, unchosen
    plan = plan_training(config, (), None, tiny_data, None, RayLauncher(RayOptions(workers=2)))
    assert plan.config.engine == "lightning" and plan.config.total_epochs == 2
    assert isinstance(plan.launcher, RayLauncher) and plan.launcher.options.workers == 2
