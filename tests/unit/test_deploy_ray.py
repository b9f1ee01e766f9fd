"""deploy/ray (NVIDIA and ROCm compose, node image), deploy/kuberay and the Jupyter client's Ray overlay,
checked by parsing as the tracking server's files are: structure, Ray pinned to the version we use, token
auth, secrets only from the generated env file, loopback ports; and `mltrain stack init-ray`."""

from __future__ import annotations

import re
import shutil
import stat
from pathlib import Path
from typing import Any

import pytest
import ray
import yaml

from mltrain.cluster import deploy_env
from mltrain.stack import read_env
from tests.helpers import REPO
from tests.unit.test_deploy import REQUIRED_REF, SECRET_NAME, _environment, required_variables

RAY_DIR = REPO / "deploy" / "ray"
KUBERAY = REPO / "deploy" / "kuberay"
COMPOSES = {"nvidia": RAY_DIR / "compose.yaml", "rocm": RAY_DIR / "compose.rocm.yaml"}
JUPYTER_OVERLAY = REPO / "deploy" / "jupyter" / "compose.ray.yaml"
RAY_VERSION = ray.__version__
NODES = ("ray-head", "ray-worker-0", "ray-worker-1")


def _load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def _flags(service: dict[str, Any]) -> dict[str, str]:
    """``--name=value`` arguments of a ``ray start`` command."""
    command = service["command"]
    assert command[:2] == ["ray", "start"] and "--block" in command
    return dict(arg[2:].split("=", 1) for arg in command if arg.startswith("--") and "=" in arg)


@pytest.fixture(params=list(COMPOSES), ids=list(COMPOSES))
def compose(request: pytest.FixtureRequest) -> dict[str, Any]:
    return _load(COMPOSES[request.param])


def test_services_shape_and_start_order(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {*NODES, "prometheus", "grafana"}
    head = _flags(services["ray-head"])
    assert head["num-cpus"] == "0" and head["num-gpus"] == "0", "the head runs no tasks"
    assert head["port"] == "6379" and head["metrics-export-port"] == "8080"
    assert "--head" in services["ray-head"]["command"]
    assert services["ray-head"]["healthcheck"]["test"]
    for index in (0, 1):
        worker = services[f"ray-worker-{index}"]
        flags = _flags(worker)
        assert flags["address"] == "ray-head:6379" and flags["num-gpus"] == "1"
        assert flags["labels"] == f"mltrain.io/worker={index}"
        assert worker["depends_on"] == {"ray-head": {"condition": "service_healthy"}}
    for name in ("prometheus", "grafana"):
        assert services[name]["depends_on"] == {"ray-head": {"condition": "service_healthy"}}
        assert services[name]["restart"] == "unless-stopped"
    assert compose["networks"]["default"] == {"name": "mltrain", "external": True}, "the tracking server's network"


def test_every_node_runs_the_pinned_ray_image_with_token_auth(compose: dict[str, Any]) -> None:
    dockerfile = (RAY_DIR / "Dockerfile").read_text()
    assert f"ARG RAY_VERSION={RAY_VERSION}\n" in dockerfile
    assert '"ray[default,train,tune]==${RAY_VERSION}"' in dockerfile and "/home/ray/mltrain[team]" in dockerfile
    assert "ARG BASE_IMAGE=rayproject/ray:${RAY_VERSION}-py311-gpu" in dockerfile
    for name in NODES:
        node = compose["services"][name]
        assert node["image"].startswith(f"mltrain-ray:{RAY_VERSION}-")
        args = node["build"]["args"]
        assert args["RAY_VERSION"] == RAY_VERSION and args["BASE_IMAGE"].startswith(
            f"rayproject/ray:{RAY_VERSION}-py311"
        )
        assert (REPO / "deploy" / "ray" / Path(node["build"]["dockerfile"]).name).is_file()
        env = _environment(node)
        assert env["RAY_AUTH_MODE"] == "token" and REQUIRED_REF.match(env["RAY_AUTH_TOKEN"])
        assert env["FOOD11_DATA_DIR"] == "/data/Food-11" and "food11:/data:ro" in node["volumes"]
    assert compose["volumes"]["food11"] == {"external": True, "name": "food11"}


def test_workers_use_the_scoped_minio_user_for_checkpoints(compose: dict[str, Any]) -> None:
    for name in ("ray-worker-0", "ray-worker-1"):
        env = _environment(compose["services"][name])
        assert env["AWS_ACCESS_KEY_ID"].startswith("${MINIO_RAY_ACCESS_KEY:?")
        assert env["AWS_SECRET_ACCESS_KEY"].startswith("${MINIO_RAY_SECRET_KEY:?")
        assert env["AWS_ENDPOINT_URL"] == "${RAY_S3_ENDPOINT_URL:-http://minio:9000}"
    assert "MINIO_ROOT" not in yaml.safe_dump(compose), "never MinIO's root credentials"


def test_one_gpu_per_worker_by_device_id() -> None:
    nvidia = _load(COMPOSES["nvidia"])["services"]
    rocm = _load(COMPOSES["rocm"])["services"]
    for index in (0, 1):
        devices = nvidia[f"ray-worker-{index}"]["deploy"]["resources"]["reservations"]["devices"]
        assert devices == [
            {"driver": "nvidia", "device_ids": [f"${{RAY_WORKER_{index}_GPU:-{index}}}"], "capabilities": ["gpu"]}
        ]
        worker = rocm[f"ray-worker-{index}"]
        assert "deploy" not in worker and {"/dev/kfd", "/dev/dri"} <= set(worker["devices"])
        assert _environment(worker)["HIP_VISIBLE_DEVICES"] == f"${{RAY_WORKER_{index}_GPU:-{index}}}"
    assert nvidia["ray-head"]["build"]["args"]["TORCH_INDEX_URL"].endswith("/cu128")
    assert rocm["ray-head"]["build"]["args"]["TORCH_INDEX_URL"].split("/")[-1].startswith("rocm")
    assert "deploy" not in nvidia["ray-head"], "the head gets no GPU"


def test_prometheus_and_grafana_use_rays_generated_configuration(compose: dict[str, Any]) -> None:
    services = compose["services"]
    head_env = _environment(services["ray-head"])
    assert head_env["RAY_PROMETHEUS_HOST"] == "http://prometheus:9090"
    assert head_env["RAY_GRAFANA_HOST"] == "http://grafana:3000"
    # Ray's dashboards name their datasource after RAY_PROMETHEUS_NAME; its default is "Prometheus".
    assert head_env["RAY_PROMETHEUS_NAME"] == "Prometheus"
    assert "ray_head:/tmp/ray" in services["ray-head"]["volumes"]
    prometheus = services["prometheus"]
    assert "--config.file=/tmp/ray/session_latest/metrics/prometheus/prometheus.yml" in prometheus["command"]
    assert "ray_head:/tmp/ray:ro" in prometheus["volumes"]
    grafana_env = _environment(services["grafana"])
    assert grafana_env["GF_PATHS_PROVISIONING"] == "/tmp/ray/session_latest/metrics/grafana/provisioning"
    assert REQUIRED_REF.match(grafana_env["GF_SECURITY_ADMIN_PASSWORD"])
    assert "ray_head:/tmp/ray:ro" in services["grafana"]["volumes"]
    for name, image in (("prometheus", "prom/prometheus:v"), ("grafana", "grafana/grafana:")):
        assert services[name]["image"].startswith(image) and "latest" not in services[name]["image"]


def test_ray_writes_the_paths_and_datasource_the_files_expect() -> None:
    """The compose files rely on Ray's own generated files; check that Ray 2.60 writes them there."""
    from ray.dashboard.modules.metrics import metrics_head
    from ray.dashboard.modules.metrics.templates import GRAFANA_DATASOURCE_TEMPLATE

    source = Path(metrics_head.__file__).read_text()
    assert '"prometheus", "prometheus.yml"' in source and '"provisioning"' in source and '"datasources"' in source
    assert metrics_head.DEFAULT_PROMETHEUS_NAME == "Prometheus"
    assert metrics_head.PROMETHEUS_NAME_ENV_VAR == "RAY_PROMETHEUS_NAME"
    datasource = yaml.safe_load(GRAFANA_DATASOURCE_TEMPLATE("Prometheus", "http://prometheus:9090", {}, {}))
    assert datasource["datasources"][0]["name"] == "Prometheus"


def test_rocm_compose_declares_and_mounts_the_same_volumes_as_nvidia() -> None:
    nvidia, rocm = _load(COMPOSES["nvidia"]), _load(COMPOSES["rocm"])
    assert rocm["volumes"] == nvidia["volumes"] and set(rocm["volumes"]) == {
        "ray_head",
        "prometheus_data",
        "grafana_data",
        "food11",
    }
    assert set(rocm["services"]) == set(nvidia["services"])
    for name, service in rocm["services"].items():
        assert service.get("volumes") == nvidia["services"][name].get("volumes"), name


def test_jupyter_overlay_adds_the_cluster_and_its_token() -> None:
    overlay = _load(JUPYTER_OVERLAY)
    env = _environment(overlay["services"]["jupyter"])
    assert env["RAY_ADDRESS"] == "${JUPYTER_RAY_ADDRESS:-http://ray-head:8265}"
    assert env["RAY_AUTH_MODE"] == "token" and REQUIRED_REF.match(env["RAY_AUTH_TOKEN"])
    dockerfile = (REPO / "deploy" / "jupyter" / "Dockerfile").read_text()
    assert f"ARG RAY_VERSION={RAY_VERSION}\n" in dockerfile and "ray[default]" in dockerfile  # the Jobs SDK


# ---- the env file ------------------------------------------------------------------------------------------


def copy_deploy(tmp_path: Path) -> Path:
    """A copy of deploy/ray and deploy/mlflow without env files; the tracking server's has the Ray user."""
    target = tmp_path / "deploy"
    for name in ("ray", "mlflow"):
        shutil.copytree(REPO / "deploy" / name, target / name, ignore=shutil.ignore_patterns(".env"))
    (target / "mlflow" / ".env").write_text("MINIO_RAY_ACCESS_KEY=ray-worker\nMINIO_RAY_SECRET_KEY=s3cr3t-of-ray\n")
    return target


@pytest.fixture
def deploy_copy(tmp_path: Path) -> Path:
    return copy_deploy(tmp_path)


def test_init_ray_env_generates_every_variable_the_compose_files_require(deploy_copy: Path) -> None:
    path, copied = deploy_env.init_ray_env(deploy_copy / "ray", deploy_copy / "mlflow" / ".env")
    assert path == deploy_copy / "ray" / ".env" and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert copied == ["MINIO_RAY_ACCESS_KEY", "MINIO_RAY_SECRET_KEY"]
    values = read_env(path)
    assert values["MINIO_RAY_SECRET_KEY"] == "s3cr3t-of-ray" and values["BIND_ADDRESS"] == "127.0.0.1"
    assert re.fullmatch(r"[0-9a-f]{64}", values["RAY_AUTH_TOKEN"])
    assert len(values["GRAFANA_ADMIN_PASSWORD"]) >= 32
    generated = {name for name, value in values.items() if value}
    cluster = {"RAY_AUTH_TOKEN", "GRAFANA_ADMIN_PASSWORD", "MINIO_RAY_ACCESS_KEY", "MINIO_RAY_SECRET_KEY"}
    expected = [*((compose, cluster) for compose in COMPOSES.values()), (JUPYTER_OVERLAY, {"RAY_AUTH_TOKEN"})]
    for compose, required in expected:
        assert required_variables(compose) == required, compose.name
        assert required <= generated, compose.name
    assert set(read_env(RAY_DIR / "env.example")) == set(values)

    again = read_env(deploy_env.init_ray_env(deploy_copy / "ray", deploy_copy / "mlflow" / ".env", force=True)[0])
    assert again["RAY_AUTH_TOKEN"] != values["RAY_AUTH_TOKEN"]


# ---- KubeRay -------------------------------------------------------------------------------------------------


def _pod_templates(cluster: dict[str, Any]) -> list[dict[str, Any]]:
    spec = cluster["spec"]
    return [spec["headGroupSpec"]["template"], *(group["template"] for group in spec["workerGroupSpecs"])]


def test_raycluster_shape_auth_data_and_secrets() -> None:
    cluster = _load(KUBERAY / "raycluster.yaml")
    assert cluster["apiVersion"] == "ray.io/v1" and cluster["kind"] == "RayCluster"
    spec = cluster["spec"]
    assert spec["rayVersion"] == RAY_VERSION
    assert spec["authOptions"] == {"mode": "token", "secretName": "mltrain-ray-auth"}
    head = spec["headGroupSpec"]["rayStartParams"]
    assert head["num-cpus"] == "0" and head["num-gpus"] == "0"
    (group,) = spec["workerGroupSpecs"]
    assert group["rayStartParams"]["num-gpus"] == "1" and group["replicas"] == 2
    for template in _pod_templates(cluster):
        pod = template["spec"]
        (container,) = pod["containers"]
        assert container["image"].endswith(f"/mltrain-ray:{RAY_VERSION}-cuda")
        env = {item["name"]: item.get("value") for item in container["env"]}
        assert env["FOOD11_DATA_DIR"] == "/data/Food-11"
        assert {"name": "food11", "mountPath": "/data", "readOnly": True} in container["volumeMounts"]
        assert {"name": "food11", "persistentVolumeClaim": {"claimName": "food11", "readOnly": True}} in pod["volumes"]
        assert not any("valueFrom" not in item and SECRET_NAME.search(item["name"]) for item in container["env"])
    worker = group["template"]["spec"]["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert {"secretRef": {"name": "mltrain-ray-s3"}} in worker["envFrom"], "S3 credentials from a Secret"


def test_rayjob_runs_the_ray_engine_on_that_cluster() -> None:
    job = _load(KUBERAY / "rayjob.yaml")
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    assert spec["clusterSelector"] == {"ray.io/cluster": _load(KUBERAY / "raycluster.yaml")["metadata"]["name"]}
    assert spec["entrypoint"].startswith("mltrain train --engine ray ")
    assert yaml.safe_load(spec["runtimeEnvYAML"])["env_vars"]["FOOD11_DATA_DIR"] == "/data/Food-11"


def test_raycluster_pod_templates_are_valid_kubernetes() -> None:
    """KubeRay hands the pod templates to Kubernetes as they are: validate them against its schema."""
    import kubernetes_validate  # a dev dependency: no skip

    for template in _pod_templates(_load(KUBERAY / "raycluster.yaml")):
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "check"}, "spec": template["spec"]}
        kubernetes_validate.validate(pod, "1.33.0", strict=True)
    broken = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "check"}, "spec": {"containers": [{"nmae": "x"}]}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, "1.33.0", strict=True)
