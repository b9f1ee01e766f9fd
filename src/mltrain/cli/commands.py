"""Subcommand functions. Each parses options, calls the Python API and prints; nothing more."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from mltrain import metrics

if TYPE_CHECKING:
    from mltrain.launchers import Launcher

ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML file of config keys (see `mltrain config show`).")
]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override one config key, e.g. --set lr=0.001 (repeatable)."),
]


def overrides(sets: list[str] | None, **flags: object) -> list[str]:
    """``--set`` values plus dedicated flags (which win), as key=value strings."""
    items = list(sets or [])
    items += [f"{key}={value}" for key, value in flags.items() if value is not None]
    return items


def train(
    config: ConfigOption = None,
    set_: SetOption = None,
    data: Annotated[
        Path | None, typer.Option("--data", "-d", help="Food-11 folder [default: $FOOD11_DATA_DIR or ./Food-11].")
    ] = None,
    experiment: Annotated[str, typer.Option(help="MLflow experiment.")] = metrics.EXPERIMENT,
    engine: Annotated[
        str | None,
        typer.Option(help="torch or lightning [default: config's engine]; ray = lightning with --launcher ray."),
    ] = None,
    launcher: Annotated[
        str | None,
        typer.Option(help="Where it trains: local (this machine) or ray (Ray Train workers) [default: local]."),
    ] = None,
    devices: Annotated[str | None, typer.Option(help="Number of devices, or auto.")] = None,
    accelerator: Annotated[str | None, typer.Option(help="auto, cpu, gpu or mps.")] = None,
    workers: Annotated[
        str | None, typer.Option(help="Ray: Ray Train workers, N or MIN-MAX (elastic, e.g. 1-2).")
    ] = None,
    resize_interval: Annotated[
        float | None, typer.Option(help="Ray, elastic: seconds between checks to grow the group.")
    ] = None,
    cpus_per_worker: Annotated[float | None, typer.Option(help="Ray: CPUs per worker.")] = None,
    gpus_per_worker: Annotated[
        float | None, typer.Option(help="Ray: GPUs per worker; a fraction lets trainings share one.")
    ] = None,
    storage: Annotated[
        str | None, typer.Option(help="Ray: checkpoint storage, a shared path or s3://bucket/prefix.")
    ] = None,
    max_failures: Annotated[
        int | None, typer.Option(help="Ray: worker failures to recover from (-1: no limit).")
    ] = None,
    address: Annotated[
        str | None,
        typer.Option(help="Ray: the cluster [default: $RAY_ADDRESS, `cluster up`'s, else embedded Ray]."),
    ] = None,
    run_name: Annotated[str | None, typer.Option(help="Name of the MLflow run.")] = None,
    resume: Annotated[
        Path | None,
        typer.Option(
            help="Continue a stopped or finished training in its MLflow run: its checkpoint folder, or its run id "
            "(under output_dir). --set may change only keys like total_epochs and patience."
        ),
    ] = None,
    progress: Annotated[bool, typer.Option(help="Progress bars over batches.")] = True,
) -> None:
    """Train the Food-11 classifier and track the run in MLflow.

    Two phases: the classifier head alone for initial_epochs, then the whole network until
    total_epochs or early stopping. Tracks into $MLFLOW_TRACKING_URI, else ./mlflow.db.
    The Ray options (--workers ... --address) imply --launcher ray.

    \b
    Examples:
      mltrain train --data Food-11
      mltrain train --config my.yaml --set lr=3e-4 --set total_epochs=10
      mltrain train --resume outputs/<run_id> --set total_epochs=30
      mltrain train --engine ray --workers 2 --data Food-11
      mltrain train --launcher ray --workers 1-2 --resize-interval 30 --data Food-11
    """
    from mltrain import env
    from mltrain.errors import TrainingInterrupted
    from mltrain.tracking.owner import RunSpec
    from mltrain.training import plan_training, run_training

    ray_options: dict[str, Any] = {
        **(_parse_workers(workers) if workers is not None else {}),
        **_given(
            resize_interval=resize_interval,
            cpus_per_worker=cpus_per_worker,
            gpus_per_worker=gpus_per_worker,
            storage=storage,
            max_failures=max_failures,
            address=address,
        ),
    }
    try:
        plan = plan_training(
            None,
            overrides(set_, engine=engine, devices=devices, accelerator=accelerator),
            config,
            data,
            resume,
            _launcher(launcher, ray_options),
        )
        result = run_training(
            plan,
            RunSpec(experiment, run_name=run_name),
            progress=progress,
            launched_at=env.process_started_at(),  # startup_seconds counts from the command's start
        )
    except (KeyboardInterrupt, TrainingInterrupted) as exc:
        hint = getattr(exc, "resume_hint", None)
        if hint is not None:  # which run stopped, and the command that continues it
            print(hint, file=sys.stderr, flush=True)
        raise
    print(result.summary())


def _given(**values: Any) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value is not None}


def _parse_workers(text: str) -> dict[str, int | None]:
    from mltrain.launchers.ray.options import parse_workers

    return parse_workers(text)


def _launcher(name: str | None, ray_options: dict[str, Any]) -> Launcher | str | None:
    """The launcher the flags ask for: by name, or Ray's when its options are given; else None (the config
    decides: ``engine: ray`` or ``--engine ray``, the alias, else local)."""
    from mltrain.errors import ConfigError

    if name is None and ray_options:
        name = "ray"
    if name != "ray":
        if ray_options:
            given = dict.fromkeys(f"--{key.replace('_', '-')}" for key in ray_options if key != "min_workers")
            flags = ", ".join(given)  # --workers N|MIN-MAX sets both workers and min_workers
            raise ConfigError(f"{flags}: options of the Ray launcher; this training uses --launcher {name}")
        return name
    from mltrain.launchers.ray import RayLauncher, RayOptions

    return RayLauncher(RayOptions.of(**ray_options))


def data_prepare(
    dest: Annotated[Path, typer.Option(help="Folder to create the Food-11 tree in.")],
    archive: Annotated[Path | None, typer.Option(help="A local copy of the Food-11 zip (no download).")] = None,
    url: Annotated[str | None, typer.Option(help="Download from this URL instead of the default mirror.")] = None,
) -> None:
    """Download (or take --archive), unpack and sort Food-11 into class folders.

    Running it again on a prepared folder changes nothing.

    \b
    Examples:
      mltrain data prepare --dest Food-11
      mltrain data prepare --dest Food-11 --archive ~/Downloads/food11.zip
    """
    from mltrain.data.prepare import FOOD11_URL, prepare

    report = prepare(dest, archive=archive, url=url or FOOD11_URL)
    if not report.changed:
        print(f"{dest} is already a prepared Food-11 folder; nothing changed")
    if report.unrecognised:
        print(f"left {len(report.unrecognised)} file(s) whose names are not <class>_<n>.<ext> in place")
    _print_counts(report.counts)


def data_synth(
    dest: Annotated[Path, typer.Option(help="Folder to write the synthetic set into.")],
    per_class: Annotated[int, typer.Option(help="Training images per class (validation/evaluation: a quarter).")] = 40,
    image_size: Annotated[str, typer.Option(help="WIDTHxHEIGHT of each JPEG, or one number.")] = "512x384",
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Write a small learnable Food-11 look-alike (JPEGs, same layout) for demos and tests.

    \b
    Example:
      mltrain data synth --dest data/synth --per-class 40 --image-size 512x384
    """
    from mltrain.data.synth import synthesize

    _print_counts(synthesize(dest, per_class=per_class, image_size=image_size, seed=seed))


def ui(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 5000,
    tracking_uri: Annotated[
        str | None, typer.Option(help="Store to show [default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db].")
    ] = None,
    experiment: Annotated[str, typer.Option(help="Experiment to open.")] = metrics.EXPERIMENT,
    open_: Annotated[bool, typer.Option("--open", help="Also open the link in your browser.")] = False,
) -> None:
    """Open the MLflow UI on the store the runs were tracked in, on its model-training view.

    For a local store it serves the UI on 127.0.0.1 until Ctrl+C; for a tracking server it prints the link
    into the server's UI. Trainings that end while it runs print a link to their run.

    \b
    Examples:
      mltrain ui                 # then open the link it prints
      mltrain ui --open --port 5001
    """
    from mltrain import console
    from mltrain.tracking.webui import serve

    code = serve(tracking_uri, port=port, experiment=experiment, open_browser=open_, verbose=console.is_verbose())
    if code:
        raise typer.Exit(code)


def config_show(config: ConfigOption = None, set_: SetOption = None) -> None:
    """Print the resolved configuration (defaults, then --config, then --set) as YAML, with help.

    The output is a config file: save it, edit it, train with --config. A file of before mltrain 0.2 may hold
    the Ray launcher's keys too (workers, cpus_per_worker ...): they are shown apart, as comments.

    \b
    Examples:
      mltrain config show --set total_epochs=3
      mltrain config show > my.yaml && mltrain train --config my.yaml
    """
    import yaml

    from mltrain.config import TrainConfig, resolve

    resolved, launch = resolve(config, overrides(set_))
    for key, value in resolved.model_dump().items():
        help_text = " ".join((TrainConfig.model_fields[key].description or "").split())  # one line: valid YAML
        print(f"{yaml.safe_dump({key: value}).strip():<34} # {help_text}")
    if launch.launcher or launch.options:
        print(f"# launcher {launch.launcher or '(not named)'}: its options are not config keys; the file's were:")
        for key, value in launch.options.items():
            print(f"#   {yaml.safe_dump({key: value}).strip()}")


def _print_counts(counts: dict[str, list[int]]) -> None:
    from mltrain.data.layout import CLASS_NAMES

    for split, per_class in counts.items():
        detail = ", ".join(f"{name} {n}" for name, n in zip(CLASS_NAMES, per_class, strict=True))
        print(f"{split:<11} {sum(per_class):>6} images: {detail}")


def bench(
    data: Annotated[
        Path | None,
        typer.Option("--data", "-d", help="Food-11-style folder [default: a synthetic set in data/bench, made once]."),
    ] = None,
    epochs: Annotated[str, typer.Option(help="HEAD+FINE_TUNE epochs for each loop.")] = "1+1",
    set_: SetOption = None,
    json_file: Annotated[Path | None, typer.Option("--json", help="Also write the results to this JSON file.")] = None,
    loop: Annotated[
        list[str] | None, typer.Option(help="Run only this loop: naive or mltrain (repeatable) [default: both].")
    ] = None,
    progress: Annotated[bool, typer.Option(help="Progress bars over batches.")] = True,
) -> None:
    """Measure mltrain's data path against a naive training loop on the same data and model.

    Both loops train the lab's hyperparameters (batch 32, 224 px) from random weights for the same
    epochs; prints images/s and data_wait_fraction per phase, their ratio, and both val accuracies.

    \b
    Examples:
      mltrain bench                                   # 440 synthetic 512x384 JPEGs, 1+1 epochs
      mltrain bench --data Food-11 --epochs 2+2 --json bench.json
      mltrain bench --set image_size=128 --loop mltrain
    """
    from mltrain.bench import bench_config, run_bench, write_json

    try:
        head_epochs, fine_tune_epochs = (int(part) for part in epochs.split("+"))
    except ValueError:
        raise typer.BadParameter(f"expected HEAD+FINE_TUNE, e.g. 1+1, got {epochs!r}") from None
    config = bench_config(head_epochs, fine_tune_epochs, set_ or [])
    root = data if data is not None else _bench_data()
    result = run_bench(root, config, progress=progress, loops=loop or ("naive", "mltrain"))
    print()
    machine = result.machine
    print(f"machine: {machine['processor']}, {machine['cpus_available']} CPUs, {machine['device']}")
    print(result.table())
    if json_file is not None:
        print(f"wrote {write_json(result, json_file)}")


def _bench_data() -> Path:
    """The default bench set: 40 training images per class at 512x384, synthesised on first use."""
    from mltrain.data.synth import synthesize

    root = Path("data/bench")
    if not (root / "training").is_dir():
        print(f"synthesising the bench set in {root} (440 training JPEGs, 512x384)")
        synthesize(root, per_class=40, image_size="512x384", seed=0)
    return root
