"""What hardware a run saw: the ``gpu-info.txt`` artifact and the git commit of the working tree."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path


def gpu_info_text() -> str:
    """``nvidia-smi`` or ``rocm-smi`` output (or a line saying there is no GPU), plus torch's view."""
    sections = []
    for tool in ("nvidia-smi", "rocm-smi"):
        if shutil.which(tool):
            sections.append(f"$ {tool}\n{_run([tool])}")
            break
    else:
        sections.append("No GPU tool found (neither nvidia-smi nor rocm-smi is installed): no GPU visible.")
    sections.append(_torch_view())
    return "\n\n".join(sections) + "\n"


def _torch_view() -> str:
    import torch

    lines = [f"torch {torch.__version__}", f"cuda available: {torch.cuda.is_available()}"]
    if torch.cuda.is_available():
        lines.append(f"cuda/hip version: {torch.version.cuda or torch.version.hip}")
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            lines.append(f"device {index}: {props.name}, {props.total_memory / 2**30:.1f} GiB")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        lines.append("mps available: True")
    lines.append(f"cpu threads: {torch.get_num_threads()}")
    return "\n".join(lines)


def _run(command: list[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"(failed to run: {exc})"
    return (done.stdout + done.stderr).strip()


def git_state(path: str | Path = ".") -> tuple[str | None, bool]:
    """(commit, dirty) of the git working tree containing ``path``, or (None, False) outside one."""
    if not shutil.which("git"):
        return None, False
    try:
        commit = subprocess.run(
            ["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=False
        )
        if commit.returncode != 0:
            return None, False
        status = subprocess.run(
            ["git", "-C", str(path), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None, False
    return commit.stdout.strip(), bool(status.stdout.strip())
