"""`registry promote/pull/list` on real MLflow stores holding two tiny trained runs.

Training twice per module is the slow part, so the runs are trained once into a module store and
every test works on its own copy of that store (the artifacts are shared and only read). Which run is
"better" is set explicitly by logging a newer test_accuracy value, so the outcomes are deterministic.
"""

import itertools
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from mltrain import metrics
from mltrain.config import TrainConfig
from mltrain.errors import RegistryError
from mltrain.registry import best_run, list_versions, promote, pull
from mltrain.tracking import BEST_MODEL_TAG
from mltrain.training import train
from tests.helpers import TINY_TRAIN, run_cli

pytestmark = pytest.mark.integration

MODEL = metrics.MODEL_NAME
_steps = itertools.count(1)


@dataclass
class TrainedStore:
    database: Path
    first: str
    second: str


@dataclass
class Store:
    client: MlflowClient
    first: str
    second: str


@pytest.fixture(scope="module")
def trained_store(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainedStore:
    """Two finished tiny runs (seeds 1 and 2) in a module-wide sqlite store."""
    root = tmp_path_factory.mktemp("registry-store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.setenv("MLTRAIN_CACHE_DIR", str(root / "cache"))
        patch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")
        mlflow.set_tracking_uri(uri)
        run_ids = []
        for seed in (1, 2):
            overrides = [*TINY_TRAIN[1::2], f"seed={seed}", f"output_dir={root / 'outputs'}"]
            run_ids.append(train(TrainConfig.build(overrides=overrides), data_dir=tiny_data, progress=False).run_id)
    return TrainedStore(root / "mlflow.db", *run_ids)


@pytest.fixture
def store(trained_store: TrainedStore, isolated_env: Path) -> Store:
    """This test's own copy of the trained store, at the URI isolated_env already points MLflow at."""
    # The backup API copies a consistent snapshot, including anything still in a write-ahead log.
    with sqlite3.connect(trained_store.database) as source, sqlite3.connect(isolated_env / "mlflow.db") as target:
        source.backup(target)
    return Store(MlflowClient(), trained_store.first, trained_store.second)


def _set(run_id: str, value: float, key: str = metrics.TEST_ACCURACY) -> None:
    """Make ``value`` the run's latest ``key`` (a higher step than anything logged before)."""
    MlflowClient().log_metric(run_id, key, value, step=1000 + next(_steps))


def _staging(client: MlflowClient, alias: str = "staging") -> int:
    return int(client.get_model_version_by_alias(MODEL, alias).version)


def _version_count(client: MlflowClient) -> int:
    return len(client.search_model_versions(f"name = '{MODEL}'"))


@pytest.fixture
def ranked(store: Store) -> Iterator[Store]:
    """The first run is better (0.5) than the second (0.3)."""
    _set(store.first, 0.5)
    _set(store.second, 0.3)
    yield store


@pytest.mark.timeout(300)
def test_promote_registers_version_1_then_holds_for_the_same_run(ranked: Store) -> None:
    result = promote()
    assert result.promoted and result.version == 1 and result.run_id == ranked.first
    assert result.previous_version is None and result.value == pytest.approx(0.5)
    version = ranked.client.get_model_version(MODEL, "1")
    assert version.source == ranked.client.get_run(ranked.first).data.tags[BEST_MODEL_TAG]
    assert version.tags[metrics.TEST_ACCURACY] == "0.5" and version.tags["mltrain.source_run_id"] == ranked.first
    assert _staging(ranked.client) == 1

    again = promote()
    assert not again.promoted and again.version == 1 and "nothing changed" in again.message
    assert _version_count(ranked.client) == 1 and _staging(ranked.client) == 1


@pytest.mark.timeout(300)
def test_better_run_moves_the_alias_only_past_min_improvement(ranked: Store) -> None:
    promote()
    _set(ranked.second, 0.55)

    gated = promote(min_improvement=0.1)
    assert not gated.promoted and gated.version == 1
    assert "0.5500" in gated.message and "0.5000" in gated.message and "nothing changed" in gated.message
    assert _version_count(ranked.client) == 1

    done = run_cli("registry", "promote", "--min-improvement", "0.01")
    assert done.returncode == 0, done.stderr
    assert f"staging -> version 2 (source run {ranked.second})" in done.stdout
    assert _staging(ranked.client) == 2
    assert ranked.client.get_model_version(MODEL, "2").run_id == ranked.second


@pytest.mark.timeout(300)
def test_worse_best_run_leaves_the_alias(ranked: Store) -> None:
    promote()
    ranked.client.delete_run(ranked.first)  # the champion's run leaves the experiment; the best left is worse

    result = promote()
    assert best_run().info.run_id == ranked.second
    assert not result.promoted and result.version == 1 and result.run_id == ranked.second
    assert result.previous_value == pytest.approx(0.5) and "0.3000" in result.message
    assert _staging(ranked.client) == 1 and _version_count(ranked.client) == 1


@pytest.mark.timeout(300)
def test_second_alias_reuses_the_version_and_min_mode_ranks_by_loss(ranked: Store) -> None:
    promote()
    production = promote(alias="production")
    assert production.promoted and production.version == 1 and "reused" in production.message
    assert _version_count(ranked.client) == 1 and _staging(ranked.client, "production") == 1

    _set(ranked.first, 0.9, metrics.TEST_LOSS)
    _set(ranked.second, 0.2, metrics.TEST_LOSS)
    by_loss = promote(metric=metrics.TEST_LOSS, mode="min", alias="low-loss")
    assert by_loss.run_id == ranked.second and by_loss.version == 2


@pytest.mark.timeout(300)
def test_run_without_the_tag_falls_back_to_its_logged_models(ranked: Store) -> None:
    tagged = ranked.client.get_run(ranked.first).data.tags[BEST_MODEL_TAG]
    ranked.client.delete_tag(ranked.first, BEST_MODEL_TAG)
    assert promote().promoted
    # the tag always names the run's latest logged model, which the fallback picks too
    assert ranked.client.get_model_version(MODEL, "1").source == tagged


@pytest.mark.timeout(300)
def test_pull_by_alias_version_and_default_then_predict(ranked: Store, tmp_path: Path) -> None:
    promote()
    _set(ranked.second, 0.8)
    promote()

    assert pull(alias="staging", dest=tmp_path / "a") == (tmp_path / "a" / "food11-v2").resolve()
    by_version = pull(version=1, dest=tmp_path / "b")
    assert by_version == (tmp_path / "b" / "food11-v1").resolve() and (by_version / "MLmodel").is_file()
    done = run_cli("registry", "pull", "--dest", "models")  # default: the highest version
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(Path("models/food11-v2").resolve())

    model = mlflow.pytorch.load_model(done.stdout.strip())
    for batch in (1, 3, 5):
        assert model(torch.zeros(batch, 3, 64, 64)).shape == (batch, 11)


@pytest.mark.timeout(300)
def test_list_shows_versions_aliases_and_metric(ranked: Store) -> None:
    promote()
    _set(ranked.second, 0.8)
    promote()

    versions = list_versions()
    assert [(v.version, v.aliases, v.run_id) for v in versions] == [
        (2, ["staging"], ranked.second),
        (1, [], ranked.first),
    ]
    assert [v.value for v in versions] == [pytest.approx(0.8), pytest.approx(0.5)]
    assert all(v.source.startswith("models:/m-") and v.created.year >= 2024 for v in versions)

    done = run_cli("registry", "list")
    assert done.returncode == 0, done.stderr
    header, newest, oldest = done.stdout.splitlines()
    assert header.split() == ["version", "aliases", "test_accuracy", "source", "run", "created"]
    assert newest.split()[:4] == ["2", "staging", "0.8000", ranked.second]
    assert oldest.split()[:4] == ["1", "-", "0.5000", ranked.first]


# --- errors, as a user meets them -------------------------------------------------------------------------
def _assert_user_error(done, *fragments: str) -> None:
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and "Traceback" not in done.stderr, done.stderr
    for fragment in fragments:
        assert fragment in lines[-1]


@pytest.mark.timeout(120)
def test_errors_without_a_registered_model() -> None:
    client = MlflowClient()
    experiment_id = client.create_experiment("untrained")
    no_metric = client.create_run(experiment_id).info.run_id
    client.set_terminated(no_metric, "FINISHED")
    running = client.create_run(experiment_id).info.run_id
    client.log_metric(running, metrics.TEST_ACCURACY, 0.9)  # RUNNING: does not count

    _assert_user_error(run_cli("registry", "promote", "--experiment", "nope"), "experiment named 'nope'")
    _assert_user_error(
        run_cli("registry", "promote", "--experiment", "untrained"),
        "FINISHED run with metric 'test_accuracy'",
        "'untrained'",
    )
    client.log_metric(no_metric, metrics.TEST_ACCURACY, 0.4)  # finished, with the metric, but no model
    _assert_user_error(run_cli("registry", "promote", "--experiment", "untrained"), no_metric, "logged a model")
    _assert_user_error(run_cli("registry", "list", "--model", "nope"), "registered model named 'nope'")
    _assert_user_error(run_cli("compare", "--runs", f"{no_metric},deadbeef"), "unknown: deadbeef")
    client.create_experiment("empty")
    _assert_user_error(run_cli("compare", "--experiment", "empty"), "FINISHED run in experiment 'empty'")


@pytest.mark.timeout(300)
def test_errors_naming_versions_and_aliases(ranked: Store) -> None:
    promote()
    _assert_user_error(run_cli("registry", "pull", "--model", "nope"), "registered model named 'nope'", "'food11'")
    _assert_user_error(run_cli("registry", "pull", "--alias", "prod"), "no 'prod'", "'staging' (version 1)")
    _assert_user_error(run_cli("registry", "pull", "--version", "7"), "no version 7", "among 1")
    _assert_user_error(run_cli("registry", "pull", "--alias", "staging", "--version", "1"), "found both")
    with pytest.raises(RegistryError, match="mode 'max' or 'min'"):
        promote(mode="highest")
    with pytest.raises(RegistryError, match="min_improvement >= 0"):
        promote(min_improvement=-0.1)
