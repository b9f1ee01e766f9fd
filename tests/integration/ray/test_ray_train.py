"""`mltrain train --engine ray` on real Ray processes: one MLflow run whatever Ray Train does.

The trainings run on CPUs under logical resources (a worker node may declare a GPU it does not have).
Failures are real: a worker node's processes killed with SIGKILL, or the training worker's process killed.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
from pathlib import Path

import mlflow
import psutil
import pytest
import torch
from mlflow.tracking import MlflowClient

from mltrain import metrics
from mltrain.engines.checkpoint import load_checkpoint
from mltrain.launchers.ray.scratch import scratch_root
from mltrain.tracking import open_client
from tests.helpers import MLTRAIN, TINY_TRAIN, run_cli, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.ray]

RAY = ["--engine", "ray", "--accelerator", "cpu", "--no-progress"]


def _runs() -> list:
    client = open_client()  # the training may be creating the store right now
    return client.search_runs([exp.experiment_id for exp in client.search_experiments()])


def _steps(run_id: str, key: str = metrics.VAL_LOSS) -> list[int]:
    return sorted(m.step for m in MlflowClient().get_metric_history(run_id, key))


def _assert_each_epoch_once(run_id: str, epochs: int) -> None:
    for key in metrics.EPOCH_METRICS:
        assert _steps(run_id, key) == list(range(epochs)), key
    assert _steps(run_id, metrics.TEST_ACCURACY) == [epochs - 1]


def _running_run_with_epochs(count: int) -> str | None:
    for run in _runs():
        if run.info.status == "RUNNING" and len(_steps(run.info.run_id)) >= count:
            return run.info.run_id
    return None


def _actors(cluster, class_name: str, state: str | None = None, job_id: str | None = None) -> list:
    """The cluster's actors of a class (of one Ray job: the session's cluster holds earlier tests' too)."""
    from ray.util.state.common import ListApiOptions, StateResource

    filters = [("class_name", "=", class_name)] + ([("state", "=", state)] if state else [])
    filters += [("job_id", "=", job_id)] if job_id else []
    client = cluster.connection().state_client()
    return client.list(StateResource.ACTORS, options=ListApiOptions(filters=filters), raise_on_missing_output=False)


@pytest.mark.timeout(300)
def test_two_workers_on_a_cluster_make_one_run_with_a_model(tiny_data: Path, ray_cluster) -> None:
    # The cluster named by --address alone (no RAY_ADDRESS, no state file here), the token by the environment.
    args = [*TINY_TRAIN, "--set", "total_epochs=3", *RAY, "--workers", "2", "--address", ray_cluster.address]
    args += ["--run-name", "two-workers"]
    done = run_cli("train", "--data", str(tiny_data), *args, env=ray_cluster.state.auth_env(), timeout=280)
    assert done.returncode == 0, done.stdout + done.stderr
    [run] = _runs()
    run_id = run.info.run_id
    assert run.info.status == "FINISHED" and f"run {run_id}" in done.stdout
    assert run.info.run_name == "two-workers"
    _assert_each_epoch_once(run_id, 3)
    tags = run.data.tags
    assert tags["mltrain.engine"] == "ray" and tags["mltrain.ray.workers"] == "2"
    assert tags["mltrain.ray.restarts"] == "0" and tags["mltrain.ray.resources_per_worker"] == "CPU=1"
    assert run.data.params["workers"] == "2"
    gpu_info = mlflow.artifacts.load_text(f"runs:/{run_id}/{metrics.GPU_INFO_ARTIFACT}")
    node = re.match(r"Ray Train rank-0 worker on node (\S+)", gpu_info)  # written by the worker, not the driver
    assert node and node.group(1) in {worker.ip for worker in ray_cluster.state.workers}, gpu_info[:200]
    assert "system/cpu_utilization_percentage" in run.data.metrics  # sampled on the rank-0 worker's node

    model = mlflow.pytorch.load_model(tags["mltrain.best_model_uri"])
    assert model.eval()(torch.zeros(3, 3, 64, 64)).shape == (3, 11)
    folder = Path("outputs") / run_id  # the latest checkpoint, brought back: `--resume` works from here
    assert {"checkpoint.pt", "last.ckpt", "best.ckpt"} <= {path.name for path in folder.iterdir()}
    assert load_checkpoint(folder)["state"].finished
    storage = Path("outputs/ray") / tags["mltrain.ray.run_name"]
    assert len([path for path in storage.glob("checkpoint_*") if path.is_dir()]) == 3  # the last 3 of 4 reports


@pytest.mark.timeout(420)
def test_failover_to_the_other_node_continues_the_same_run(tiny_data: Path, ray_cluster) -> None:
    cluster = ray_cluster
    epochs = 20
    train = [*TINY_TRAIN, "--set", f"total_epochs={epochs}", "--set", "patience=100", *RAY, "--max-failures", "2"]
    env = cluster.client_env()
    submitted = run_cli("submit", "--no-wait", "--", *MLTRAIN, "train", "--data", str(tiny_data), *train, env=env)
    assert submitted.returncode == 0, submitted.stderr
    job = re.search(r"raysubmit_\w+", submitted.stdout).group(0)

    # After a few reported epochs, kill -9 every process of the node the training worker runs on.
    run_id = wait_for(lambda: _running_run_with_epochs(3), "three epochs in MLflow", timeout=240)
    [worker] = _actors(cluster, "RayTrainWorker", "ALIVE")
    names = {node_id: name for name, node_id in cluster.node_ids().items()}
    lost = int(names[worker.node_id].removeprefix("worker-"))
    cluster.stop_worker(lost)

    # The checkpoint Ray hands back to the restarted worker (read now: Ray keeps only the last few).
    handed_back_path = wait_for(
        lambda: MlflowClient().get_run(run_id).data.tags.get("mltrain.ray.restart.1.checkpoint"),
        "the restart",
        timeout=180,
    )
    handed_back = load_checkpoint(Path(handed_back_path))["state"]

    client = cluster.connection().jobs_client()
    wait_for(lambda: client.get_job_status(job).is_terminal(), "the job to end", timeout=300, interval=2)
    assert client.get_job_status(job).value == "SUCCEEDED", client.get_job_logs(job)[-5000:]

    run = MlflowClient().get_run(run_id)
    assert run.info.status == "FINISHED" and len(_runs()) == 1
    _assert_each_epoch_once(run_id, epochs)
    tags = run.data.tags
    assert tags["mltrain.ray.restarts"] == "1"
    # It resumed from the checkpoint Ray handed back: the first epoch after the restart is the one after it.
    resumed_at = int(re.match(r"epoch (\d+); first step at (\S+)", tags["mltrain.ray.restart.1"]).group(1))
    assert resumed_at == handed_back.next_epoch >= 1  # (how soon: benchmarks/recovery.py)
    # ... on the other node.
    ray_job = client.get_job_info(job).job_id
    workers = _actors(cluster, "RayTrainWorker", job_id=ray_job)
    restarted = [actor for actor in workers if actor.node_id != worker.node_id]
    assert restarted and {names.get(actor.node_id) for actor in restarted} == {f"worker-{1 - lost}"}
    # The killed worker could not remove its scratch folder (≈ 70 MB); the driver, on this host, did.
    assert not _scratch_of(run_id)


def _scratch_of(run_id: str) -> list[Path]:
    return list(scratch_root().glob(f"{run_id[:12]}-*"))


def _training_worker_pids(driver: psutil.Process) -> list[int]:
    """The Ray Train worker actors among the driver's descendants (not their data-loader children)."""

    def is_worker(process: psutil.Process) -> bool:
        with contextlib.suppress(psutil.Error):
            return "RayTrainWorker" in " ".join(process.cmdline()) and process.status() != psutil.STATUS_ZOMBIE
        return False

    return [
        child.pid for child in driver.children(recursive=True) if is_worker(child) and not is_worker(child.parent())
    ]


def _kill_training_worker_after(process: subprocess.Popen, steps: int) -> str:
    run_id = wait_for(lambda: _running_run_with_epochs(steps), f"{steps} epochs in MLflow", timeout=240)
    driver = psutil.Process(process.pid)
    [pid] = wait_for(lambda: _training_worker_pids(driver), "the training worker", timeout=60)
    os.kill(pid, signal.SIGKILL)
    return run_id


@pytest.mark.timeout(600)
def test_s3_checkpoints_restart_and_a_run_beyond_max_failures_fails_then_resumes(
    tiny_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import boto3
    from moto.server import ThreadedMotoServer

    from mltrain.cluster.ports import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        s3_env = {
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        for name, value in s3_env.items():
            monkeypatch.setenv(name, value)
        bucket = boto3.client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL"])
        bucket.create_bucket(Bucket="ray")
        epochs = 24
        args = [*TINY_TRAIN, "--set", f"total_epochs={epochs}", "--set", "patience=100", *RAY]
        args += ["--storage", "s3://ray/checkpoints", "--max-failures", "1"]
        process = subprocess.Popen(
            [*MLTRAIN, "train", "--data", str(tiny_data), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            run_id = _kill_training_worker_after(process, 2)  # Ray restarts it from the checkpoint in S3...
            wait_for(
                lambda: MlflowClient().get_run(run_id).data.tags.get("mltrain.ray.restart.1"), "a restart", timeout=180
            )
            seen = len(_steps(run_id))
            _kill_training_worker_after(process, seen + 1)  # ... and gives up on the second failure
            output, _ = process.communicate(timeout=240)
        finally:
            if process.poll() is None:
                process.kill()
        assert process.returncode == 1, output
        run = MlflowClient().get_run(run_id)
        assert run.info.status == "FAILED"
        assert run.data.tags["mltrain.ray.restart.1.checkpoint"].startswith("ray/checkpoints/")  # read from S3
        keys = [o["Key"] for o in bucket.list_objects_v2(Bucket="ray", Prefix="checkpoints/")["Contents"]]
        assert any(key.endswith("/checkpoint.pt") for key in keys) and any(key.endswith("/last.ckpt") for key in keys)
        folder = Path("outputs") / run_id
        assert f"mltrain train --resume {folder}" in output
        done_before = load_checkpoint(folder)["state"].next_epoch
        # Ray's latest *registered* checkpoint (registration lags the reports by an epoch or two here)
        assert 1 <= done_before < epochs and mlflow.pytorch.load_model(run.data.tags["mltrain.best_model_uri"])

        resumed = run_cli("train", "--resume", str(folder), "--no-progress", timeout=400)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        run = MlflowClient().get_run(run_id)
        assert run.info.status == "FINISHED" and len(_runs()) == 1
        _assert_each_epoch_once(run_id, epochs)
        assert not _scratch_of(run_id)  # two workers were killed; their folders went too
    finally:
        server.stop()


@pytest.mark.timeout(420)
def test_three_half_gpu_trainings_run_at_once_on_two_gpus(tiny_data: Path, ray_cluster) -> None:
    cluster = ray_cluster
    env = cluster.client_env()
    mlflow.set_experiment(metrics.EXPERIMENT)  # the store exists before three drivers open it at once
    args = [*TINY_TRAIN, "--set", "total_epochs=200", "--set", "patience=200", *RAY]
    args += ["--gpus-per-worker", "0.5", "--cpus-per-worker", "0.5"]
    jobs = []
    for _ in range(3):
        done = run_cli("submit", "--no-wait", "--", *MLTRAIN, "train", "--data", str(tiny_data), *args, env=env)
        assert done.returncode == 0, done.stderr
        jobs.append(re.search(r"raysubmit_\w+", done.stdout).group(0))
    client = cluster.connection().jobs_client()
    try:
        try:
            workers = wait_for(
                lambda: len(alive := _actors(cluster, "RayTrainWorker", "ALIVE")) == 3 and alive,
                "3 at once",
                timeout=300,
            )
        except AssertionError:
            states = {job: client.get_job_status(job).value for job in jobs}
            ended = [job for job, state in states.items() if state != "RUNNING"] or jobs[:1]
            logs = "\n".join(f"--- {job}\n{client.get_job_logs(job)[-3000:]}" for job in ended)
            raise AssertionError(f"{states}\n{logs}") from None
        # 1.5 of the cluster's 2 GPUs in use: two trainings share one GPU.
        per_node = {}
        for actor in workers:
            per_node[actor.node_id] = per_node.get(actor.node_id, 0) + 1
        assert sorted(per_node.values()) == [1, 2]
    finally:
        for job in jobs:
            client.stop_job(job)
        for job in jobs:
            wait_for(
                lambda job=job: client.get_job_status(job).is_terminal(), "the job to stop", timeout=120, interval=2
            )
    # A stopped job's driver ends its run KILLED (within the stop grace period), never leaving it RUNNING.
    assert [run.info.status for run in _runs()] == ["KILLED"] * 3


@pytest.mark.timeout(120)
def test_a_worker_no_node_can_hold_exits_2_before_any_run(tiny_data: Path, ray_cluster) -> None:
    # Each node of the session's cluster has 1 CPU: Ray would leave such a worker waiting for ever.
    args = [*TINY_TRAIN, *RAY, "--cpus-per-worker", "4"]
    done = run_cli("train", "--data", str(tiny_data), *args, env=ray_cluster.client_env(), timeout=100)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    [error] = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert error.startswith("error: asks for 4 CPUs; the largest node has 1 CPU (worker-"), error
    assert "--cpus-per-worker" in error
    assert _runs() == [], "no MLflow run is made for a training that cannot start"
