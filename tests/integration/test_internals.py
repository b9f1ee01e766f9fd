"""mltrain.internals imported in a fresh interpreter (a subprocess): it loads no framework."""

import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def test_importing_the_internals_imports_no_framework() -> None:
    modules = ", ".join(f"mltrain.internals.{name}" for name in ("ray", "mlflow", "lightning", "torchvision"))
    code = (
        f"import mltrain.console, {modules}, sys; "
        "print([m for m in ('ray', 'mlflow', 'torch', 'torchvision', 'lightning') if m in sys.modules])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def _fresh(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


@pytest.mark.parametrize(("skip", "imported"), [(True, "[]"), (False, "['pytorch_lightning']")])
def test_the_command_logs_and_loads_a_model_without_importing_lightning(skip: bool, imported: str) -> None:
    """``mltrain``'s processes skip mlflow.pytorch's Lightning autologging import (2-9 s of CPU each) and the
    model still logs and loads; without the skip, mlflow.pytorch imports pytorch_lightning (the check can fail)."""
    code = (
        "import sys, torch, mlflow, mlflow.pytorch; "
        "run = mlflow.MlflowClient().create_run(mlflow.MlflowClient().create_experiment('e')); "
        "from mltrain.tracking.models import log_model; from mltrain.model import build_model; "
        "from mltrain.config import TrainConfig; "
        "uri = log_model(run.info.run_id, build_model(TrainConfig(pretrained=False)), 32); "
        "print(mlflow.pytorch.load_model(uri)(torch.zeros(1, 3, 32, 32)).shape[-1], "
        "[m for m in ('pytorch_lightning', 'lightning') if m in sys.modules])"
    )
    first = "from mltrain.internals.mlflow import skip_lightning_autolog_import; skip_lightning_autolog_import(); "
    assert _fresh((first if skip else "") + code) == f"11 {imported}"


def test_a_ray_driver_or_trial_imports_the_worker_loop_without_lightning() -> None:
    """The Ray launcher's driver (and each Tune trial) hands Ray the workers' loop by reference: importing it must
    not cost Lightning's import (~9 s of CPU here) in processes that never train."""
    code = (
        "import sys, mltrain.launchers.ray.driver, mltrain.search.trial; "
        "from mltrain.launchers.ray.worker import train_loop_per_worker; "
        "print([m for m in ('pytorch_lightning', 'lightning') if m in sys.modules])"
    )
    assert _fresh(code) == "[]"
