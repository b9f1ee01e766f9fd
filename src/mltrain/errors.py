"""The one exception family a user sees: problems with configuration, data or environment.

Anything raised as :class:`MltrainError` is a user mistake or an unmet precondition; the CLI prints its
message on one line and exits with status 2. Everything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class MltrainError(Exception):
    """A problem the user can fix; the message says what was expected and what was found."""

    exit_code = 2


class ConfigError(MltrainError):
    """An unknown key, a wrong type or an impossible value in the training configuration."""


class DataError(MltrainError):
    """A data directory, archive or download that does not look like Food-11."""


class TrackingError(MltrainError):
    """An MLflow experiment, run, model or registry entry that is missing or unusable."""


class RegistryError(TrackingError):
    """A model registry request that cannot be met: no such model, alias or version, or nothing to promote."""


class ClusterError(MltrainError):
    """A Ray cluster that is missing, unreachable, refuses our token, or cannot run what was asked."""


class InfeasibleRequest(ClusterError):
    """A job asks for more than any node of the cluster has, so Ray would leave it PENDING for ever."""


class TrainingFailed(Exception):
    """A training that failed beyond recovery (e.g. Ray Train restarts exhausted); its checkpoint was kept.

    Not a usage error: the CLI prints the message (which says how to continue) and exits with status 1.
    """

    exit_code = 1


class TrainingInterrupted(BaseException):  # a BaseException like KeyboardInterrupt, which it stands in for
    """Raised in the main thread when the process receives SIGTERM, so runs end as KILLED.

    It derives from BaseException (like KeyboardInterrupt) so that ``except Exception`` blocks in
    libraries do not swallow it.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(f"received signal {signum}")
        self.signum = signum
