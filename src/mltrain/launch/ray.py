"""``engine=ray``: the Lightning engine, launched on Ray Train workers — one MLflow run whatever restarts.

Ray is a way to *launch* the Lightning engine, not a third copy of the training loop: each worker builds
the same :class:`~mltrain.engines.lightning.recipe.LightningRecipe`, handing it Ray's DDP strategy and
cluster environment instead of Lightning's own launcher, and an epoch hook that reports the checkpoint
folder to Ray Train.

Who does what:

* the **driver** (the process that called :func:`mltrain.training.train`) owns the MLflow run: it created
  it before the workers start, tags it (Ray run name, storage, workers, resources), and after Ray Train
  returns — finished, failed beyond ``max_failures``, or interrupted — it brings the latest checkpoint
  back to ``outputs/<run_id>/`` (so ``--resume`` works and the best model is logged from it) and ends
  the run. It never leaves the run RUNNING;
* **every worker** knows its rank from Ray's train context, trains its shard, and reports each epoch's
  checkpoint folder (rank 0's; the others report metrics only, as Ray Train V2 wants every rank to report);
* the **rank-0 worker** attaches to the driver's run by id (``RunTracker(owner=False)``) and logs the
  epochs. After a failover, the new rank 0 restores the checkpoint Ray hands back
  (``ray.train.get_checkpoint()``), attaches again and logs from the next epoch on: the tracker skips
  steps the run already has and fills in any the checkpoint has but MLflow lacks — no step twice, no gap.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import re
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlparse

import ray
import torch
from lightning.pytorch.callbacks import Callback

from mltrain import console, env, metrics
from mltrain.config import TrainConfig
from mltrain.errors import TrainingFailed

log = logging.getLogger(__name__)

RUN_NAME_TAG = "mltrain.ray.run_name"
STORAGE_TAG = "mltrain.ray.storage"
RESTARTS_TAG = "mltrain.ray.restarts"
"""How many times Ray Train restarted the worker group in this training (after a failure, or to resize it)."""
RESIZES_TAG = "mltrain.ray.resizes"
"""How many restarts changed the number of workers (elastic training); ``mltrain.ray.resize.<n>`` says how."""
WAITING_TAG = "mltrain.ray.waiting"
"""Set while the training cannot place its workers (e.g. a node lost and none returning): what it waits for."""
_WORLD_SIZE_TAG = "mltrain.ray.world_size"
_ATTEMPTS_TAG = "mltrain.ray.attempts"
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}
_KEEP_CHECKPOINTS = 3
_EMBEDDED_OBJECT_STORE = 150 * 2**20  # small: this machine's memory is for the workers (see README)
_EXTRA_CALLBACKS: contextvars.ContextVar[tuple[Any, ...]] = contextvars.ContextVar("mltrain_ray_callbacks", default=())


@contextlib.contextmanager
def run_config_callbacks(*callbacks: Any) -> Iterator[None]:
    """Add Ray Train ``RunConfig`` callbacks to the trainings :func:`fit` starts in this block (this thread).

    ``mltrain tune`` runs each trial through ``train(engine=ray)`` inside this block with Tune's report
    callback, so that Tune's scheduler sees every epoch the trial's workers report.
    """
    token = _EXTRA_CALLBACKS.set((*_EXTRA_CALLBACKS.get(), *callbacks))
    try:
        yield
    finally:
        _EXTRA_CALLBACKS.reset(token)


# --- the Ray session -------------------------------------------------------------------------------------------
@contextlib.contextmanager
def ray_session(config: TrainConfig, address: str | None = None, dashboard: bool = False) -> Iterator[str | None]:
    """Ray for this training: the process's own if running inside Ray, a cluster's, or an embedded one.

    The cluster is ``address``, else ``RAY_ADDRESS``, else the one ``mltrain cluster up`` recorded; with none,
    a local Ray instance lives as long as the block (``address="local"``: a bare ``ray.init()`` would join
    whatever cluster /tmp/ray names, even a dead one). Before yielding, the request is compared with every
    node: a worker that no node could ever hold is a ConfigError (exit 2) before any MLflow run exists.
    Yields the address joined (None for the embedded instance).

    ``dashboard``: the embedded instance also runs Ray's dashboard (on a free loopback port). Its state API is
    how Ray Train frees the resources of a worker group whose controller was killed — as Tune does to every
    trial it stops early (``mltrain tune``); without it they stay reserved until Ray stops.
    """
    from mltrain.cluster import client_auth, resolve_address, resolve_cluster

    if ray.is_initialized():  # a Ray job's entrypoint, a Tune trial: Ray is already there
        try:
            _check_fits(config)
            yield None
        finally:
            sweep_scratch()  # what workers killed on this host (a lost node, a restart) left behind
        return
    target = resolve_address(address)
    connection = resolve_cluster(target) if target else None
    with client_auth(connection):
        if target is None:
            needed = config.workers * config.cpus_per_worker
            options = _embedded_dashboard(dashboard)
            runtime_env = options.pop("runtime_env", {}) | console.ray_runtime_env()
            ray.init(
                address="local",
                num_cpus=max(os.cpu_count() or 1, int(-(-needed // 1))),
                object_store_memory=_EMBEDDED_OBJECT_STORE,
                **options,
                runtime_env=runtime_env or None,
                _node_ip_address="127.0.0.1",
                logging_level="WARNING",
            )
        else:
            host = urlparse(f"//{target.split('://')[-1]}").hostname
            ray.init(
                address=target,
                # A Ray job's runtime env (mltrain submit's) already reaches every worker.
                runtime_env=None
                if env.inside_ray_job()
                else {"env_vars": env.forwarded_to_workers(), **console.ray_runtime_env()},
                _node_ip_address="127.0.0.1" if host in _LOOPBACK else None,
                logging_level="WARNING",
            )
        try:
            _check_fits(config)
            yield target
        finally:
            ray.shutdown()
            sweep_scratch()  # what workers killed on this host (a restart, a trial Tune stopped) left behind


def _embedded_dashboard(wanted: bool) -> dict[str, Any]:
    """``ray.init`` options for the embedded instance's dashboard: none, or one on a free loopback port.

    The job's processes are told its address: Ray's state API (which Ray Train's placement-group cleaner
    calls) otherwise guesses the cluster, and fails when this host runs more than one Ray instance.
    """
    from mltrain.cluster.ports import free_port

    if not wanted:
        return {"include_dashboard": False}
    port = free_port()
    return {
        "include_dashboard": True,
        "dashboard_host": "127.0.0.1",
        "dashboard_port": port,
        "runtime_env": {"env_vars": {env.RAY_API_SERVER_VAR: f"http://127.0.0.1:{port}"}},
    }


def _check_fits(config: TrainConfig) -> None:
    from mltrain.cluster.jobs import check_feasible

    nodes = [
        SimpleNamespace(
            state="ALIVE" if node["Alive"] else "DEAD",
            node_id=node["NodeID"],
            node_name=node.get("NodeName") or node.get("NodeManagerAddress"),
            resources_total=node.get("Resources", {}),
            labels=node.get("Labels", {}),
        )
        for node in ray.nodes()
    ]
    hint = "lower --cpus-per-worker/--gpus-per-worker, or add a node that has them (mltrain cluster up --help)"
    check_feasible(_worker_resources(config), {}, nodes, hint=f"each Ray Train worker {hint}")


def _worker_resources(config: TrainConfig) -> dict[str, float]:
    wanted = {"CPU": config.cpus_per_worker}
    if config.gpus_per_worker:
        wanted["GPU"] = config.gpus_per_worker
    return wanted


# --- storage ---------------------------------------------------------------------------------------------------
def storage_for(config: TrainConfig) -> tuple[str, Any, str]:
    """(path, pyarrow filesystem or None, URI to show) of Ray Train's storage for this config.

    ``s3://bucket/prefix`` gets an explicit ``S3FileSystem`` built from the standard AWS variables
    (``AWS_ENDPOINT_URL`` for MinIO or another S3 endpoint): Ray's default filesystem resolution does not
    read the endpoint variable. A plain path is made absolute; on a multi-node cluster it must be a
    folder every node sees (NFS), else use S3.
    """
    if config.storage and config.storage.startswith("s3://"):
        from pyarrow import fs

        endpoint, key, secret, region = env.s3_settings()
        options: dict[str, Any] = {"region": region}
        if endpoint:
            parsed = urlparse(endpoint)
            options["endpoint_override"] = parsed.netloc or parsed.path
            options["scheme"] = parsed.scheme or "https"
        if key and secret:
            options.update(access_key=key, secret_key=secret)
        return config.storage.removeprefix("s3://").rstrip("/"), fs.S3FileSystem(**options), config.storage
    path = Path(config.storage) if config.storage else Path(config.output_dir) / "ray"
    path = path.expanduser().resolve()
    return str(path), None, str(path)


# --- the driver -------------------------------------------------------------------------------------------------
def fit(
    config: TrainConfig,
    data: Any,
    tracker: Any,
    checkpoint_dir: str | Path,
    resume: dict[str, Any] | None = None,
    on_epoch_end: Any = None,
    progress: bool = True,
) -> Any:
    """Run the training on Ray Train workers and wait for it; the engine-``fit`` of ``engine=ray``.

    Must run inside :func:`ray_session`. ``tracker`` is the driver's (it owns the run); ``checkpoint_dir``
    is where the latest checkpoint is brought back whatever the outcome. ``on_epoch_end`` is not supported
    (epochs end in the workers).
    """
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from mltrain.engines.common import FitResult

    folder = Path(checkpoint_dir)
    # Ray Train turns print() in workers into log records that reach the console twice; the epoch lines are
    # prints. (Ray passes this variable on to the controller and the workers.)
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    storage_path, filesystem, storage_uri = storage_for(config)
    run_name = _run_name(tracker.run_id, resume)
    initial = _upload_initial(resume["folder"], storage_path, filesystem, run_name) if resume else None
    tracker.set_tags(
        {
            RUN_NAME_TAG: run_name,
            STORAGE_TAG: f"{storage_uri}/{run_name}",
            "mltrain.ray.workers": config.workers_text(),
            "mltrain.ray.resources_per_worker": ", ".join(f"{k}={v:g}" for k, v in _worker_resources(config).items()),
            _ATTEMPTS_TAG: "0",
            RESTARTS_TAG: "0",
        }
    )
    use_gpu = config.gpus_per_worker > 0
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "config": config.model_dump(),
            "run_id": tracker.run_id,
            "experiment": tracker.experiment,
            "tracking_uri": _absolute_tracking_uri(),
            "data_dir": str(data.root.resolve()) if data.root.is_dir() else str(data.root),
            "initial": initial,
            "filesystem": filesystem,
            "record_dataset": not data.splits,  # the driver did not see the data folder: rank 0 records it
        },
        scaling_config=_scaling(config, use_gpu),
        run_config=RunConfig(
            name=run_name,
            storage_path=storage_path,
            storage_filesystem=filesystem,
            failure_config=FailureConfig(max_failures=config.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=_KEEP_CHECKPOINTS),
            logging_config=LoggingConfig(log_level="WARNING"),  # not a line per report and checkpoint
            callbacks=list(_EXTRA_CALLBACKS.get()) or None,
        ),
        # gloo unless the workers really train on GPUs: logical GPUs (tests, CPU-only clusters) have no NCCL.
        torch_config=TorchConfig(backend="nccl" if use_gpu and config.accelerator != "cpu" else "gloo"),
    )
    workers = f"{config.workers_text()} worker(s){' (elastic)' if config.elastic else ''}"
    print(f"Ray Train run {run_name}: {workers}, checkpoints in {storage_uri}/{run_name}", flush=True)
    try:
        result = _fit_interruptibly(trainer, _PlacementWatch(config, tracker))
    except BaseException as exc:
        kept = _bring_back(f"{storage_path}/{run_name}", filesystem, folder)
        if isinstance(exc, Exception) and type(exc).__module__.startswith("ray."):
            where = (
                f"the last checkpoint is in {folder} — continue with: mltrain train --resume {folder}"
                if kept
                else "no epoch had finished, so there is no checkpoint"
            )
            raise TrainingFailed(f"Ray Train gave up after {config.max_failures} restart(s): {exc}\n{where}") from exc
        raise
    if result.checkpoint is not None:
        result.checkpoint.to_directory(str(folder))
    final = result.metrics or {}
    return FitResult(
        epochs_run=int(final.get("epochs_run", 0)),
        best_epoch=int(final.get("best_epoch", -1)),
        best_val_loss=float(final.get("best_val_loss", float("nan"))),
        test_loss=float(final.get(metrics.TEST_LOSS, float("nan"))),
        test_accuracy=float(final.get(metrics.TEST_ACCURACY, float("nan"))),
        stopped_early=bool(final.get("stopped_early", False)),
        checkpoint=folder / "checkpoint.pt",
        confusion=json.loads(final["confusion"]) if final.get("confusion") else None,
    )


def _fit_interruptibly(trainer: Any, watch: _PlacementWatch) -> Any:
    """``trainer.fit()`` in a thread, so that Ctrl+C and SIGTERM reach this (main) thread at once.

    In the main thread, ``fit`` would block in ``ray.get``, where a SIGTERM turned into an exception is
    swallowed, and Ray Train's own Ctrl+C handler asks the controller to abort — which a controller still
    waiting for its workers' resources only hears after up to a minute. Here the main thread waits in
    Python; on an interrupt it stops the Train controller (its workers share its fate), waits for ``fit``
    to return, and re-raises, so the caller ends the run KILLED. In a Tune trial signals belong to Tune.
    """
    stop = threading.Event()
    threading.Thread(target=watch.run, args=(stop,), name="ray-placement-watch", daemon=True).start()
    if threading.current_thread() is not threading.main_thread():
        try:
            return trainer.fit()
        finally:
            stop.set()

    def on_interrupt(thread: threading.Thread) -> None:
        _stop_train_controller()
        thread.join(timeout=60)  # fit returns once its controller is gone

    try:
        return call_interruptibly(trainer.fit, "ray-train-fit", on_interrupt)
    finally:
        stop.set()


def call_interruptibly(function: Callable[[], Any], name: str, on_interrupt: Callable[[threading.Thread], None]) -> Any:
    """``function()`` in a thread, so that Ctrl+C and SIGTERM reach this (main) thread at once.

    Ray's ``fit`` calls block in places a signal cannot interrupt. On an interrupt, ``on_interrupt(thread)``
    stops the work (and may wait for the thread), then the interrupt is raised again. Otherwise the
    function's result is returned, or its exception raised, here.
    """
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = function()
        except BaseException as exc:  # handed to the main thread
            outcome["error"] = exc

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    try:
        while thread.is_alive():
            thread.join(timeout=0.5)
    except BaseException:
        on_interrupt(thread)
        raise
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def _stop_train_controller() -> None:
    """SIGKILL this driver's Ray Train controller: Ray then ends its worker actors (they share its fate).

    The controller runs on the driver's node. On a cluster, Ray's state API names it (by this job's id);
    an embedded Ray has no dashboard to ask, but there the controller is one of this process's descendants.
    """
    import psutil

    job = ray.get_runtime_context().get_job_id()
    pids: list[int] = []
    try:
        from ray.util.state import list_actors

        filters = [("class_name", "=", "TrainController"), ("state", "=", "ALIVE"), ("job_id", "=", job)]
        pids = [actor.pid for actor in list_actors(filters=filters, raise_on_missing_output=False)]
    except Exception:
        for process in psutil.Process().children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if "TrainController" in " ".join(process.cmdline()):
                    pids.append(process.pid)
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


class _PlacementWatch:
    """Says so — on the console and as the run tag ``mltrain.ray.waiting`` — when the cluster's live nodes
    cannot hold the workers the training needs (a fixed group that lost a node, say): it then waits for
    resources, and a silent wait would look like a hang."""

    def __init__(self, config: TrainConfig, tracker: Any, every: float = 5.0) -> None:
        self.config = config
        self.tracker = tracker
        self.every = every
        self.needed = config.min_workers if config.elastic else config.workers
        self.waiting = False

    def run(self, stop: threading.Event) -> None:
        """Check every few seconds until ``stop`` is set (a daemon thread beside ``fit``)."""
        while not stop.wait(self.every):
            self.check()

    def check(self) -> None:
        try:
            places, alive = self._places()
        except Exception:  # Ray is shutting down or unreachable: the training itself will say so
            return
        if places < self.needed and not self.waiting:
            self.waiting = True
            wanted = ", ".join(f"{k}={v:g}" for k, v in _worker_resources(self.config).items())
            reason = (
                f"waiting for resources: {self.needed} worker(s) of {wanted} needed, the live nodes "
                f"({', '.join(alive) or 'none'}) hold {places}; since {datetime.now(UTC):%Y-%m-%dT%H:%M:%S}Z"
            )
            print(
                f"{reason} (start a node, or stop with Ctrl+C: the run ends KILLED, the checkpoint stays)", flush=True
            )
            self.tracker.set_tags({WAITING_TAG: reason})
        elif places >= self.needed and self.waiting:
            self.waiting = False
            print("resources are back: the workers can be placed again", flush=True)
            self.tracker.set_tags({WAITING_TAG: ""})

    def _places(self) -> tuple[int, list[str]]:
        """How many workers the live nodes could hold if nothing else ran, and the live nodes' names."""
        wanted = _worker_resources(self.config)
        places, alive = 0, []
        for node in ray.nodes():
            if not node["Alive"]:
                continue
            alive.append(node.get("NodeName") or node["NodeManagerAddress"])
            total = node.get("Resources", {})
            places += int(min(total.get(name, 0) // amount for name, amount in wanted.items()))
        return places, alive


def _scaling(config: TrainConfig, use_gpu: bool) -> Any:
    """Ray's ScalingConfig: a fixed group, or (elastic) a (min, max) range with a resize monitor."""
    from ray.train import ScalingConfig

    return ScalingConfig(
        num_workers=(config.min_workers, config.workers) if config.elastic else config.workers,
        elastic_resize_monitor_interval_s=config.resize_interval,
        use_gpu=use_gpu,
        resources_per_worker=_worker_resources(config),
    )


def _run_name(run_id: str, resume: dict[str, Any] | None) -> str:
    # A fresh name per driver: reusing a name (and storage) would make Ray resume that old run by itself.
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return f"mltrain-{run_id[:12]}-{stamp}" if resume is None else f"mltrain-{run_id[:12]}-resumed-{stamp}"


def _absolute_tracking_uri() -> str:
    """The driver's tracking URI, valid in worker processes (other working folders, maybe other nodes)."""
    import mlflow

    uri = mlflow.get_tracking_uri()
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri.removeprefix("sqlite:///")).resolve())
    if "://" not in uri:  # a plain folder (file store)
        return str(Path(uri).resolve())
    return uri


def _upload_initial(local: Path, storage_path: str, filesystem: Any, run_name: str) -> str:
    """Copy a checkpoint folder to the run's storage, where every worker's node can read it."""
    from pyarrow import fs

    target = f"{storage_path}/{run_name}/initial-checkpoint"
    destination = filesystem or fs.LocalFileSystem()
    destination.create_dir(target, recursive=True)
    fs.copy_files(
        str(local.resolve()), target, source_filesystem=fs.LocalFileSystem(), destination_filesystem=destination
    )
    return target


def _bring_back(run_path: str, filesystem: Any, folder: Path) -> bool:
    """Copy the run's latest registered checkpoint to ``folder`` (nothing is lost when Ray gives up)."""
    from ray.train import Result

    try:
        latest = Result.from_path(run_path, storage_filesystem=filesystem).checkpoint
    except Exception as exc:  # no checkpoint was ever registered (or the storage is unreachable)
        log.warning("no checkpoint to bring back from %s: %s", run_path, exc)
        return False
    if latest is None:
        return False
    folder.mkdir(parents=True, exist_ok=True)
    latest.to_directory(str(folder))
    return True


# --- the workers ------------------------------------------------------------------------------------------------
def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """What each Ray Train worker runs: restore, build the Lightning recipe with Ray's strategy, train, report."""
    import ray.train
    from ray.train.lightning import RayLightningEnvironment, prepare_trainer

    from mltrain.data.module import Food11Data
    from mltrain.engines.lightning.recipe import LightningRecipe
    from mltrain.tracking import RunTracker

    context = ray.train.get_context()
    rank = context.get_world_rank()
    config = TrainConfig.from_mapping(loop_config["config"])
    local = _scratch_folder(loop_config["run_id"], rank)
    resume, source = _restore(local, loop_config)
    data = Food11Data(_worker_data_dir(loop_config["data_dir"]), config, progress=False).setup()
    tracker = RunTracker(
        experiment=loop_config["experiment"],
        tracking_uri=loop_config["tracking_uri"],
        run_id=loop_config["run_id"],
        owner=False,
        enabled=rank == 0,
    )
    try:
        with tracker:
            restart = _record_start(tracker, resume, source, context.get_world_size()) if rank == 0 else None
            if rank == 0 and restart is None and loop_config.get("record_dataset"):
                from mltrain.training import record_dataset

                record_dataset(tracker, data)
            recipe = LightningRecipe(
                config,
                data,
                tracker,
                local,
                progress=False,
                on_epoch_end=_Reporter(rank, local),
                resume=resume,
                strategy=_strategy(config),
                plugins=[RayLightningEnvironment()],
                devices="auto",
            )
            if restart is not None:
                recipe.trainer.callbacks.append(_FirstStepAfterRestart(tracker, restart))
            prepare_trainer(recipe.trainer)
            result = recipe.run()
            final = {
                metrics.TEST_LOSS: result.test_loss,
                metrics.TEST_ACCURACY: result.test_accuracy,
                "epochs_run": result.epochs_run,
                "best_epoch": result.best_epoch,
                "best_val_loss": result.best_val_loss,
                "stopped_early": result.stopped_early,
                # As text: a report's values are scalars; the matrix is already summed over the workers.
                "confusion": json.dumps(result.confusion) if result.confusion is not None else "",
            }
            ray.train.report(final, checkpoint=ray.train.Checkpoint.from_directory(str(local)) if rank == 0 else None)
    finally:
        shutil.rmtree(local, ignore_errors=True)


def _scratch_root() -> Path:
    return Path(tempfile.gettempdir()) / f"mltrain-scratch-{os.getuid()}"


def _scratch_folder(run_id: str, rank: int) -> Path:
    """A worker's own folder for the checkpoints it writes before Ray uploads them; named by its process.

    The worker removes it when it ends. A worker that is killed (its node lost, its trial stopped by ASHA)
    cannot: the next worker or driver on this host removes it (:func:`sweep_scratch`).
    """
    root = _scratch_root()
    root.mkdir(mode=0o700, exist_ok=True)
    sweep_scratch()
    return Path(tempfile.mkdtemp(prefix=f"{run_id[:12]}-rank{rank}-pid{os.getpid()}-", dir=root))


def sweep_scratch() -> list[Path]:
    """Remove the scratch folders of worker processes on this host that are gone; returns what it removed.

    They hold only copies: every checkpoint in them was uploaded to the run's storage when it was reported.
    """
    import psutil

    removed = []
    for folder in sorted(_scratch_root().glob("*-pid*-*")):
        found = re.search(r"-pid(\d+)-", folder.name)
        if found and not psutil.pid_exists(int(found.group(1))):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def _strategy(config: TrainConfig) -> Any:
    """Ray's DDP strategy, on the device the config picks (Ray's own choice is cuda whenever it assigned GPUs,
    also to a worker told to train on the CPU, or on a node whose GPUs are only declared)."""
    from ray.train.lightning import RayDDPStrategy

    from mltrain.engines.common import select_device

    class Strategy(RayDDPStrategy):
        @property
        def root_device(self) -> Any:
            return super().root_device if select_device(config).type == "cuda" else torch.device("cpu")

    # The frozen backbone takes no part in phase 1's backward pass; DDP must be told to expect that.
    return Strategy(find_unused_parameters=config.initial_epochs > 0)


def _restore(local: Path, loop_config: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """The checkpoint Ray hands back after a restart, else the one the driver resumes from, copied to ``local``."""
    import ray.train

    from mltrain.engines.checkpoint import load_checkpoint

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None and loop_config.get("initial"):
        checkpoint = ray.train.Checkpoint(loop_config["initial"], filesystem=loop_config.get("filesystem"))
    if checkpoint is None:
        return None, None
    checkpoint.to_directory(str(local))
    payload = load_checkpoint(local)
    payload["folder"] = local
    return payload, checkpoint.path


def _worker_data_dir(driver_dir: str) -> str:
    """The driver's data folder when this node sees it; else this node's ``FOOD11_DATA_DIR``."""
    if Path(driver_dir).is_dir():
        return driver_dir
    return str(env.data_dir(None)) if os.environ.get(env.DATA_DIR_VAR) else driver_dir


def _record_start(tracker: Any, resume: dict[str, Any] | None, source: str | None, world_size: int) -> int | None:
    """Count the worker group's starts; a start after the first is a restart (returns its number).

    A start with another number of workers than the previous one is also a resize (an elastic group that
    shrank after losing a node, or grew when resources returned): counted in ``mltrain.ray.resizes`` and
    described in ``mltrain.ray.resize.<n>``.
    """
    from mltrain.tracking import gpu_info_text

    attempt = int(tracker.tag_value(_ATTEMPTS_TAG) or 0) + 1
    previous = tracker.tag_value(_WORLD_SIZE_TAG)
    tags = {_ATTEMPTS_TAG: str(attempt), RESTARTS_TAG: str(attempt - 1), _WORLD_SIZE_TAG: str(world_size)}
    if previous is not None and int(previous) != world_size:
        resizes = int(tracker.tag_value(RESIZES_TAG) or 0) + 1
        epoch = resume["state"].next_epoch if resume else 0
        when = datetime.now(UTC).isoformat(timespec="seconds")
        tags |= {
            RESIZES_TAG: str(resizes),
            f"mltrain.ray.resize.{resizes}": f"{previous} -> {world_size} workers at epoch {epoch} ({when})",
        }
        print(f"resized: {previous} -> {world_size} worker(s), continuing at epoch {epoch + 1}", flush=True)
    tracker.set_tags(tags)
    if attempt == 1:
        node = ray.util.get_node_ip_address()
        tracker.log_text(f"Ray Train rank-0 worker on node {node}\n\n{gpu_info_text()}", metrics.GPU_INFO_ARTIFACT)
        return None
    epoch = resume["state"].next_epoch if resume else 0
    print(f"restart {attempt - 1}: continuing at epoch {epoch + 1} from {source or 'the start'}", flush=True)
    tracker.set_tags({f"mltrain.ray.restart.{attempt - 1}.checkpoint": source or "none"})
    return attempt - 1


class _Reporter:
    """The recipe's epoch hook in a Ray worker: every rank reports; rank 0 with the checkpoint folder."""

    def __init__(self, rank: int, folder: Path) -> None:
        self.rank = rank
        self.folder = folder

    def __call__(self, epoch: int, values: dict[str, float], _index: Path) -> None:
        import ray.train

        checkpoint = ray.train.Checkpoint.from_directory(str(self.folder)) if self.rank == 0 else None
        ray.train.report({**values, "epoch": epoch}, checkpoint=checkpoint)


class _FirstStepAfterRestart(Callback):
    """Tags when a restarted worker group trains again, and from which epoch (what failover cost)."""

    def __init__(self, tracker: Any, restart: int) -> None:
        self.tracker = tracker
        self.restart = restart
        self.done = False

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if self.done:
            return
        self.done = True
        now = datetime.now(UTC).isoformat(timespec="milliseconds")
        node = ray.util.get_node_ip_address()
        self.tracker.set_tags(
            {f"mltrain.ray.restart.{self.restart}": f"epoch {trainer.current_epoch}; first step at {now} on {node}"}
        )
