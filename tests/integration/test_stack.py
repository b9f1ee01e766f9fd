"""`mltrain stack init`'s env file as git sees it (a `git check-ignore` subprocess)."""

import subprocess

import pytest

from tests.helpers import REPO

pytestmark = pytest.mark.integration


def test_generated_env_file_is_ignored_by_git() -> None:
    done = subprocess.run(["git", "check-ignore", "-q", "deploy/mlflow/.env"], cwd=REPO)
    assert done.returncode == 0
