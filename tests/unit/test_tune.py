"""`mltrain tune` without Ray processes: the search language, the settings, fitting trials to a cluster, ranking."""

from __future__ import annotations

from pathlib import Path

import pytest

from mltrain.config import TrainConfig
from mltrain.errors import ConfigError
from mltrain.launchers.ray import RayOptions
from mltrain.search import (
    DEFAULT_SEARCH,
    SearchPlan,
    SearchSettings,
    TrialSummary,
    parse_search,
    place,
    plan_search,
    results,
    trial,
)
from mltrain.search.tags import LOST_ATTEMPTS_TAG, TRIAL_TAG

BASE = TrainConfig(engine="lightning", total_epochs=4, initial_epochs=1)


def test_the_default_search_is_the_labs() -> None:
    search = parse_search(DEFAULT_SEARCH, BASE)
    assert {key: (d.kind, d.args) for key, d in search.items()} == {
        "batch_size": ("choice", (32, 64)),
        "dropout_probability": ("uniform", (0.1, 0.8)),
    }
    assert str(search["dropout_probability"]) == "dropout_probability=uniform(0.1,0.8)"


def test_every_distribution_parses_to_its_tune_domain() -> None:
    from ray.tune.search.sample import Categorical, Float, Integer

    search = parse_search(
        [
            "lr = loguniform(1e-5, 1e-2)",
            "seed=randint(0,100)",
            "pretrained=choice(true,false)",
            "fine_tune_lr=uniform(1e-6,1e-5)",
        ],
        BASE,
    )
    assert search["lr"].args == (1e-5, 1e-2)  # YAML 1.1 would have read 1e-5 as a string
    assert search["seed"].probes() == [0, 99]  # randint's upper end is excluded, as in Tune
    assert search["pretrained"].args == (True, False)
    assert isinstance(search["lr"].to_tune(), Float) and isinstance(search["seed"].to_tune(), Integer)
    assert isinstance(search["pretrained"].to_tune(), Categorical)
    sampled = search["lr"].to_tune().sample()
    assert 1e-5 <= sampled < 1e-2


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("batch_size", "is not of the form"),
        ("batch_size=choice()", "at least one value"),
        ("batch_size=normal(1,2)", "unknown distribution 'normal'"),
        ("batchsize=choice(32,64)", "did you mean 'batch_size'"),
        ("lr=uniform(0.1)", "takes two numbers"),
        ("lr=uniform(0.2,0.1)", "lo < hi"),
        ("lr=loguniform(0,0.1)", "lo > 0"),
        ("seed=randint(0.5,3)", "two integers"),
        ("lr=uniform(a,b)", "takes two numbers"),
        ("dropout_probability=uniform(0.5,1.5)", "can draw dropout_probability="),
        ("batch_size=choice(32,0)", "can draw batch_size=0"),
        ("engine=choice(torch,ray)", "every trial runs on Ray Train"),
        ("total_epochs=randint(2,9)", "--max-epochs"),
    ],
)
def test_a_malformed_or_impossible_search_is_a_config_error(expression: str, message: str) -> None:
    with pytest.raises(ConfigError, match="--search") as raised:
        parse_search([expression], BASE)
    assert message in str(raised.value)


def test_a_key_searched_twice_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="already searched"):
        parse_search(["lr=uniform(0.1,0.2)", "lr=loguniform(0.001,0.1)"], BASE)


def test_impossible_values_are_checked_against_the_fixed_config() -> None:
    # initial_epochs may not exceed total_epochs (= --max-epochs): with max 4 epochs, 5 is impossible.
    with pytest.raises(ConfigError, match="initial_epochs=5"):
        parse_search(["initial_epochs=randint(1,6)"], BASE)
    assert parse_search(["initial_epochs=randint(1,5)"], BASE)["initial_epochs"].probes() == [1, 4]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (SearchSettings(samples=0), "--samples"),
        (SearchSettings(max_epochs=4, grace_period=5), "--grace-period"),
        (SearchSettings(reduction_factor=1), "--reduction-factor"),
        (SearchSettings(metric="accuracy"), "--metric must be one of"),
        (SearchSettings(mode="best"), "--mode"),
        (SearchSettings(workers_per_trial=0), "--workers-per-trial"),
        (SearchSettings(workers_per_trial=2, min_workers_per_trial=3), "--workers-per-trial must be N >= 1 or MIN-MAX"),
        (SearchSettings(cpus_per_trial=0), "--cpus-per-trial"),
        (SearchSettings(max_concurrent=0), "--max-concurrent"),
    ],
)
def test_settings_out_of_range_are_config_errors(settings: SearchSettings, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        settings.check()


def _plan(nodes: list[dict], **settings: object) -> SearchPlan:
    plan = SearchPlan(BASE, RayOptions(), {}, SearchSettings(samples=16, max_epochs=4, **settings), data_dir=None)  # type: ignore[arg-type]
    place(plan, nodes)
    return plan


def _node(alive: bool = True, **resources: float) -> dict:
    return {"Alive": alive, "Resources": resources}


def test_trials_default_to_half_a_gpu_and_as_many_at_once_as_the_gpus_hold() -> None:
    nodes = [_node(CPU=8, GPU=2), _node(CPU=8, GPU=1), _node(CPU=4), _node(alive=False, CPU=64, GPU=8)]
    plan = _plan(nodes)
    assert plan.options.gpus_per_worker == 0.5 and plan.settings.gpus_per_trial == 0.5
    assert plan.settings.max_concurrent == 6  # 4 + 2 half-GPU workers; the dead node does not count


def test_on_cpus_concurrency_follows_the_cpus_and_workers_per_trial() -> None:
    plan = _plan([_node(CPU=3), _node(CPU=4)], workers_per_trial=2)
    assert plan.settings.gpus_per_trial == 0 and plan.settings.cpus_per_trial == 2
    assert plan.settings.max_concurrent == 3  # 7 one-CPU workers hold three 2-worker trials
    assert _plan([_node(CPU=64)]).settings.max_concurrent == 16  # never more than the samples
    assert _plan([_node(CPU=64)], max_concurrent=5).settings.max_concurrent == 5


def test_elastic_trials_are_sized_for_their_most_workers(tiny_data: Path) -> None:
    settings = SearchSettings(samples=4, max_epochs=2, workers_per_trial=2, min_workers_per_trial=1, cpus_per_trial=1)
    plan = plan_search(None, ["lr=uniform(0.001,0.01)"], ["initial_epochs=1"], None, tiny_data, settings, None)
    assert (plan.options.min_workers, plan.options.workers, plan.options.cpus_per_worker) == (1, 2, 0.5)
    # every trial on Ray Train: the lightning engine on the Ray launcher
    assert plan.base.engine == "lightning" and plan.base.total_epochs == 2 and Path(plan.base.output_dir).is_absolute()
    place(plan, [_node(CPU=3)])
    assert plan.settings.max_concurrent == 3  # 6 half-CPU workers: three trials at their 2 workers


def test_a_trial_the_cluster_cannot_hold_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="a trial needs 3 worker"):
        _plan([_node(CPU=2)], workers_per_trial=3)


def _trial(name: str, score: float | None, epochs: int, outcome: str = "completed") -> TrialSummary:
    return TrialSummary(name, f"{name}-run-id", {"lr": 0.1}, epochs, outcome, score, None if epochs == 4 else 1)


@pytest.mark.parametrize(("mode", "best"), [("max", "b"), ("min", "c")])
def test_the_best_trial_is_ranked_by_the_last_value_then_by_epochs(mode: str, best: str) -> None:
    trials = [_trial("a", 0.5, 1, "stopped"), _trial("b", 0.7, 4), _trial("c", 0.4, 4), _trial("d", 0.5, 4)]
    trials.append(_trial("e", None, 0, "failed"))
    settings = SearchSettings(samples=5, max_epochs=4, metric="val_accuracy", mode=mode)
    plan = SearchPlan(BASE, RayOptions(), {}, settings, None)  # type: ignore[arg-type]
    result = results.summarize(plan, "parent", trials, "experiment", started=0.0)
    assert result.best.name == best and [t.name for t in result.trials][-1] == "e"
    if mode == "max":
        assert [t.name for t in result.trials] == ["b", "d", "a", "c", "e"]  # d before a: same score, more epochs
    assert result.trial_epochs == 13 and result.compute_fraction == pytest.approx(13 / 20)
    table = result.table().splitlines()
    assert table[0].split() == ["trial", "run", "lr", "val_accuracy", "epochs", "status"]
    assert "ASHA stopped it at epoch 1" in result.table() and "tune_compute_fraction 0.650" in result.summary()


def test_a_retried_trial_keeps_its_run_when_the_lost_attempt_logged_no_epoch(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    from mltrain import metrics
    from mltrain.launchers.ray.tags import RUN_NAME_TAG

    client = MlflowClient()
    experiment = client.create_experiment("search")
    parent = client.create_run(experiment).info.run_id
    config, options = TrainConfig(engine="lightning", output_dir=str(tmp_path / "outputs")), RayOptions()
    job = trial.TrialJob(config.model_dump(), str(tmp_path), "search", client.tracking_uri, parent)

    def trial_run(trial_id: str) -> str:
        tags = {"mlflow.parentRunId": parent, TRIAL_TAG: trial_id, RUN_NAME_TAG: f"never-reported-{trial_id}"}
        return client.create_run(experiment, tags=tags).info.run_id

    assert trial.earlier_attempt(job, "t0", config, options) == (None, None)  # a first attempt

    # Lost before its first epoch (here it raised: the run has the error): the retry trains in the same run.
    quiet = trial_run("t1")
    client.set_tag(quiet, "mltrain.error", "OperationalError: database is locked")
    client.set_terminated(quiet, "FAILED")
    assert trial.earlier_attempt(job, "t1", config, options) == (None, quiet)
    tags = client.get_run(quiet).data.tags
    assert tags[LOST_ATTEMPTS_TAG] == "1" and "database is locked" in tags["mltrain.tune.lost_attempt.1"]
    assert "mltrain.error" not in tags

    # Lost after logging epochs but before Ray registered a checkpoint: that run ends FAILED, the retry starts anew.
    logged = trial_run("t2")
    client.log_metric(logged, metrics.VAL_LOSS, 2.3, step=0)
    assert trial.earlier_attempt(job, "t2", config, options) == (None, None)
    assert client.get_run(logged).info.status == "FAILED"
