"""`mltrain submit` and `mltrain jobs` on one local cluster (head + 2 workers, 1 CPU and 1 logical GPU
each): a training job end to end, refused and pending requests, waiting reports, token auth, metrics."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from mlflow.tracking import MlflowClient

from mltrain import metrics
from mltrain.cluster import jobs
from mltrain.cluster.local import LocalCluster
from mltrain.cluster.status import cluster_status, pending_demands
from tests.helpers import MLTRAIN, TINY_TRAIN, run_cli, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.ray]


@pytest.fixture
def on_cluster(ray_cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch) -> LocalCluster:
    """The module's cluster, found by mltrain through its state folder."""
    monkeypatch.setenv("MLTRAIN_CLUSTER_DIR", str(ray_cluster.cluster_dir))
    return ray_cluster


def _status(cluster: LocalCluster, job: str) -> str:
    return str(jobs.job_info(cluster.connection(), job).status)


@pytest.mark.timeout(400)
def test_training_job_succeeds_and_is_tracked(on_cluster: LocalCluster, tiny_data: Path, isolated_env: Path) -> None:
    cache = isolated_env / "cache"  # holds the session's hue tables already; --env brings it to the job
    done = run_cli(
        "submit", "--cpus", "1", "--env", f"MLTRAIN_CACHE_DIR={cache}", "--",
        "mltrain", "train", *TINY_TRAIN, "--no-progress",
        env={"FOOD11_DATA_DIR": str(tiny_data)},  # no --data: the job finds the set through the forwarded variable
        timeout=380,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert re.search(r"job raysubmit_\w+ SUCCEEDED", done.stderr)
    assert "test_accuracy" in done.stdout, "the job's output is followed to its end"

    client = MlflowClient()  # MLFLOW_TRACKING_URI of this test, forwarded to the job
    experiment = client.get_experiment_by_name(metrics.EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].info.run_id in done.stdout
    assert [m.step for m in client.get_metric_history(runs[0].info.run_id, metrics.VAL_LOSS)] == [0, 1]
    assert list(cache.rglob("images.u8")), "the decoded-image cache went where --env said"


def test_impossible_requests_are_refused(on_cluster: LocalCluster) -> None:
    before = len(jobs.list_jobs(on_cluster.connection()))
    for flags, message in (
        (["--gpus", "2"], "asks for 2 GPUs; the largest node has 1 GPU"),
        (["--cpus", "4", "--gpus", "1"], "asks for 4 CPUs, 1 GPU; the largest node has 1 CPU, 1 GPU"),
        (["--resources", '{"bigmem": 1}'], "asks for 1 bigmem; the largest node has 0 bigmem"),
    ):
        done = run_cli("submit", *flags, "--", "python", "-c", "pass")
        assert done.returncode == 2, done.stderr
        error = done.stderr.strip().splitlines()[-1]
        assert error.startswith(f"error: {message} (worker-"), error
        assert "--allow-pending" in error and "Traceback" not in done.stderr
    assert len(jobs.list_jobs(on_cluster.connection())) == before, "nothing was submitted"


@pytest.mark.timeout(120)
def test_allow_pending_submits_and_stop_ends_it(on_cluster: LocalCluster) -> None:
    done = run_cli("submit", "--gpus", "2", "--allow-pending", "--no-wait", "--", "sleep", "600")
    assert done.returncode == 0, done.stderr
    job = done.stdout.strip()
    connection = on_cluster.connection()
    # Once its demand is on the cluster, the job waits for a node that will never come: PENDING, not failed.
    wait_for(lambda: any(d.resources == {"GPU": 2.0} for d in pending_demands(connection)), "the demand", timeout=30)
    assert _status(on_cluster, job) == "PENDING"
    assert cluster_status(connection).jobs == {job: "PENDING"}

    stopped = run_cli("jobs", "stop", job)
    assert stopped.returncode == 0, stopped.stderr
    assert "stopped before it started" in stopped.stdout
    assert _status(on_cluster, job) == "FAILED"  # how Ray records a job whose supervisor was killed
    wait_for(lambda: not any(d.resources == {"GPU": 2.0} for d in pending_demands(connection)), "no demand", timeout=30)


@pytest.mark.timeout(180)
def test_a_job_that_must_wait_is_reported_then_runs(on_cluster: LocalCluster, tmp_path: Path) -> None:
    connection = on_cluster.connection()
    blockers = []
    for worker in (0, 1):
        request = jobs.JobRequest(["sleep", "600"], cpus=1, labels={"mltrain.io/worker": str(worker)})
        blockers.append(jobs.submit(connection, request))
    wait_for(lambda: all(_status(on_cluster, job) == "RUNNING" for job in blockers), "the blockers to run", timeout=60)

    log = tmp_path / "submit.err"
    with open(log, "w") as err:
        waiting = subprocess.Popen(
            [*MLTRAIN, "submit", "--cpus", "1", "--", "python", "-c", "print('third ran')"],
            stdout=subprocess.PIPE, stderr=err, text=True, env=os.environ.copy(),
        )  # fmt: skip
        try:
            wait_for(
                lambda: "pending demands on the cluster: 1 CPU x1" in log.read_text(), "a waiting report", timeout=60
            )
            assert waiting.poll() is None
            jobs.stop_job(connection, blockers[0])
            out, _ = waiting.communicate(timeout=90)
        finally:
            waiting.kill()
            for job in blockers:
                jobs.stop_job(connection, job)
    assert waiting.returncode == 0, log.read_text()
    assert "third ran" in out
    assert "waiting: job raysubmit_" in log.read_text() and "SUCCEEDED" in log.read_text()


@pytest.mark.timeout(120)
def test_working_dir_is_uploaded_and_env_given(on_cluster: LocalCluster, tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "hello.py").write_text(
        "import os\nprint('hello from', os.path.basename(os.getcwd()), os.environ['WHO'])\n"
    )
    done = run_cli("submit", "--working-dir", str(project), "--env", "WHO=mltrain", "--", "python", "hello.py")
    assert done.returncode == 0, done.stderr
    assert re.search(r"hello from \S+ mltrain", done.stdout), done.stdout

    # The ended job's log stays readable; an unknown id is one clear line.
    job = re.search(r"submitted job (raysubmit_\w+)", done.stderr).group(1)
    logs = run_cli("jobs", "logs", job)
    assert logs.returncode == 0, logs.stderr
    assert re.search(r"hello from \S+ mltrain", logs.stdout), logs.stdout
    unknown = run_cli("jobs", "logs", "raysubmit_NoSuchJob")
    assert unknown.returncode == 2 and "Traceback" not in unknown.stderr, unknown.stderr
    assert unknown.stderr.startswith(f"error: no job raysubmit_NoSuchJob on the cluster at {on_cluster.dashboard_url}")
    # --address alone names the cluster (no state file here), with the token named in the environment.
    elsewhere = {"MLTRAIN_CLUSTER_DIR": str(tmp_path / "no-cluster"), **on_cluster.state.auth_env()}
    listed = run_cli("jobs", "list", "--address", on_cluster.dashboard_url, env=elsewhere)
    assert listed.returncode == 0, listed.stderr
    assert re.search(rf"^{job}\s+SUCCEEDED\s.*python hello\.py$", listed.stdout, re.M), listed.stdout


def test_requests_without_the_token_are_refused(on_cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    url = f"{on_cluster.dashboard_url}/api/jobs/"
    assert requests.get(url, timeout=10).status_code == 401
    assert requests.get(url, headers={"Authorization": "Bearer not-the-token"}, timeout=10).status_code == 403
    assert requests.get(url, headers=on_cluster.connection().headers(), timeout=10).status_code == 200
    with pytest.raises(AuthenticationError):
        JobSubmissionClient(on_cluster.dashboard_url).list_jobs()

    monkeypatch.setenv("RAY_AUTH_TOKEN", "not-the-token")  # an explicit token wins over the state file's
    done = run_cli("jobs", "list")
    assert done.returncode == 2
    assert "refused the token (token from RAY_AUTH_TOKEN)" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.timeout(120)
def test_ray_init_joins_with_the_recorded_token(on_cluster: LocalCluster) -> None:
    # What `mltrain train --engine ray` does: find the cluster and its token, join, leave.
    script = (
        "import ray\n"
        "from mltrain.cluster import client_auth, resolve_address, resolve_cluster\n"
        "with client_auth(resolve_cluster()):\n"
        "    ray.init(address=resolve_address(), logging_level='ERROR')\n"
        "    print('GPUs', ray.cluster_resources().get('GPU'))\n"
        "    ray.shutdown()\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=100)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "GPUs 2.0" in done.stdout


@pytest.mark.timeout(90)
def test_head_exports_prometheus_metrics(on_cluster: LocalCluster) -> None:
    def node_metrics() -> bool:
        try:
            text = requests.get(on_cluster.state.metrics_url, timeout=5).text
        except requests.RequestException:
            return False
        return "ray_node_cpu_utilization" in text and "ray_node_mem_used" in text

    wait_for(node_metrics, "Ray's node metrics on the head's Prometheus endpoint", timeout=60)
    text = requests.get(on_cluster.state.metrics_url, timeout=5).text
    assert re.search(r'^ray_node_mem_used\{.*SessionName="session_', text, re.MULTILINE)


@pytest.mark.timeout(120)
def test_cluster_env_exports_the_clusters_address_and_token(on_cluster: LocalCluster, tmp_path: Path) -> None:
    state = on_cluster.state
    mltrain = shlex.join(MLTRAIN)
    # In a shell that evaluates the exports, a client finds the cluster with no state file: through RAY_ADDRESS.
    script = (
        f'exports="$({mltrain} cluster env)" && echo "$exports" && eval "$exports" && '
        'echo "seen: $RAY_ADDRESS $RAY_AUTH_MODE $RAY_AUTH_TOKEN_PATH" && '
        f"MLTRAIN_CLUSTER_DIR={shlex.quote(str(tmp_path / 'no-cluster'))} {mltrain} cluster status"
    )
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=100)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"seen: {state.dashboard_url} token {state.token_path}\n" in done.stdout
    assert f"# GCS address, for `ray status --address` or `ray start --address`: {state.address}\n" in done.stdout
    assert f"cluster at {state.dashboard_url} (from RAY_ADDRESS)" in done.stdout
    assert re.search(r"^head\s+ALIVE", done.stdout, re.M), done.stdout  # (a worker may show "(+1 earlier)")
