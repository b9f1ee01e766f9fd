"""`mltrain tune` on a real embedded Ray: ASHA stops trials, every trial is a child run, nothing stays RUNNING.

The trials train on CPUs on the tiny synthetic set; a search of 4 samples x 3 epochs takes about a minute here.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

import mlflow
import psutil
import pytest
import torch
from mlflow.tracking import MlflowClient

from mltrain import metrics
from mltrain.search.tags import COMPUTE_FRACTION, EPOCHS_TAG, STOPPED_AT_TAG, STOPPED_TAG, TRIAL_EPOCHS, TRIAL_TAG
from mltrain.tracking import open_client
from tests.helpers import MLTRAIN, TINY_TRAIN, run_cli, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.ray]

CPU = ["--set", "accelerator=cpu"]
PARENT = "mlflow.parentRunId"


def _runs() -> list:
    client = open_client()  # the training may be creating the store right now
    return client.search_runs([exp.experiment_id for exp in client.search_experiments()])


def _epochs(run_id: str, key: str) -> list[int]:
    return sorted(point.step for point in MlflowClient().get_metric_history(run_id, key))


def _last(run_id: str, key: str) -> float:
    history = MlflowClient().get_metric_history(run_id, key)
    return max(history, key=lambda point: point.step).value


@pytest.mark.timeout(420)
def test_asha_search_makes_one_finished_child_per_trial_and_saves_compute(tiny_data: Path) -> None:
    samples, max_epochs = 4, 3
    # Which trials ASHA stops must not depend on timing. The config's seed draws the same lr values every time
    # (0.0125, 0.00057, 0.027, 0.0062), and training is seeded: trial 2 (lr 0.027) has by far the worst val_loss
    # after epoch 1 (val_loss, unlike accuracy on 22 images, never ties). Two at a time, trials 2 and 3 start
    # only when 0 or 1 has ended, so they reach ASHA's first rung after 0 and 1: trial 2 is then below the
    # rung's median, whatever the order within each pair.
    done = run_cli(
        "tune", "--data", str(tiny_data), *TINY_TRAIN, *CPU, "--samples", str(samples),
        "--max-epochs", str(max_epochs), "--grace-period", "1", "--reduction-factor", "2", "--max-concurrent", "2",
        "--search", "lr=loguniform(1e-5,1e-1)", "--metric", "val_loss", "--mode", "min", timeout=400,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-5000:]

    runs = _runs()
    [parent] = [run for run in runs if PARENT not in run.data.tags]
    children = [run for run in runs if run.data.tags.get(PARENT) == parent.info.run_id]
    described = "\n".join(
        f"{run.info.run_id[:8]} {run.info.status} {run.info.run_name} {run.data.tags.get(TRIAL_TAG)} "
        f"{run.data.tags.get('mltrain.error', '')[-300:]}"
        for run in runs
    )
    assert len(runs) == 1 + samples and len(children) == samples, described + "\n" + done.stdout[-6000:]
    assert {run.info.status for run in runs} == {"FINISHED"}, described
    assert len({child.data.tags[TRIAL_TAG] for child in children}) == samples
    assert len({child.data.params["lr"] for child in children}) == samples

    epochs = {}
    for child in children:
        run_id, tags = child.info.run_id, child.data.tags
        ran = _epochs(run_id, metrics.VAL_LOSS)
        for key in metrics.EPOCH_METRICS:  # every epoch it ran, each once
            assert _epochs(run_id, key) == list(range(len(ran))), (key, tags[TRIAL_TAG])
        epochs[run_id] = len(ran)
        assert tags[EPOCHS_TAG] == str(len(ran))
        assert mlflow.pytorch.load_model(tags["mltrain.best_model_uri"])(torch.zeros(1, 3, 64, 64)).shape == (1, 11)
        if tags[STOPPED_TAG] == "true":
            # ASHA stopped it at a rung (1 or 2). Epochs here last 0.3 s: its worker may finish one more before
            # the trial's processes are gone, and the run shows every epoch that ran.
            stopped_at = int(tags[STOPPED_AT_TAG])
            assert stopped_at in (1, 2) and stopped_at <= len(ran) <= stopped_at + 1
            if len(ran) < max_epochs:  # ... or, stopped at the last rung, even its test pass before it was ended
                assert metrics.TEST_ACCURACY not in child.data.metrics
        else:
            assert len(ran) == max_epochs and metrics.TEST_ACCURACY in child.data.metrics
    assert any(child.data.tags[STOPPED_TAG] == "true" for child in children), done.stdout[-3000:]

    trial_epochs = sum(epochs.values())
    assert trial_epochs < samples * max_epochs
    assert parent.data.metrics[TRIAL_EPOCHS] == trial_epochs
    assert parent.data.metrics[COMPUTE_FRACTION] == pytest.approx(trial_epochs / (samples * max_epochs))
    assert parent.data.params["search.lr"] == "loguniform(1e-05,0.1)"
    assert parent.data.params["tune.max_epochs"] == str(max_epochs)

    # The best trial by its last val_loss (ties: the one that ran longer) is the parent's best config.
    best = min(children, key=lambda child: (_last(child.info.run_id, metrics.VAL_LOSS), -epochs[child.info.run_id]))
    assert parent.data.tags["mltrain.tune.best_run_id"] == best.info.run_id
    assert parent.data.params["best.lr"] == best.data.params["lr"]
    assert f"tune_compute_fraction {trial_epochs / (samples * max_epochs):.3f}" in done.stdout
    assert "ASHA stopped it at epoch" in done.stdout and best.info.run_id[:8] in done.stdout

    # The children are ordinary training runs: compare reads them; the best model can be promoted.
    compared = run_cli("compare", "--runs", ",".join(child.info.run_id for child in children), "--out", "cmp")
    assert compared.returncode == 0, compared.stderr
    assert best.info.run_id in Path("cmp/compare.md").read_text()
    promoted = run_cli("registry", "promote", "--metric", "val_loss", "--mode", "min")
    assert promoted.returncode == 0, promoted.stderr
    assert best.info.run_id in promoted.stdout


def _trials_training(count: int, epochs: int) -> dict[str, int] | None:
    """{run id: epochs} of the RUNNING trial runs, once ``count`` of them have logged ``epochs`` epochs."""
    running = {
        run.info.run_id: len(_epochs(run.info.run_id, metrics.VAL_LOSS))
        for run in _runs()
        if PARENT in run.data.tags and run.info.status == "RUNNING"
    }
    return running if sum(logged >= epochs for logged in running.values()) >= count else None


def _trial_processes(driver: psutil.Process) -> list[psutil.Process]:
    """The Tune trial actors (each runs a trial function and owns its Ray Train run)."""

    def is_trial(process: psutil.Process) -> bool:
        with contextlib.suppress(psutil.Error):
            return "ImplicitFunc" in " ".join(process.cmdline()) and process.status() != psutil.STATUS_ZOMBIE
        return False

    return [process for process in driver.children(recursive=True) if is_trial(process)]


@pytest.mark.timeout(480)
def test_a_lost_trial_resumes_its_run_then_ctrl_c_ends_every_run_killed(tiny_data: Path) -> None:
    """Two behaviours in one search (a search spends ~30 s here starting Ray and its first trials).

    A trial's process killed (what losing its node does to it; its Ray Train run goes with it): Tune retries the
    trial, which resumes its own run from its last checkpoint. Then Ctrl+C: the search's run and every trial's
    run end KILLED, and no Ray process of the search is left.
    """
    args = [*TINY_TRAIN, *CPU, "--set", "patience=300", "--samples", "2", "--max-epochs", "300"]
    args += ["--max-concurrent", "2", "--grace-period", "300"]  # ASHA stops nothing: both trials keep training
    process = subprocess.Popen(
        [*MLTRAIN, "tune", "--data", str(tiny_data), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # A harness may start us with SIGINT ignored (background jobs, as in `make test &`); a terminal's is not.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        driver = psutil.Process(process.pid)
        # A few epochs in, so that each trial has reported a checkpoint.
        wait_for(lambda: _trials_training(2, epochs=3), "two trials training", timeout=200, process=process)
        [lost, *_] = wait_for(lambda: _trial_processes(driver), "the trial processes", timeout=30, process=process)
        before = _trials_training(2, epochs=3)
        lost.kill()
        [resumed] = wait_for(
            lambda: [
                run
                for run in _runs()
                if run.data.tags.get("mltrain.resumes") == "1"
                and len(_epochs(run.info.run_id, metrics.VAL_LOSS)) > before.get(run.info.run_id, 0)
            ],
            "the lost trial to resume its run and train on",
            timeout=200,
            process=process,
        )
        ray_processes = driver.children(recursive=True)
        process.send_signal(signal.SIGINT)
        try:
            # Tune stops the trials within _STOP_GRACE_S (60 s), else the driver shuts Ray down.
            output, _ = process.communicate(timeout=240)
        except subprocess.TimeoutExpired as timed_out:
            raise AssertionError(f"Ctrl+C did not end the search:\n{(timed_out.output or b'')[-5000:]!r}") from None
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, output[-5000:]
    assert f"resuming run {resumed.info.run_id} from its checkpoint" in output
    runs = _runs()
    [parent] = [run for run in runs if PARENT not in run.data.tags]
    children = [run for run in runs if run.data.tags.get(PARENT) == parent.info.run_id]
    assert parent.info.status == "KILLED"
    assert len(children) == 2 and {child.info.status for child in children} == {"KILLED"}, output[-3000:]
    for child in children:  # the resumed trial too: every epoch once, none lost to the restart
        ran = _epochs(child.info.run_id, metrics.VAL_LOSS)
        assert ran == list(range(len(ran))) and len(ran) >= 1
    # The search's Ray went with it: no trial, Train controller or worker is left behind.
    _, alive = psutil.wait_procs(ray_processes, timeout=30)
    assert not alive, [process.cmdline()[:3] for process in alive]


def test_malformed_search_exits_2_before_any_ray_work(
    tiny_data: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import ray

    from mltrain.cli import main

    def no_ray(*args: object, **kwargs: object) -> None:
        raise AssertionError("ray.init was called")

    monkeypatch.setattr(ray, "init", no_ray)
    cases = {
        "dropout_probability=uniform(0.5)": "takes two numbers",
        "dropout_probabilty=uniform(0.1,0.5)": "did you mean 'dropout_probability'",
        "dropout_probability=uniform(0.5,2)": "dropout_probability=",
        "batch_size=gaussian(32,64)": "unknown distribution 'gaussian'",
        "batch_size=choice(32,64": "is not of the form",
        "total_epochs=choice(3,4)": "--max-epochs",
    }
    for expression, message in cases.items():
        with pytest.raises(SystemExit) as exited:
            main(["tune", "--data", str(tiny_data), "--search", expression])
        assert exited.value.code == 2, expression
        err = capsys.readouterr().err
        assert err.startswith("error: --search") and message in err and "Traceback" not in err, (expression, err)
    assert not ray.is_initialized()
    assert _runs() == []


@pytest.mark.xfail(
    reason="found by this test, not fixed yet: the `mltrain tune` driver joined to a cluster ended SIGSEGV (-11) "
    "instead of 143 on SIGTERM in a full-suite run (2026-12-07), after ending its runs KILLED",
    strict=False,
)
@pytest.mark.timeout(300)
def test_sigterm_ends_a_search_on_a_cluster_and_its_trial_killed(tiny_data: Path, ray_cluster, tmp_path: Path) -> None:
    """SIGTERM (what `kill` or a scheduler sends) to a search on the session's cluster, its trial placed as asked:
    the search's run and the trial's end KILLED, exit status 128 + 15, nothing of the search left on the cluster."""
    args = [*TINY_TRAIN, *CPU, "--set", "patience=300", "--samples", "1", "--max-epochs", "300"]
    args += ["--workers-per-trial", "1", "--cpus-per-trial", "0.5", "--gpus-per-trial", "0.5"]
    log = tmp_path / "tune.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [*MLTRAIN, "tune", "--data", str(tiny_data), *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **ray_cluster.client_env()},
        )
    try:
        wait_for(lambda: process.poll() is not None or _trials_training(1, epochs=1), "the first epoch", timeout=240)
        assert process.poll() is None, "the search ended before its trial's first epoch"
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=150)
    finally:
        if process.poll() is None:
            process.kill()
        output = log.read_text()
        print(output[-5000:])  # shown if the test fails
    assert process.returncode == 143, output[-5000:]
    assert "terminated (received signal 15)" in output
    runs = _runs()
    [parent] = [run for run in runs if PARENT not in run.data.tags]
    [trial] = [run for run in runs if run.data.tags.get(PARENT) == parent.info.run_id]
    assert (parent.info.status, trial.info.status) == ("KILLED", "KILLED"), output[-3000:]
    asked = {"tune.workers_per_trial": "1", "tune.cpus_per_trial": "0.5", "tune.gpus_per_trial": "0.5"}
    assert {key: parent.data.params.get(key) for key in asked} == asked
    assert trial.data.tags["mltrain.ray.workers"] == "1"
    assert trial.data.tags["mltrain.ray.resources_per_worker"] == "CPU=0.5, GPU=0.5"
    # Nothing of the search stays on the cluster (Ray's own detached actors, its autoscaling coordinator, do).
    wait_for(lambda: not _alive_actors(ray_cluster, SEARCH_ACTORS), "the search's actors to leave the cluster")


SEARCH_ACTORS = ("ImplicitFunc", "TrainController", "RayTrainWorker")
"""The actors of a search: each trial's function, its Ray Train run's controller and workers."""


def _alive_actors(cluster, class_names: tuple[str, ...]) -> list:
    from ray.util.state.common import ListApiOptions, StateResource

    client = cluster.connection().state_client()
    actors = client.list(
        StateResource.ACTORS, options=ListApiOptions(filters=[("state", "=", "ALIVE")]), raise_on_missing_output=False
    )
    return [actor for actor in actors if actor.class_name in class_names]
