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
