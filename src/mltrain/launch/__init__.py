"""Where a training runs besides this process: :mod:`mltrain.launch.ray` starts the Lightning engine on Ray
Train workers (``engine=ray``). The local engines (``torch``, ``lightning``) run in :mod:`mltrain.engines`;
:func:`mltrain.training.train` owns the MLflow run in every case."""
