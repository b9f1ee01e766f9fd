"""Every use mltrain makes of a private or internal name of Ray, MLflow, Lightning, torch or torchvision.

The rule:

* A name that a framework does not document as public (a ``_private``/``_internal`` module, a ``_name``, an
  undocumented route, constant or data layout) is used here and nowhere else: one module per framework
  (:mod:`.ray`, :mod:`.mlflow`, :mod:`.lightning`, :mod:`.torchvision`; add ``torch.py`` for torch), each use a
  small named function, class or constant whose docstring or comment says why no public API does it.
  Where a public API does the job, the code uses that instead and nothing is added here.
* Each use has a test in ``tests/unit/test_internals.py`` that fails when an upgrade of the framework removes
  or changes what it relies on (the module, attribute or constant is gone, or has another signature or
  format), so that an upgrade breaks one named test instead of a training on a cluster. The tests are fast:
  they read the installed framework's code, start no cluster and no server.
* Importing this package or any of its modules imports no framework: ``mltrain.console`` and the CLI use it
  and must stay light. Import the framework inside the functions.

To add a use: put it in its framework's module, add its test, and add it to the list below.

The uses (module: name -- what for, where):

* :mod:`.ray`

  * ``TOKEN_SETUP_LOGGER``, ``TOKEN_AUTH_ENABLED_WARNING`` -- the logger of the private
    ``ray._private.authentication.authentication_token_setup`` and its "token auth on" warning, dropped by
    the quiet console (``mltrain.console``).
  * ``PLACEMENT_GROUP_CLEANER_LOGGER``, ``train_report_logger_name()`` -- Ray Train's ``_internal`` loggers that
    Ray workers quiet (``mltrain.console.quiet_ray_worker``).
  * ``JOB_SDK_LOGGER`` -- the Jobs SDK's logger, quieted while a log is streamed (``mltrain.cluster.jobs``).
  * ``reset_auth_token_cache()`` -- ``ray._raylet.Config.initialize`` and ``AuthenticationTokenLoader``: re-read
    the token variables in-process (``mltrain.cluster.connection.client_auth``).
  * ``kill_job_supervisor_script()`` -- the job supervisor actor's name and namespace
    (``ray.dashboard.modules.job.common``), to stop a PENDING job (``mltrain.cluster.jobs.stop_job``).
  * ``CLUSTER_STATUS_PATH``, ``load_metrics_report()``, ``reported_demands()``, ``used_by_node()`` -- the
    dashboard's undocumented ``/api/cluster_status`` route and its JSON layout: pending demands and per-node
    usage (``mltrain.cluster.status``).

* :mod:`.mlflow`

  * ``local_dataset_source()`` -- a local folder's dataset source, built through the public
    ``mlflow.data.get_source`` from its recorded form (type ``local``, ``{"uri": ...}``) instead of the
    undocumented ``mlflow.data.dataset_source_registry`` (``mltrain.tracking.datasets``).
  * Not a private use: ``mltrain.tracking.datasets.Food11Dataset._compute_digest``. It is the abstract method
    that ``mlflow.data.dataset.Dataset`` (documented) asks every subclass to implement, MLflow's own datasets
    included.

* :mod:`.lightning` -- none yet.

* :mod:`.torchvision`

  * ``KernelOverride`` -- overrides ``torchvision.transforms.v2.Transform._call_kernel`` to swap one kernel of
    a transform (``mltrain.data.hue.ColorJitter``: the table-driven hue shift).
"""
