"""The README, run as written: each ``##`` section one test, in order, in one sandbox (see tests/readme.py).

A section run alone (``-k Registry``) first runs the sections before it that it may depend on (those without
a mark such as ``ray``: a marked section must leave nothing later sections need).
"""

from __future__ import annotations

import os
import shutil
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import readme
from tests.helpers import REPO

pytestmark = pytest.mark.integration

SECTIONS = readme.parse((REPO / "README.md").read_text(encoding="utf-8"))
KEPT_VARIABLES = ("PATH", "PYTHONPATH", "LANG", "LC_ALL", "LC_CTYPE", "USER", "LOGNAME", "TMPDIR", "TERM")
"""What the sandbox's commands inherit from the test's environment: a fresh shell's, nothing of mltrain's."""
UNTRACKED_BY_DESIGN = {"my.yaml"}
"""Files the README has the reader create as their own (to keep, edit, commit): git need not ignore them."""


def _food11_zip(target: Path, work: Path) -> None:
    """A tiny zip in the download's layout: split folders of ``<class>_<n>.jpg`` files."""
    from mltrain.data.synth import synthesize

    synthesize(work, per_class=2, image_size=(64, 48), seed=3, eval_per_class=1)
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(target, "w") as bundle:
        for image in sorted(work.rglob("*.jpg")):  # synth names them <class>_<n>.jpg, as Food-11 does
            bundle.write(image, f"{image.parts[-3]}/{image.name}")


def _stand_in_weights(home: Path) -> None:
    """Random MobileNetV2 weights where torch looks for the ImageNet ones (the README's offline procedure)."""
    import torch
    from torchvision.models import mobilenet_v2

    from mltrain.model import WEIGHTS

    target = home / ".cache" / "torch" / "hub" / "checkpoints" / WEIGHTS.url.rsplit("/", 1)[-1]
    target.parent.mkdir(parents=True)
    torch.save(mobilenet_v2(weights=None).state_dict(), target)


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory, hue_tables_file: Path) -> Iterator[readme.Sandbox]:
    base = tmp_path_factory.mktemp("readme")
    home = base / "home"
    _food11_zip(home / "Downloads" / "food11.zip", base / "zip-source")
    _stand_in_weights(home)
    cache = home / ".cache" / "mltrain" / hue_tables_file.relative_to(hue_tables_file.parent.parent)
    cache.parent.mkdir(parents=True)
    os.link(hue_tables_file, cache)  # 128 MB the set-up need not build again (see tests/conftest.py)
    root = base / "mltrain"
    env = {name: os.environ[name] for name in KEPT_VARIABLES if name in os.environ}
    env |= {"HOME": str(home), "PATH": f"{root / '.venv' / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}"}
    with readme.sandbox(REPO, base, env) as sandbox:
        (root / ".venv").symlink_to(sys.prefix)  # `source .venv/bin/activate`, as the README says
        with open(root / ".git" / "info" / "exclude", "a") as exclude:
            exclude.write(".venv\n")  # a link, not the folder .gitignore names
        yield sandbox
    shutil.rmtree(base / "zip-source", ignore_errors=True)


def _run_through(box: readme.Sandbox, title: str) -> None:
    for section in SECTIONS:
        if section.title in box.done:
            continue
        if section.title != title and section.marks:
            continue  # a marked section runs only when selected
        box.done.add(section.title)
        for block in section.blocks:
            if block.runnable or block.output_of is not None:
                box.run_block(block)
        if section.title == title:
            return


@pytest.mark.timeout(1200)
@pytest.mark.parametrize(
    "title",
    [pytest.param(s.title, marks=[getattr(pytest.mark, m) for m in s.marks], id=s.title) for s in SECTIONS],
)
def test_readme_section_runs(box: readme.Sandbox, title: str) -> None:
    _run_through(box, title)


@pytest.mark.timeout(1200)
def test_what_the_readme_makes_is_git_ignored(box: readme.Sandbox) -> None:
    _run_through(box, SECTIONS[-1].title)
    left = [name for name in box.untracked() if name not in UNTRACKED_BY_DESIGN]
    assert not left, f"files the README's commands made that git does not ignore: {left}"
    print("\n".join(["not run here:", *box.skipped]))
