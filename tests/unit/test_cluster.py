"""mltrain.cluster without Ray processes: feasibility messages, runtime environments, where the address
and the token come from, the state file, GPU splitting, demand parsing, and the CLI's usage errors."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from mltrain import env
from mltrain.cli import main
from mltrain.cluster import loopback, processes
from mltrain.cluster import nodes as cluster_nodes
from mltrain.cluster.capacity import NodeResources
from mltrain.cluster.connection import client_auth, embedded_auth, resolve_address, resolve_cluster
from mltrain.cluster.jobs import JobRequest, check_feasible, describe, read_requirements
from mltrain.cluster.local import ClusterSpec
from mltrain.cluster.state import ClusterState, NodeRecord, load_state, save_state
from mltrain.cluster.status import demands_from_report
from mltrain.errors import ClusterError, InfeasibleRequest


def _node(name: str, state: str = "ALIVE", labels: dict[str, str] | None = None, **resources: float) -> NodeResources:
    return NodeResources(name, state == "ALIVE", resources, labels or {}, node_id=f"{name}-id")


LAB = [_node("head"), _node("worker-0", CPU=8, GPU=1), _node("worker-1", CPU=8, GPU=1)]


# ---- feasibility ----------------------------------------------------------------------------------------------


def test_a_request_some_node_fits_passes() -> None:
    check_feasible({"GPU": 1.0, "CPU": 8.0}, {}, LAB)
    check_feasible({"GPU": 0.5}, {}, LAB)
    check_feasible({}, {}, LAB)


@pytest.mark.parametrize(
    ("wanted", "message"),
    [
        ({"GPU": 2.0}, "asks for 2 GPUs; the largest node has 1 GPU (worker-"),
        ({"CPU": 16.0}, "asks for 16 CPUs; the largest node has 8 CPUs (worker-"),
        ({"GPU": 1.0, "CPU": 9.0}, "asks for 1 GPU, 9 CPUs; the largest node has 1 GPU, 8 CPUs (worker-"),
        ({"bigmem": 1.0}, "asks for 1 bigmem; the largest node has 0 bigmem (worker-"),
    ],
)
def test_an_impossible_request_names_itself_and_the_largest_node(wanted: dict[str, float], message: str) -> None:
    with pytest.raises(InfeasibleRequest) as raised:
        check_feasible(wanted, {}, LAB)
    assert str(raised.value).startswith(message)
    assert "--allow-pending" in str(raised.value) and raised.value.exit_code == 2


def test_the_largest_node_is_the_one_that_comes_nearest() -> None:
    nodes = [_node("small", CPU=2, GPU=1), _node("big", CPU=32, GPU=2), _node("cpu", CPU=64)]
    with pytest.raises(InfeasibleRequest, match=r"asks for 4 GPUs; the largest node has 2 GPUs \(big\)"):
        check_feasible({"GPU": 4.0}, {}, nodes)


def test_a_dead_node_that_would_fit_is_mentioned() -> None:
    nodes = [_node("head"), _node("worker-0", CPU=1), _node("worker-1", state="DEAD", CPU=1, GPU=1)]
    with pytest.raises(InfeasibleRequest, match=r"worker-1 could run it but is dead: start it again"):
        check_feasible({"GPU": 1.0}, {}, nodes)


def test_labels_must_match() -> None:
    nodes = [_node("worker-0", labels={"mltrain.io/worker": "0"}, CPU=1)]
    check_feasible({"CPU": 1.0}, {"mltrain.io/worker": "0"}, nodes)
    with pytest.raises(InfeasibleRequest, match=r"no live node carries that label \(labels: mltrain.io/worker=0\)"):
        check_feasible({"CPU": 1.0}, {"mltrain.io/worker": "3"}, nodes)


def test_describe_counts_cpus_and_gpus() -> None:
    assert describe({"GPU": 1.0, "CPU": 2.0, "bigmem": 0.5}) == "1 GPU, 2 CPUs, 0.5 bigmem"


# ---- job requests -------------------------------------------------------------------------------------------


def test_runtime_env_forwards_data_tracking_and_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FOOD11_DATA_DIR", "Food-11")  # relative: made absolute for the job
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "pw")
    monkeypatch.setenv("UNRELATED", "x")
    request = JobRequest(
        ["mltrain", "train"], env={"MLFLOW_TRACKING_USERNAME": "bob"}, pip=["requests"], working_dir=str(tmp_path)
    )
    runtime = request.runtime_env()
    assert runtime["env_vars"] == {
        "FOOD11_DATA_DIR": str(tmp_path / "Food-11"),  # the test runs in tmp_path
        "MLFLOW_TRACKING_URI": "http://mlflow:5000",
        "MLFLOW_TRACKING_USERNAME": "bob",  # --env wins
        "MLFLOW_TRACKING_PASSWORD": "pw",
        "RAY_JOB_STOP_WAIT_TIME_S": "30",  # time for a stopped training to end its run KILLED
    }
    assert runtime["pip"] == ["requests"] and runtime["working_dir"] == str(tmp_path)


def test_job_request_checks_and_resources(tmp_path: Path) -> None:
    request = JobRequest(["python", "-c", "print('a b')"], cpus=1, gpus=0.5, resources={"bigmem": 1})
    assert request.entrypoint == "python -c 'print('\"'\"'a b'\"'\"')'"
    assert request.wanted() == {"CPU": 1.0, "GPU": 0.5, "bigmem": 1.0}
    assert JobRequest(["true"]).wanted() == {}
    with pytest.raises(ClusterError, match="expected a command"):
        JobRequest([])
    with pytest.raises(ClusterError, match="non-negative amount for gpus"):
        JobRequest(["true"], gpus=-1)
    with pytest.raises(ClusterError, match="--working-dir"):
        JobRequest(["true"], working_dir=str(tmp_path / "missing"))


def test_read_requirements_drops_comments(tmp_path: Path) -> None:
    path = tmp_path / "requirements.txt"
    path.write_text("# tools\nrequests==2.32.0  # http\n\nlightning\n")
    assert read_requirements(path) == ["requests==2.32.0", "lightning"]
    with pytest.raises(ClusterError, match="requirements file"):
        read_requirements(tmp_path / "nope.txt")


# ---- state file, address and token ----------------------------------------------------------------------


def _state(tmp_path: Path, token: bool = True) -> ClusterState:
    node = NodeRecord("head", 1, 0.0, "/tmp/x", "/tmp/x/log", {"port": 40000}, 0, 0)
    token_path = tmp_path / "auth_token"
    token_path.write_text("the-token\n")
    return ClusterState(
        cluster_id="abc",
        address="192.0.2.2:40000",
        dashboard_url="http://127.0.0.1:41000",
        metrics_url="http://127.0.0.1:42000/metrics",
        token_path=str(token_path) if token else None,
        temp_root="/tmp/x",
        object_store_bytes=100,
        created="now",
        head=node,
        workers=[NodeRecord("worker-0", 2, 0.0, "/tmp/x", "/tmp/x/log", {}, 1, 1, {"bigmem": 1.0})],
    )


def test_state_round_trip_and_errors(tmp_path: Path) -> None:
    state = _state(tmp_path)
    path = save_state(state, tmp_path)
    assert path == tmp_path / "cluster.json" and (path.stat().st_mode & 0o777) == 0o600
    again = load_state(tmp_path)
    assert again == state and again.path == path and again.worker(0).resources == {"bigmem": 1.0}
    with pytest.raises(ClusterError, match=r"no worker 3: the cluster has workers 0..0"):
        again.worker(3)
    data = json.loads(path.read_text())
    assert data["head"].pop("ip") == "127.0.0.1"
    path.write_text(json.dumps(data))  # written before node IPs were recorded: its nodes had 127.0.0.1
    assert load_state(tmp_path).head.ip == "127.0.0.1"
    path.write_text("{not json")
    with pytest.raises(ClusterError, match="unreadable"):
        load_state(tmp_path)
    assert load_state(tmp_path / "elsewhere") is None


def test_address_precedence_explicit_env_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_address() is None and resolve_cluster() is None  # nothing named: embedded Ray
    save_state(_state(tmp_path), env.cluster_dir())
    assert resolve_address() == "192.0.2.2:40000"
    connection = resolve_cluster()
    assert connection.dashboard_url == "http://127.0.0.1:41000" and connection.token == "the-token"
    assert connection.auth_env() == {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(tmp_path / "auth_token")}

    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    assert resolve_address() == "10.0.0.5:6379"
    assert resolve_cluster().dashboard_url == "http://10.0.0.5:8265"
    assert resolve_address("127.0.0.1:40000") == "127.0.0.1:40000"  # the argument wins
    # Our own cluster's dashboard URL leads back to its GCS address and token.
    own = resolve_cluster("http://localhost:41000")
    assert own.address == "192.0.2.2:40000" and own.token == "the-token"
    with pytest.raises(ClusterError, match="dashboard / Jobs API address") as raised:
        resolve_address("http://10.0.0.5:8265")
    assert "unset RAY_ADDRESS" not in str(raised.value)
    # Left in the shell by `eval "$(mltrain cluster env)"` of a cluster that is down now: say how to go on.
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:49999")
    with pytest.raises(ClusterError, match="`unset RAY_ADDRESS` to train on an embedded Ray"):
        resolve_address()


def test_an_explicit_token_wins_over_the_state_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    save_state(_state(tmp_path), env.cluster_dir())
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-env")
    connection = resolve_cluster()
    assert connection.token == "from-env" and connection.token_source == "RAY_AUTH_TOKEN"
    assert connection.headers() == {"Authorization": "Bearer from-env"}
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    token_file = tmp_path / "other"
    token_file.write_text("from-file")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token_file))
    assert resolve_cluster().token == "from-file"


def test_a_cluster_without_auth_borrows_no_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("default-token")
    assert resolve_cluster("http://10.0.0.5:8265").token == "default-token"  # Ray's default file, elsewhere
    save_state(_state(tmp_path, token=False), env.cluster_dir())
    connection = resolve_cluster()
    assert connection.token is None and connection.headers() == {}
    assert connection.auth_env() == {"RAY_AUTH_MODE": "disabled"}


def test_client_auth_sets_and_restores_the_variables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    save_state(_state(tmp_path), env.cluster_dir())
    monkeypatch.setenv("RAY_AUTH_TOKEN", "stale")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "")  # set but empty: ignored, and restored as it was
    with client_auth(resolve_cluster()):
        assert os.environ["RAY_AUTH_MODE"] == "token"
        assert os.environ["RAY_AUTH_TOKEN_PATH"] == str(tmp_path / "auth_token")
        assert "RAY_AUTH_TOKEN" not in os.environ
    assert "RAY_AUTH_MODE" not in os.environ and "RAY_AUTH_TOKEN_PATH" not in os.environ
    assert os.environ["RAY_AUTH_TOKEN"] == ""
    with client_auth(None):
        assert "RAY_AUTH_MODE" not in os.environ


def test_embedded_auth_gives_a_token_of_its_own_and_takes_it_away(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ray/auth_token: Ray would write one there
    with embedded_auth():
        token = os.environ["RAY_AUTH_TOKEN"]
        assert os.environ["RAY_AUTH_MODE"] == "token" and len(token) == 64
    assert "RAY_AUTH_TOKEN" not in os.environ and "RAY_AUTH_MODE" not in os.environ
    with embedded_auth():
        assert os.environ["RAY_AUTH_TOKEN"] != token, "a fresh token per instance"
    for name, value in (("RAY_AUTH_MODE", "disabled"), ("RAY_AUTH_TOKEN", "the-users")):
        with monkeypatch.context() as variables:
            variables.setenv(name, value)
            with embedded_auth():  # the user's choice is left to Ray
                assert os.environ.get("RAY_AUTH_TOKEN") == (value if name == "RAY_AUTH_TOKEN" else None)
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("an-existing-default")
    with embedded_auth():  # Ray reads the file that is there; nothing is written
        assert "RAY_AUTH_TOKEN" not in os.environ


# ---- local cluster pieces ---------------------------------------------------------------------------------


def test_cluster_spec_validation() -> None:
    assert ClusterSpec(workers=2, cpus_per_worker=None).worker_cpus() >= 1
    for bad, match in (
        ({"workers": 0}, "at least 1 worker"),
        ({"cpus_per_worker": -1}, "cpus_per_worker"),
        ({"gpus_per_worker": -1}, "gpus_per_worker"),
        ({"object_store_mb": 10}, "object_store_mb"),
        ({"resources": {"GPU": 1}}, "has its own option"),
        ({"resources": {"bigmem": 0}}, "positive number"),
    ):
        with pytest.raises(ClusterError, match=match):
            ClusterSpec(**bad)


def test_real_gpus_are_split_between_workers_or_left_logical(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    assert cluster_nodes.split_gpus(2, 2) == ["0,1", "2,3"]
    assert cluster_nodes.split_gpus(2, 1) == ["0", "1"]
    assert cluster_nodes.split_gpus(3, 2) == [None, None, None], "too few GPUs: logical only, nothing hidden"
    assert cluster_nodes.split_gpus(2, 0) == [None, None]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert cluster_nodes.split_gpus(1, 1) == [None]


def test_node_environment_marks_the_processes_and_carries_the_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_ADDRESS", "stale:1")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "someone-elses")
    node_env = cluster_nodes._node_env("cid", "worker-1", "/state/auth_token")
    assert node_env[processes.CLUSTER_ID_VAR] == "cid" and node_env[processes.NODE_NAME_VAR] == "worker-1"
    assert node_env["RAY_AUTH_MODE"] == "token" and node_env["RAY_AUTH_TOKEN_PATH"] == "/state/auth_token"
    assert "RAY_ADDRESS" not in node_env and "RAY_AUTH_TOKEN" not in node_env
    assert node_env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)
    assert cluster_nodes._node_env("cid", "head", None)["RAY_AUTH_MODE"] == "disabled"


def test_nodes_and_drivers_get_loopback_addresses_that_ray_keeps(monkeypatch: pytest.MonkeyPatch) -> None:
    assert loopback.node_ip() == "127.0.0.2" and loopback.embedded_ip() == "127.0.0.2"
    assert [loopback.node_ip(index) for index in (0, 1, 252, 253)] == [
        "127.0.0.3",
        "127.0.0.4",
        "127.0.0.255",
        "127.0.1.0",
    ]
    assert loopback.driver_ip("127.0.0.2:40000") == "127.0.0.2"  # the head's raylet
    for other in ("127.0.0.1:6379", "localhost:6379", "192.0.2.2:6379", "ray-head:6379", "auto", "ray://127.0.0.2:1"):
        assert loopback.driver_ip(other) is None, other  # Ray's own choice
    assert loopback.kept_loopback("127.8.9.10") and not loopback.kept_loopback("::1")
    monkeypatch.setattr(loopback, "usable", lambda address: address == "127.0.0.1")  # a Mac: lo0 has 127.0.0.1 only
    assert loopback.node_ip(0) == "127.0.0.1" and loopback.embedded_ip() == "127.0.0.1"


def test_demands_from_the_autoscaler_report() -> None:
    report = {
        "resourceDemand": [[{"GPU": 2.0}, 1], [{"CPU": 1.0}, 3]],
        "pgDemand": [{"bundles": [{"CPU": 1.0, "GPU": 1.0}, {"CPU": 1.0, "GPU": 1.0}], "strategy": "PACK"}],
        "requestDemand": [],
    }
    demands = demands_from_report(report)
    assert [str(d) for d in demands] == [
        "2 GPU x1 (task/actor)",
        "1 CPU x3 (task/actor)",
        "2 CPU, 2 GPU x1 (placement group, pack)",
    ]
    assert demands_from_report({}) == []


# ---- CLI ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["submit", "--env", "NOEQUALS", "--", "true"], "expected KEY=VALUE for --env"),
        (["submit", "--resources", "[1]", "--", "true"], "JSON object of numbers for --resources"),
        (["submit", "--", "true"], "no Ray cluster named"),
        (["cluster", "up", "--workers", "0"], "at least 1 worker"),
        (["cluster", "up", "--resources", "{bad"], "JSON object for --resources"),
        (["cluster", "start-worker", "1"], "no local cluster recorded"),
    ],
)
def test_cli_mistakes_exit_2_with_one_line(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        main(argv)
    assert raised.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_cluster_json_is_what_clients_read(tmp_path: Path) -> None:
    state = _state(tmp_path)
    data = json.loads(state.to_json())
    assert {"address", "dashboard_url", "metrics_url", "token_path", "head", "workers", "cluster_id"} <= set(data)
    assert "path" not in data


def test_log_catch_up_prints_only_what_is_new() -> None:
    import asyncio
    import io

    from mltrain.cluster import jobs

    logs = iter(["a\n", "a\nb\n", "a\nb\n"])
    client = SimpleNamespace(get_job_logs=lambda job: next(logs))
    out = io.StringIO()
    written = jobs._print_new(client, "job", "", out)
    written = jobs._print_new(client, "job", written, out)
    written = jobs._print_new(client, "job", written, out)
    assert out.getvalue() == "a\nb\n" and written == "a\nb\n"

    async def in_a_notebook() -> str:  # a running event loop: no stream, follow() polls instead
        return jobs._stream(SimpleNamespace(), "job", out)

    assert asyncio.run(in_a_notebook()) == ""


def test_ports_picked_together_are_all_different() -> None:
    from mltrain.cluster import ports

    picked = ports.free_ports(64)  # one at a time, the kernel may hand the same port out twice
    assert len(set(picked)) == 64 and all(ports.is_free(port) for port in picked)


def test_submit_pip_hands_the_requirements_to_ray_as_the_jobs_pip_list(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # End to end, Ray would copy this whole virtualenv (GBs) for the job before pip runs: what mltrain does is
    # read the file into the runtime environment it submits.
    from mltrain.cluster import jobs
    from tests.helpers import call_cli

    submitted = []
    monkeypatch.setattr(jobs, "submit", lambda connection, request: submitted.append(request) or "raysubmit_1")
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("# for the job\nrequests>=2  # http\n\npsutil\n")
    command = ["submit", "--address", "http://127.0.0.1:8265", "--no-wait", "--pip"]
    done = call_cli(capsys, *command, str(requirements), "--", "python", "job.py")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "raysubmit_1\n"
    [request] = submitted
    assert request.runtime_env()["pip"] == ["requests>=2", "psutil"] and request.command == ["python", "job.py"]

    missing = call_cli(capsys, *command, str(tmp_path / "nope.txt"), "--", "python", "job.py")
    assert missing.returncode == 2 and missing.stderr.startswith("error: expected a pip requirements file for --pip")
    assert len(submitted) == 1
