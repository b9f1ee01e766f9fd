"""Each use of a framework's internals in ``mltrain.internals`` still matches the installed framework.

One test (or a few) per use, named after it: when an upgrade of Ray, MLflow or torchvision removes or changes
what a use relies on, its test fails here. They read the frameworks' code and call their pure functions; none
starts a cluster or a server.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import json
import os
import warnings
from collections.abc import Callable
from dataclasses import asdict
from importlib import import_module
from pathlib import Path
from typing import Any

import pytest

from mltrain.internals import mlflow as mlflow_internals
from mltrain.internals import ray as ray_internals
from mltrain.internals.torchvision import KernelOverride


def _source(module: str) -> str:
    """The source of ``module`` as installed, found without running it."""
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin, f"{module} is gone"
    return Path(spec.origin).read_text()


# ---- Ray: logger names --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "module",
    [ray_internals.TOKEN_SETUP_LOGGER, ray_internals.PLACEMENT_GROUP_CLEANER_LOGGER, ray_internals.JOB_SDK_LOGGER],
)
def test_ray_loggers_are_named_after_their_modules(module: str) -> None:
    assert "logging.getLogger(__name__)" in _source(module)


def test_ray_token_setup_still_warns_with_the_text_the_console_drops() -> None:
    source = _source(ray_internals.TOKEN_SETUP_LOGGER)
    assert f'"{ray_internals.TOKEN_AUTH_ENABLED_WARNING} for this Ray cluster' in source


def test_ray_train_report_logger_is_named_after_the_context_file() -> None:
    source = _source(ray_internals.TRAIN_CONTEXT_MODULE)
    assert "logging.getLogger(__file__)" in source and "Reporting training result" in source
    spec = importlib.util.find_spec(ray_internals.TRAIN_CONTEXT_MODULE)
    assert spec is not None and ray_internals.train_report_logger_name() == spec.origin


def test_ray_train_report_logger_of_a_ray_without_that_module_is_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ray_internals, "TRAIN_CONTEXT_MODULE", "ray.no_such_package.context")
    assert ray_internals.train_report_logger_name() is None


# ---- Ray: the auth-token cache ------------------------------------------------------------------------------


def test_ray_auth_token_cache_resets_with_the_private_calls() -> None:
    from ray._raylet import AuthenticationTokenLoader, Config

    assert callable(Config.initialize)
    assert callable(AuthenticationTokenLoader.instance)
    assert callable(AuthenticationTokenLoader.instance().reset_cache)


def test_ray_rereads_the_token_variables_after_a_reset() -> None:
    from ray._raylet import AuthenticationTokenLoader

    loader = AuthenticationTokenLoader.instance()
    try:
        with pytest.MonkeyPatch.context() as variables:
            variables.setenv("RAY_AUTH_MODE", "token")
            variables.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
            for token in ("a" * 32, "b" * 32):
                variables.setenv("RAY_AUTH_TOKEN", token)
                ray_internals.reset_auth_token_cache()
                assert loader.get_token_for_http_header() == {"authorization": f"Bearer {token}"}
            variables.setenv("RAY_AUTH_TOKEN", "c" * 32)
            assert loader.get_token_for_http_header() == {"authorization": f"Bearer {'b' * 32}"}, "Ray caches it"
    finally:
        ray_internals.reset_auth_token_cache()  # this process's Ray as the variables are again
    if "RAY_AUTH_MODE" not in os.environ:
        assert not loader.has_token(), "token auth off again"


# ---- Ray: the job supervisor actor --------------------------------------------------------------------------


def test_ray_kill_job_supervisor_script_compiles_and_its_names_exist() -> None:
    script = ray_internals.kill_job_supervisor_script()
    tree = ast.parse(compile(script, "<kill_job_supervisor_script>", "exec", ast.PyCF_ONLY_AST))
    imported = [(node.module, alias.name) for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                for alias in node.names]  # fmt: skip
    assert imported, "the script reads Ray's names on the cluster"
    for module, name in imported:
        assert module is not None and hasattr(import_module(module), name), f"{module}.{name}"
    from ray.dashboard.modules.job.common import JOB_ACTOR_NAME_TEMPLATE, SUPERVISOR_ACTOR_RAY_NAMESPACE

    assert "raysubmit_x1" in JOB_ACTOR_NAME_TEMPLATE.format(job_id="raysubmit_x1")
    assert isinstance(SUPERVISOR_ACTOR_RAY_NAMESPACE, str)
    # ... and they are still the names under which the job manager creates the actor
    manager = _source("ray.dashboard.modules.job.job_manager")
    assert "name=JOB_ACTOR_NAME_TEMPLATE.format(job_id=submission_id)" in manager
    assert "namespace=SUPERVISOR_ACTOR_RAY_NAMESPACE" in manager


# ---- Ray: the dashboard's autoscaler report -----------------------------------------------------------------


def test_ray_dashboard_serves_the_cluster_status_route() -> None:
    source = _source("ray.dashboard.modules.reporter.reporter_head")
    assert f'@routes.get("{ray_internals.CLUSTER_STATUS_PATH}")' in source
    assert "cluster_status=" in source  # the monitor's status, under data.clusterStatus
    assert 'status["load_metrics_report"] = asdict(' in _source("ray.autoscaler._private.monitor")


def _report_as_the_dashboard_serves_it() -> dict[str, Any]:
    """A load-metrics report made by Ray's own autoscaler and dashboard code: one node, each kind of demand."""
    from ray.autoscaler._private.load_metrics import LoadMetrics
    from ray.core.generated.common_pb2 import Bundle, PlacementStrategy
    from ray.core.generated.gcs_pb2 import PlacementGroupTableData
    from ray.dashboard.routes import rest_response
    from ray.dashboard.utils import HTTPStatusCode

    bundle = Bundle(unit_resources={"CPU": 1.0, "GPU": 1.0})
    group = PlacementGroupTableData(strategy=PlacementStrategy.SPREAD, bundles=[bundle, bundle])
    metrics = LoadMetrics()
    metrics.update(
        "0123abcd",  # the node id on a cluster started by hand (use_node_id_as_ip)
        b"\x01\x23\xab\xcd",
        {"CPU": 4.0, "GPU": 1.0},
        {"CPU": 1.0, "GPU": 1.0},
        0.0,
        waiting_bundles=[{"GPU": 2.0}, {"GPU": 2.0}],
        infeasible_bundles=[{"bigmem": 1.0}],
        pending_placement_groups=[group],
    )
    metrics.set_resource_requests([{"CPU": 8.0}])
    status = json.loads(json.dumps({"load_metrics_report": asdict(metrics.summary())}))  # as the monitor stores it
    response = rest_response(status_code=HTTPStatusCode.OK, message="", cluster_status=status)
    assert response.text is not None
    return json.loads(response.text)


def test_ray_cluster_status_layout_gives_the_demands() -> None:
    report = ray_internals.load_metrics_report(_report_as_the_dashboard_serves_it())
    expected = [
        ray_internals.ReportedDemand("task/actor", {"GPU": 2.0}, 2),
        ray_internals.ReportedDemand("task/actor", {"bigmem": 1.0}, 1),
        ray_internals.ReportedDemand("placement group", {"CPU": 2.0, "GPU": 2.0}, 1, "SPREAD"),
        ray_internals.ReportedDemand("requested", {"CPU": 8.0}, 1),
    ]
    assert sorted(ray_internals.reported_demands(report), key=repr) == sorted(expected, key=repr)
    assert ray_internals.load_metrics_report({"data": {"clusterStatus": None}}) == {}


def test_ray_cluster_status_layout_gives_the_usage_by_node_id() -> None:
    from ray.autoscaler._private.monitor import BASE_READONLY_CONFIG

    report = ray_internals.load_metrics_report(_report_as_the_dashboard_serves_it())
    assert ray_internals.used_by_node(report) == {"0123abcd": {"CPU": 3.0, "GPU": 0.0}}
    assert BASE_READONLY_CONFIG["provider"]["use_node_id_as_ip"] is True, "keyed by node id on a cluster by hand"


# ---- MLflow ---------------------------------------------------------------------------------------------------


def test_mlflow_local_dataset_source_is_the_one_mlflow_resolves_a_path_to(tmp_path: Path) -> None:
    import mlflow.data
    import numpy as np
    from mlflow.data.filesystem_dataset_source import FileSystemDatasetSource

    source = mlflow_internals.local_dataset_source(tmp_path)
    assert isinstance(source, FileSystemDatasetSource)
    assert source.uri == str(tmp_path.resolve()) and json.loads(source.to_json()) == {"uri": str(tmp_path.resolve())}
    assert source.load() == str(tmp_path.resolve())
    with warnings.catch_warnings():  # MLflow warns that two of its registered sources claim plain paths
        warnings.simplefilter("ignore")
        resolved = mlflow.data.from_numpy(np.zeros(1), source=str(tmp_path.resolve())).source
    assert type(resolved) is type(source) and resolved.to_json() == source.to_json()
    recorded = mlflow.data.from_numpy(np.zeros(1), source=source).to_dict()
    assert recorded["source_type"] == mlflow_internals.LOCAL_SOURCE_TYPE


def test_mlflow_dataset_compute_digest_is_the_abstract_hook_of_subclasses() -> None:
    from mlflow.data.dataset import Dataset

    assert getattr(Dataset._compute_digest, "__isabstractmethod__", False)
    assert "self._compute_digest()" in inspect.getsource(Dataset.__init__)


# ---- torchvision ---------------------------------------------------------------------------------------------


def test_torchvision_transforms_call_kernels_through_call_kernel() -> None:
    from torchvision.transforms import v2

    parameters = inspect.signature(v2.Transform._call_kernel).parameters
    assert [(p.name, p.kind) for p in parameters.values()] == [
        ("self", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        ("functional", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        ("inpt", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        ("args", inspect.Parameter.VAR_POSITIONAL),
        ("kwargs", inspect.Parameter.VAR_KEYWORD),
    ]


def test_torchvision_kernel_override_swaps_only_the_chosen_kernel() -> None:
    import torch
    from PIL import Image
    from torchvision.transforms import v2
    from torchvision.transforms.v2 import functional as F

    calls: list[tuple[Callable[..., Any], dict[str, Any]]] = []

    class Recording(KernelOverride, v2.ColorJitter):
        def override_kernel(self, functional: Callable[..., Any], inpt: Any) -> Callable[..., Any] | None:
            if functional is not F.adjust_hue:
                return None

            def kernel(image: Image.Image, **kwargs: Any) -> Image.Image:
                calls.append((functional, kwargs))
                return F.adjust_hue(image, **kwargs)

            return kernel

    image = Image.new("RGB", (8, 8), (200, 30, 90))
    settings: dict[str, Any] = {"brightness": 0.3, "hue": 0.2}
    torch.manual_seed(0)
    ours = Recording(**settings)(image)
    torch.manual_seed(0)
    reference = v2.ColorJitter(**settings)(image)
    assert [(functional, list(kwargs)) for functional, kwargs in calls] == [(F.adjust_hue, ["hue_factor"])]
    assert ours.tobytes() == reference.tobytes()


# --- Ray: starting in-process, Ray Train, jobs, local nodes ---------------------------------------------------
def test_ray_init_takes_the_node_ip_through_its_private_parameter() -> None:
    import ray

    # ray.init takes it from **kwargs: kwargs.pop("_node_ip_address", None)
    assert 'kwargs.pop("_node_ip_address"' in inspect.getsource(ray.init)
    assert ray_internals.node_ip_option("127.0.0.2") == {"_node_ip_address": "127.0.0.2"}
    assert ray_internals.node_ip_option(None) == {}


def test_ray_rewrites_only_127_0_0_1_of_the_loopback_node_ips() -> None:
    import ray
    from ray._common.network_utils import is_localhost
    from ray._private import services

    from mltrain.cluster import loopback

    # ray.init(_node_ip_address=…) and `ray start --node-ip-address` both call this: a rewritten address sends
    # every node's traffic over the host's network address.
    assert "resolve_ip_for_localhost(_node_ip_address)" in inspect.getsource(ray.init)
    assert is_localhost("127.0.0.1") and is_localhost("localhost")
    for address in (loopback.HEAD_IP, loopback.EMBEDDED_IP, "127.0.0.3", "127.0.1.4"):
        assert not is_localhost(address)
        assert services.resolve_ip_for_localhost(address) == address


def test_ray_train_print_patch_switch_is_still_read() -> None:
    assert ray_internals.TRAIN_PRINT_PATCH_VAR in _source("ray.train.v2._internal.constants")


def test_ray_train_controller_actor_is_still_the_class_of_that_name() -> None:
    from ray.train.v2._internal.execution.controller import TrainController

    assert TrainController.__name__ == ray_internals.TRAIN_CONTROLLER_CLASS
    from ray.util.state import list_actors

    assert {"filters", "raise_on_missing_output"} <= set(inspect.signature(list_actors).parameters)


def test_ray_job_manager_still_marks_a_jobs_entrypoint_with_the_variable() -> None:
    import ray.dashboard.modules.job.job_supervisor as supervisor

    assert ray_internals.JOB_CONFIG_VAR in Path(inspect.getfile(supervisor)).read_text() or any(
        ray_internals.JOB_CONFIG_VAR in _source(module)
        for module in ("ray._private.ray_constants", "ray.dashboard.modules.job.job_manager")
    )


def test_ray_graceful_drain_config_exists() -> None:
    name = ray_internals.GRACEFUL_DRAIN_VAR.removeprefix("RAY_")
    config_header = Path(importlib.util.find_spec("ray").origin).parent / "includes" / "ray_config.pxi"  # type: ignore[arg-type]
    sources = [config_header.read_text()] if config_header.is_file() else []
    sources += [_source("ray._private.ray_constants")]
    raylet_so = [path for path in Path(importlib.util.find_spec("ray").origin).parent.glob("_raylet*.so")]  # type: ignore[arg-type]
    assert any(name in text for text in sources) or any(name.encode() in path.read_bytes() for path in raylet_so)


def test_ray_session_layout_counts_raylet_sockets(tmp_path: Path) -> None:
    sockets = tmp_path / ray_internals.SESSION_LATEST / "sockets"
    assert ray_internals.raylet_sockets(tmp_path) == 0
    sockets.mkdir(parents=True)
    for name in ("raylet", "raylet.1", "plasma_store"):
        (sockets / name).touch()
    assert ray_internals.raylet_sockets(tmp_path) == 2
    # Ray still names its session link and raylet socket so.
    from ray._private import ray_constants

    assert ray_constants.SESSION_LATEST == ray_internals.SESSION_LATEST
    assert 'default_prefix="raylet"' in _source("ray._private.node")


# --- MLflow: creating runs through the client, sampling a run by id ------------------------------------------
def test_mlflow_context_tags_are_what_start_run_resolves() -> None:
    from mlflow.tracking.context import registry

    assert "resolve_tags" in dir(registry)
    tags = mlflow_internals.context_tags({"mine": "1"})
    assert tags["mine"] == "1" and {"mlflow.source.name", "mlflow.source.type", "mlflow.user"} <= set(tags)


def test_mlflow_system_metrics_monitor_takes_a_run_id_and_publishes_what_it_collects() -> None:
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    parameters = inspect.signature(SystemMetricsMonitor.__init__).parameters
    assert {"run_id", "resume_logging", "tracking_uri"} <= set(parameters)
    for method in ("start", "finish", "collect_metrics", "aggregate_metrics", "publish_metrics"):
        assert callable(getattr(SystemMetricsMonitor, method)), method
    assert "self.mlflow_logger" in inspect.getsource(SystemMetricsMonitor.__init__)
    mlflow_internals.warm_up_imports(sql_store=True)
    mlflow_internals.import_system_metrics()


def test_mlflow_pytorch_imports_its_lightning_autolog_module_only_in_a_try_that_catches_import_error() -> None:
    import ast

    import mlflow.pytorch

    module = mlflow_internals.LIGHTNING_AUTOLOG_MODULE
    tree = ast.parse(inspect.getsource(mlflow.pytorch))
    guarded = [
        node
        for node in tree.body
        if isinstance(node, ast.Try) and any(isinstance(s, ast.ImportFrom) and s.module == module for s in node.body)
    ]
    assert guarded, "mlflow.pytorch no longer imports its Lightning autologging module in a try at its end"
    assert any(isinstance(h.type, ast.Name) and h.type.id == "ImportError" for h in guarded[0].handlers)
    # Its other imports of the module are inside functions (autolog), run only when called.
    top_level = [node for node in tree.body if isinstance(node, ast.ImportFrom)]
    assert all(node.module != module for node in top_level)


# --- Lightning: profiler action names, loop progress, ModelCheckpoint's state, the DDP launcher ----------------
def test_lightning_loops_profile_batch_fetches_as_next_actions() -> None:
    from mltrain.internals.lightning import BATCH_FETCH_SUFFIX, is_batch_fetch

    assert 'dataloader_next")' in _source("lightning.pytorch.loops.training_epoch_loop")
    assert f'{BATCH_FETCH_SUFFIX}")' in _source("lightning.pytorch.loops.evaluation_loop")
    assert is_batch_fetch("[_TrainingEpochLoop].train_dataloader_next") and not is_batch_fetch("run_training_batch")


def test_lightning_fit_loop_counts_processed_epochs() -> None:
    import lightning.pytorch as pl

    from mltrain.internals.lightning import epochs_processed

    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_epochs=1)
    assert epochs_processed(trainer) == 0
    assert hasattr(trainer.fit_loop.epoch_progress.current, "completed")


def test_lightning_model_checkpoint_state_holds_the_paths_rewritten_for_a_moved_folder(tmp_path: Path) -> None:
    from lightning.pytorch.callbacks import ModelCheckpoint

    from mltrain.internals.lightning import MODEL_CHECKPOINT_PATH_KEYS, relocated_checkpoint_state

    old = tmp_path / "old"
    callback = ModelCheckpoint(dirpath=old, monitor="val_loss")
    callback.best_model_path = str(old / "best.ckpt")
    callback.best_k_models = {str(old / "best.ckpt"): 0.5}
    state = callback.state_dict()
    assert {*MODEL_CHECKPOINT_PATH_KEYS, "best_k_models", "dirpath"} <= set(state)
    moved = relocated_checkpoint_state(state, tmp_path / "new")
    assert moved["best_model_path"] == str(tmp_path / "new" / "best.ckpt")
    assert moved["best_k_models"] == {str(tmp_path / "new" / "best.ckpt"): 0.5}
    here = ModelCheckpoint(dirpath=tmp_path / "new", monitor="val_loss")
    here.load_state_dict(moved)
    assert here.best_model_path == moved["best_model_path"] and here.best_k_models == moved["best_k_models"]


def test_lightning_subprocess_launcher_keeps_its_children_in_procs() -> None:
    from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

    from mltrain.internals.lightning import stop_local_ranks

    source = inspect.getsource(_SubprocessScriptLauncher)
    assert "self.procs" in source and "_launch_process_observer(self.procs)" in source
    assert "signum" in inspect.signature(_SubprocessScriptLauncher.kill).parameters
    stop_local_ranks(type("Trainer", (), {"strategy": None})())  # no launcher: nothing to stop
