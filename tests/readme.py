"""Run the README as a newcomer would: every ```bash and ```python block, in order, in a sandbox.

``tests/integration/test_readme.py`` runs each ``##`` section of README.md as one test; a command that
fails fails it. What cannot or need not run at full size here is said *in the README itself*, in an HTML
comment right before the block (invisible on GitHub, next to the text it changes)::

    <!-- readme-test
    skip "mltrain data prepare --dest Food-11 ": downloads 1.1 GB; the --archive line prepares a tiny zip instead
    sub "--per-class 40 --image-size 512x384" "--per-class 4 --image-size 64x48"
    add "mltrain train": --set image_size=32
    -->
    ```bash
    ...
    ```

One directive per line; ``TEXT`` selects the lines of the block that contain it, or with a final ``$`` whose
command ends with it (each directive must select at least one line, so none outlives the command it was
written for):

``skip: REASON``                the whole block does not run (no Docker engine, no GPU, a server ...).
``skip "TEXT": REASON``         lines containing TEXT do not run.
``sub "OLD" "NEW"``             OLD is replaced by NEW in the block before it runs (smaller data, a placeholder).
``add "TEXT": ARGS``            ARGS are appended to lines containing TEXT (``--set`` shrinking).
``exit N "TEXT": REASON``       lines containing TEXT must exit with status N here. A line whose own comment
                                says ``# exit N`` must too, without a directive.
``serve "TEXT": REASON``        the line starts a server: it runs in the background until the README is done,
                                once the ``http://127.0.0.1:PORT`` link it prints answers.
``before: SHELL``               a shell line run before the block (set-up the README leaves to the reader).
``cleanup: SHELL``              a shell line run when the sandbox closes, if the block ran (e.g. stop a cluster).
``mark: NAME``                  the section's test gets the pytest mark NAME (``ray`` ...).
``covered: TEST``               (documentation only) where the block's behaviour is tested at length.

``NEW``, ``ARGS`` and ``SHELL`` may name values the runner knows, in braces: ``{stopped_run}`` (the id of a
training stopped after its first epoch, made on first use), ``{last_run}`` / ``{first_run}`` (the newest /
oldest run in ``./mlflow.db``), ``{last_job}`` (the job id the last ``mltrain submit`` printed), ``{free_port}``.

A ```text block preceded by ``<!-- readme-test: output of "TEXT" -->`` is example output: for each of its lines
the last command containing TEXT must have printed a line with the same words in the same order, numbers, ids,
paths and class names (which vary from run to run) aside.

The sandbox is a git copy of the repository (tracked and unignored files) with ``.venv`` linked to the test's
own environment and on ``PATH`` (as after ``source .venv/bin/activate``), and a home folder of its own: the
Food-11 zip "you already have" in ``~/Downloads`` (a tiny one in the download's layout) and a stand-in for the
ImageNet weights in torch's cache (the README's offline procedure). Exported variables carry over from one
line and block to the next, as in one shell. At the end every file the README made must be git-ignored.

Adding a section: write it as for a reader; run ``pytest tests/integration/test_readme.py -k "<title>"``; add
directives only where a command cannot run here or would take long, and say why.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

_FENCE = re.compile(r"^(?P<indent>\s*)```(?P<lang>[\w-]*)\s*$")
_COMMENT_START = "<!-- readme-test"
_DIRECTIVE = re.compile(
    r"^(?P<kind>skip|sub|add|exit|serve|before|cleanup|mark|covered)(?:\s+(?P<number>\d+))?"
    r'(?:\s+"(?P<text>[^"]*)")?(?:\s+"(?P<new>[^"]*)")?\s*(?::\s*(?P<value>.*))?$'
)
_EXIT_COMMENT = re.compile(r"#\s*exit\s+(\d+)\b")
_LINE_COMMENT = re.compile(r"\s+#(?:\s|$).*$")
_LINK = re.compile(r"http://127\.0\.0\.1:(\d+)\S*")


@dataclass
class Directive:
    kind: str
    text: str | None = None
    new: str | None = None
    number: int | None = None
    value: str = ""


@dataclass
class Block:
    """A fenced block of the README, with the directives written before it."""

    section: str
    language: str
    lines: list[str]
    line_number: int
    directives: list[Directive] = field(default_factory=list)
    output_of: str | None = None

    @property
    def runnable(self) -> bool:
        return self.language in ("bash", "python")

    def where(self) -> str:
        return f"README.md:{self.line_number} ({self.section})"


@dataclass
class Section:
    title: str
    blocks: list[Block] = field(default_factory=list)

    @property
    def marks(self) -> list[str]:
        return [d.value for b in self.blocks for d in b.directives if d.kind == "mark"]


def parse(text: str) -> list[Section]:
    """The README's ``##`` sections and their fenced blocks with directives."""
    sections = [Section("(top)")]
    pending: list[Directive] = []
    output_of: str | None = None
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        if line.startswith("## "):
            sections.append(Section(line[3:].strip()))
        elif line.strip().startswith(_COMMENT_START):
            body, index = _comment(lines, index)
            found = re.fullmatch(r'output of "([^"]*)"', body.strip())
            if found:
                output_of = found.group(1)
            else:
                pending += [parse_directive(item) for item in body.splitlines() if item.strip()]
        elif fence := _FENCE.match(line):
            start, indent, content = index, len(fence.group("indent")), []
            index += 1
            while index < len(lines) and not _FENCE.match(lines[index]):
                content.append(lines[index][indent:] if lines[index][:indent].isspace() else lines[index].lstrip())
                index += 1
            block = Block(sections[-1].title, fence.group("lang"), content, start + 1, pending, output_of)
            sections[-1].blocks.append(block)
            pending, output_of = [], None
        index += 1
    return [section for section in sections if section.blocks]


def _comment(lines: list[str], index: int) -> tuple[str, int]:
    collected = [lines[index].strip().removeprefix(_COMMENT_START).lstrip(":")]
    while "-->" not in collected[-1]:
        index += 1
        collected.append(lines[index])
    collected[-1] = collected[-1].split("-->", 1)[0]
    return "\n".join(collected), index


def parse_directive(text: str) -> Directive:
    found = _DIRECTIVE.match(text.strip())
    if not found:
        raise ValueError(f"not a readme-test directive: {text.strip()!r} (see tests/readme.py)")
    number = found.group("number")
    return Directive(
        found.group("kind"),
        found.group("text"),
        found.group("new"),
        int(number) if number is not None else None,
        (found.group("value") or "").strip(),
    )


@dataclass
class Step:
    """One thing to run: a shell line (with what to expect of it) or a Python block."""

    block: Block
    command: str
    expect: int = 0
    serve: bool = False
    python: bool = False
    source: str = ""
    """The README's own line (for messages)."""


def plan(block: Block) -> tuple[list[Step], list[str]]:
    """The steps of a block after its directives, and what was skipped (line -> reason)."""
    directives = block.directives
    skipped: list[str] = []
    whole = [d for d in directives if d.kind == "skip" and d.text is None]
    if whole:
        return [], [f"{block.where()}: {whole[0].value}"]
    used = dict.fromkeys(id(d) for d in directives if d.kind in ("skip", "sub", "add", "exit", "serve"))
    lines = [_substituted(line, directives, used) for line in block.lines]
    if block.language == "python":
        source = "\n".join(lines)
        _check_used(block, used)
        return [Step(block, source, python=True, source="python block")], skipped
    steps: list[Step] = []
    for original, line in zip(block.lines, lines, strict=True):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        command = _LINE_COMMENT.sub("", line).rstrip()
        selected = [d for d in directives if d.text is not None and _selects(d.text, original)]
        for directive in selected:
            used[id(directive)] = True
        skip = next((d for d in selected if d.kind == "skip"), None)
        if skip is not None:
            skipped.append(f"{original.strip()}  <- {skip.value}")
            continue
        for directive in selected:
            if directive.kind == "add":
                command = f"{command} {directive.value}"
        expect = next((d.number for d in selected if d.kind == "exit"), None)
        if expect is None and (own := _EXIT_COMMENT.search(original)):
            expect = int(own.group(1))
        serve = any(d.kind == "serve" for d in selected)
        steps.append(Step(block, command, expect or 0, serve=serve, source=original.strip()))
    _check_used(block, used)
    return steps, skipped


def _selects(text: str, line: str) -> bool:
    if text.endswith("$"):
        return _LINE_COMMENT.sub("", line).rstrip().endswith(text[:-1])
    return text in line


def _substituted(line: str, directives: list[Directive], used: dict[int, bool | None]) -> str:
    for directive in directives:
        if directive.kind == "sub" and directive.text and directive.text in line:
            line = line.replace(directive.text, directive.new or "")
            used[id(directive)] = True
    return line


def _check_used(block: Block, used: dict[int, bool | None]) -> None:
    stale = [d for d in block.directives if used.get(id(d), True) is None]
    if stale:
        listed = ", ".join(f'{d.kind} "{d.text}"' for d in stale)
        raise AssertionError(f"{block.where()}: directive(s) that select no line of the block: {listed}")


# --- the sandbox --------------------------------------------------------------------------------------------------
class Sandbox:
    """A copy of the repository and a home folder in which the README's commands run, in order.

    Args:
        repo: The repository to copy (tracked and unignored files).
        root: Where to put the copy.
        home: The home folder of the commands (prepared by the caller: Downloads, torch cache ...).
        env: Base environment of the commands.
    """

    def __init__(self, repo: Path, root: Path, home: Path, env: dict[str, str]) -> None:
        self.root = root
        self.home = home
        self.env = env
        self.logs = root.parent / "readme-logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.outputs: list[tuple[str, str]] = []
        """(command, output) of every line run so far."""
        self.servers: list[subprocess.Popen] = []
        self.cleanups: list[str] = []
        self.skipped: list[str] = []
        self.done: set[str] = set()
        self._values: dict[str, str] = {}
        self._count = 0
        _copy_repository(repo, root)

    # --- values the directives may name -------------------------------------------------------------------
    def value(self, name: str) -> str:
        if name in ("last_run", "first_run"):
            return self._run_ids()[-1 if name == "last_run" else 0]
        if name == "last_job":
            found = [m for c, out in self.outputs if "submit" in c for m in re.findall(r"raysubmit_\w+", out)]
            assert found, "no raysubmit_ id printed so far"
            return found[-1]
        if name == "free_port":
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                return str(probe.getsockname()[1])
        if name not in self._values:
            makers: dict[str, Callable[[], str]] = {"stopped_run": self._stopped_run}
            if name not in makers:
                raise KeyError(f"unknown readme-test value {{{name}}} (see tests/readme.py)")
            self._values[name] = makers[name]()
        return self._values[name]

    def _fill(self, text: str) -> str:
        return re.sub(r"\{(\w+)\}", lambda m: self.value(m.group(1)), text)

    def _run_ids(self) -> list[str]:
        script = (
            "import mlflow; c = mlflow.MlflowClient('sqlite:///mlflow.db'); "
            "e = c.search_experiments(); "
            "print(' '.join(r.info.run_id for r in c.search_runs([x.experiment_id for x in e], "
            "order_by=['attributes.start_time ASC'])))"
        )
        done = subprocess.run(
            [sys.executable, "-c", script], cwd=self.root, env=self.env, capture_output=True, text=True, check=True
        )
        ids = done.stdout.split()
        assert ids, "no run in ./mlflow.db yet"
        return ids

    def _stopped_run(self) -> str:
        """A training stopped with Ctrl+C after its first epoch (as a user would), for --resume examples."""
        command = [
            "mltrain",
            "train",
            "--data",
            "data/synth",
            *("--set", "pretrained=false", "--set", "image_size=32", "--set", "initial_epochs=1"),
            *("--set", "total_epochs=4", "--no-progress"),
        ]
        process = subprocess.Popen(
            command,
            cwd=self.root,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        lines = []
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if line.startswith("epoch   1/"):
                process.send_signal(signal.SIGINT)
                break
        output = "".join(lines) + process.communicate(timeout=180)[0]
        found = re.search(r"mltrain train --resume outputs/(\w+)", output)
        assert process.returncode == 130 and found, f"could not stop a training after one epoch:\n{output}"
        return found.group(1)

    # --- running ----------------------------------------------------------------------------------------------
    def run_block(self, block: Block) -> None:
        if block.output_of is not None:
            self._check_output(block)
        if not block.runnable:
            return
        steps, skipped = plan(block)
        self.skipped += skipped
        for directive in block.directives:
            if directive.kind == "before":
                self._shell(self._fill(directive.value), expect=0, label=f"before: {directive.value}", block=block)
        for step in steps:
            if step.python:
                self._python(step)
            elif step.serve:
                self._serve(step)
            else:
                self._shell(self._fill(step.command), step.expect, step.source, block)
        self.cleanups += [self._fill(d.value) for d in block.directives if d.kind == "cleanup"]

    def _shell(self, command: str, expect: int, label: str, block: Block, timeout: float = 600) -> str:
        self._count += 1
        log = self.logs / f"{self._count:03d}.log"
        state = self.logs / f"{self._count:03d}.env"
        script = f"{command}\nrc=$?\nenv -0 > {shlex.quote(str(state))}\nexit $rc\n"
        started = time.monotonic()
        with open(log, "w") as out:
            out.write(f"$ {command}\n")
            out.flush()
            process = subprocess.Popen(
                ["bash", "-c", script], cwd=self.root, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
            try:
                code = process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                # Everything the command started goes too: a training left waiting would hold the next
                # section's cluster resources.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                code = -1
        output = log.read_text(errors="replace")
        self.outputs.append((command, output))
        if state.is_file():
            self._take_env(state)
        if code != expect:
            tail = "\n".join(output.splitlines()[-60:])
            raise AssertionError(
                f"{block.where()}: `{label}` exited {code} (expected {expect}) after "
                f"{time.monotonic() - started:.0f}s; ran `{command}`; output (last 60 lines):\n{tail}"
            )
        return output

    def _take_env(self, state: Path) -> None:
        values = dict(item.split("=", 1) for item in state.read_text().split("\0") if "=" in item)
        for name in ("_", "SHLVL", "PWD", "OLDPWD"):
            values.pop(name, None)
        self.env = values

    def _python(self, step: Step) -> None:
        self._count += 1
        script = self.logs / f"{self._count:03d}.py"
        script.write_text(step.command + "\n")
        label = f"the python block at line {step.block.line_number}"
        self._shell(f"python {shlex.quote(str(script))}", 0, label, step.block)

    def _serve(self, step: Step, timeout: float = 180) -> None:
        self._count += 1
        log = self.logs / f"{self._count:03d}.log"
        command = self._fill(step.command)
        out = open(log, "w")  # noqa: SIM115 - stays open while the server runs
        process = subprocess.Popen(
            ["bash", "-c", f"exec {command}"], cwd=self.root, env=self.env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        self.servers.append(process)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert process.poll() is None, f"{step.block.where()}: `{command}` ended:\n{log.read_text()}"
            link = _LINK.search(log.read_text(errors="replace"))
            if link and _answers(f"http://127.0.0.1:{link.group(1)}/"):
                self.outputs.append((command, log.read_text()))
                return
            time.sleep(0.5)
        raise AssertionError(f"{step.block.where()}: `{command}` did not serve its link in {timeout:.0f}s")

    def _check_output(self, block: Block) -> None:
        command, output = next(((c, o) for c, o in reversed(self.outputs) if block.output_of in c), (None, ""))
        assert command is not None, f"{block.where()}: no command containing {block.output_of!r} ran before"
        printed = [line.split() for line in output.splitlines()]
        missing = [line for line in block.lines if line.strip() and not any(_like(line, got) for got in printed)]
        assert not missing, (
            f"{block.where()}: example output lines that `{command}` does not print (numbers, ids and paths "
            f"aside): {missing}\nit printed:\n{output}"
        )

    def close(self) -> None:
        """Stop the servers, run the cleanups (each once, errors ignored)."""
        for process in self.servers:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
        for command in dict.fromkeys(self.cleanups):
            subprocess.run(["bash", "-c", command], cwd=self.root, env=self.env, capture_output=True, timeout=120)

    def untracked(self) -> list[str]:
        """Files in the sandbox that git would offer to commit: generated output that is not ignored."""
        done = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=all"], cwd=self.root, capture_output=True, text=True
        )
        return [line[3:] for line in done.stdout.splitlines()]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _like(example: str, printed: list[str]) -> bool:
    """Whether a printed line (its words) has the example line's words in order, from its first word on.

    Words holding a digit or a slash (numbers, ids, paths, URIs) and class names vary from run to run: the
    other words of the example must appear in the printed line in the same order, the first one first.
    """
    from mltrain.data.layout import CLASS_NAMES

    varying = {word.strip(",") for name in CLASS_NAMES for word in name.split()}
    words = [w for w in example.split() if not re.search(r"[\d/]", w) and w.strip(",") not in varying]
    if not words or not printed or printed[0] != words[0]:
        return False
    position = 0
    for word in words:
        try:
            position = printed.index(word, position) + 1
        except ValueError:
            return False
    return True


def _copy_repository(repo: Path, root: Path) -> None:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for name in filter(None, listed.split("\0")):
        source = repo / name
        if source.is_file():
            target = root / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read_bytes())
            target.chmod(source.stat().st_mode)
    git = ["git", "-c", "user.name=readme-test", "-c", "user.email=readme-test@localhost"]
    subprocess.run([*git, "init", "-q"], cwd=root, check=True)
    subprocess.run([*git, "add", "-A"], cwd=root, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "the repository as tested"], cwd=root, check=True)


@contextlib.contextmanager
def sandbox(repo: Path, base: Path, env: dict[str, str]) -> Iterator[Sandbox]:
    """A :class:`Sandbox` under ``base`` (``base/mltrain``, home ``base/home``), closed at the end."""
    box = Sandbox(repo, base / "mltrain", base / "home", env)
    try:
        yield box
    finally:
        box.close()
