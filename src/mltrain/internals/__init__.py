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
  * ``node_ip_option()`` -- ``ray.init``'s private ``_node_ip_address``: loopback-only embedded Ray and clients
    (``mltrain.launchers.ray.session``), on addresses Ray keeps (``resolve_ip_for_localhost`` rewrites 127.0.0.1).
  * ``TRAIN_PRINT_PATCH_VAR``, ``quiet_worker_prints()`` -- Ray Train's internal switch for its print patch, so
    the workers' epoch lines print once (``mltrain.launchers.ray.driver``).
  * ``TRAIN_CONTROLLER_CLASS``, ``kill_train_controllers()`` -- Ray Train V2's controller actor, found by its
    internal class name and SIGKILLed on Ctrl+C/SIGTERM (``mltrain.launchers.ray.driver``).
  * ``JOB_CONFIG_VAR`` -- the variable Ray's job manager sets in a job's entrypoint (``mltrain.env.inside_ray_job``).
  * ``GRACEFUL_DRAIN_VAR`` -- Ray's internal drain timeout, 0 for ``cluster stop-worker`` (``mltrain.cluster.nodes``).
  * ``SESSION_LATEST``, ``raylet_sockets()`` -- Ray's session folder layout: nodes of one host start one at a
    time (``mltrain.cluster.nodes.wait_sockets``).

* :mod:`.mlflow`

  * ``local_dataset_source()`` -- a local folder's dataset source, built through the public
    ``mlflow.data.get_source`` from its recorded form (type ``local``, ``{"uri": ...}``) instead of the
    undocumented ``mlflow.data.dataset_source_registry`` (``mltrain.tracking.datasets``).
  * ``context_tags()``, ``warm_up_imports()`` -- ``mlflow.tracking.context.registry`` (the tags
    ``mlflow.start_run`` gives a run) and the SQL store's module: run owners create runs through the client
    (``mltrain.tracking.owner.create_run``, ``mltrain.tracking.starter``).
  * ``import_system_metrics()``, ``system_metrics_monitor()`` -- ``mlflow.system_metrics``' monitor class, to sample
    a run attached by id, at least once (``mltrain.tracking.logger``).
  * ``skip_lightning_autolog_import()`` -- ``mlflow.pytorch``'s private ``_lightning_autolog`` module, kept from
    importing ``pytorch_lightning`` in the ``mltrain`` command's processes (``mltrain.cli.main``).
  * Not a private use: ``mltrain.tracking.datasets.Food11Dataset._compute_digest``. It is the abstract method
    that ``mlflow.data.dataset.Dataset`` (documented) asks every subclass to implement, MLflow's own datasets
    included.

* :mod:`.lightning`

  * ``is_batch_fetch()`` -- the loops' profiler action names (``..._next``) that time a batch fetch
    (``mltrain.engines.lightning.callbacks.DataWaitTimer``).
  * ``epochs_processed()`` -- the fit loop's progress counter: the epoch a restored trainer runs next
    (``mltrain.engines.lightning.module.Food11DataModule``).
  * ``relocated_checkpoint_state()`` -- ``ModelCheckpoint``'s state-dict format, rewritten for a moved checkpoint
    folder (``mltrain.engines.lightning.callbacks.BestCheckpoint``).
  * ``stop_local_ranks()`` -- the DDP launcher's ``procs`` (``_SubprocessScriptLauncher``): rank 0 stops and reaps
    the other ranks so that it can end its run (``mltrain.engines.lightning.recipe``).

* :mod:`.torchvision`

  * ``KernelOverride`` -- overrides ``torchvision.transforms.v2.Transform._call_kernel`` to swap one kernel of
    a transform (``mltrain.data.hue.ColorJitter``: the table-driven hue shift).
"""
