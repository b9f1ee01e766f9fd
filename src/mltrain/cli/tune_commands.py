"""``mltrain tune``: the command over :func:`mltrain.search.tune`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mltrain import metrics
from mltrain.cli.commands import ConfigOption, SetOption, overrides


def tune(
    search: Annotated[
        list[str] | None,
        typer.Option(
            "--search",
            help="A searched key: key=choice(a,b,...), uniform(lo,hi), loguniform(lo,hi) or randint(lo,hi) "
            "(repeatable) [default: batch_size=choice(32,64) and dropout_probability=uniform(0.1,0.8)].",
        ),
    ] = None,
    samples: Annotated[int, typer.Option(help="Trials (configs drawn from the search space).")] = 16,
    max_epochs: Annotated[
        int | None, typer.Option(help="Epochs a trial runs if ASHA never stops it [default: config's total_epochs].")
    ] = None,
    grace_period: Annotated[int, typer.Option(help="ASHA: epochs every trial runs before it can be stopped.")] = 1,
    reduction_factor: Annotated[float, typer.Option(help="ASHA: 1 in this many trials goes on at each rung.")] = 2,
    metric: Annotated[str, typer.Option(help="Per-epoch metric ASHA and the ranking use.")] = metrics.VAL_ACCURACY,
    mode: Annotated[str, typer.Option(help="max or min: whether a higher metric is better.")] = "max",
    workers_per_trial: Annotated[
        str, typer.Option(help="Ray Train workers of each trial: N, or MIN-MAX for elastic trials (e.g. 1-2).")
    ] = "1",
    cpus_per_trial: Annotated[
        float | None, typer.Option(help="CPUs of each trial, split over its workers [default: 1 per worker].")
    ] = None,
    gpus_per_trial: Annotated[
        float | None,
        typer.Option(
            help="GPUs of each trial, split over its workers [default: 0.5 a worker if the cluster has GPUs]."
        ),
    ] = None,
    max_concurrent: Annotated[
        int | None, typer.Option(help="Trials at once [default: as many as the cluster's resources hold].")
    ] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
    data: Annotated[
        Path | None, typer.Option("--data", "-d", help="Food-11 folder [default: $FOOD11_DATA_DIR or ./Food-11].")
    ] = None,
    experiment: Annotated[str, typer.Option(help="MLflow experiment of the search and trials.")] = metrics.EXPERIMENT,
    run_name: Annotated[str | None, typer.Option(help="Name of the search's (parent) MLflow run.")] = None,
    address: Annotated[
        str | None, typer.Option(help="Ray cluster [default: $RAY_ADDRESS, `cluster up`'s, else embedded Ray].")
    ] = None,
) -> None:
    """Search hyperparameters with ASHA on Ray Tune; every trial an MLflow child run of the search's run.

    Each trial trains like `mltrain train --engine ray` with the values it drew; ASHA stops the
    unpromising ones early. At the end: the trials sorted by the metric, the best config (also in the
    search run's best-config.yaml), and tune_compute_fraction, the share of samples x max epochs run.
    --config/--set fix the other keys; the search draws its configs from the config's seed.

    \b
    Examples:
      mltrain tune --data Food-11                                 # the lab's search: 16 samples, ASHA
      mltrain tune --data data/synth --samples 8 --max-epochs 6 --set initial_epochs=1 \\
          --search 'dropout_probability=uniform(0.1,0.8)' --search 'lr=loguniform(1e-5,1e-3)'
      mltrain compare --runs <run id>,<run id>                    # then: mltrain registry promote
    """
    from mltrain.launchers.ray.options import parse_workers
    from mltrain.search import SearchSettings
    from mltrain.search import tune as run_search

    workers = parse_workers(workers_per_trial)

    result = run_search(
        search=search or (),
        overrides=overrides(set_),
        config_file=config,
        data_dir=data,
        experiment=experiment,
        run_name=run_name,
        settings=SearchSettings(
            samples=samples,
            max_epochs=max_epochs,
            grace_period=grace_period,
            reduction_factor=reduction_factor,
            metric=metric,
            mode=mode,
            workers_per_trial=int(workers["workers"] or 1),
            min_workers_per_trial=workers["min_workers"],
            cpus_per_trial=cpus_per_trial,
            gpus_per_trial=gpus_per_trial,
            max_concurrent=max_concurrent,
        ),
        address=address,
    )
    print()
    print(result.summary())
