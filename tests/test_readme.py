"""The README's shell commands work as written, from the repository root, after `make`.

Every command in a ```bash block of README.md (continuation lines joined, comments dropped)
gets the class of the first rule in :data:`RULES` that matches it; a command that no rule
matches fails the test, so a new command has to be classified here. The classes:

- ``run``: cheap, run exactly as written (snakemake dry runs with ``-n``);
- ``dry``: a workflow run (snakemake without ``-n``): run as written with ``-n`` added, so
  the same options, profile and configuration are checked and the jobs planned, not run;
- ``template``: a workflow run with the reader's own data folders (``/path/to/...``): those
  paths replaced by empty folders, ``-n`` added and ``preflight=False`` (nothing to parse);
- ``make``: a make target (the demo, the tests, the benchmarks, the report of a finished run,
  the dry runs whose snakemake commands are in the README as well): ``make -n`` with the same
  variables, so the target exists and its recipe expands (with ``-o .venv/bin/.installed``:
  the environment these tests run in stands for ``make setup``);
- ``pytest``: a test run (minutes, or a GPU or SLURM cluster): the test files it names exist;
- ``setup``: creating the environment by hand: the same pins as the Makefile's set-up;
- ``script``: a benchmark or helper script (hours, or a finished run's files): its ``--help``
  runs, and every ``--option`` the command uses is one the script's help lists;
- ``system``: needs root or a running SLURM cluster: a script of this repository must exist
  and be executable; other programs are not checked.

Hub-backed commands (the paper configuration's model and data) run against an offline stand-in
of the Hugging Face cache, as on a machine that downloaded them once. Commands that read the
local GLUE or SQuAD copy (``../shared/data/glue``, ``../shared/data/squad``) are skipped where
it is absent. The commands run in parallel, two at a time, once per session.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.test_workflow import offline_cache

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
GLUE = ROOT.parent / "shared/data/glue"
SQUAD = ROOT.parent / "shared/data/squad"
SNAKEMAKE = ".venv/bin/snakemake"
SETUP_MARK = ".venv/bin/.installed"  # what `make setup` leaves (Makefile)

#: (class, pattern): the first pattern that matches a command (re.search) gives its class
RULES = (
    ("system", r"^(sudo )?scripts/slurm/(start|stop)\.sh\b"),
    ("system", r"^squeue\b"),
    ("make", r"^make \S"),
    ("pytest", r"(^|\s)\.venv/bin/python -m pytest\b"),
    ("setup", r"^python3 -m venv |^\.venv/bin/python -m pip install "),
    ("script", r"^\.venv/bin/python (benchmarks|scripts)/\S+\.py\b"),
    ("run", rf"^{re.escape(SNAKEMAKE)} (.* )?-n\b"),
    ("template", r"/path/to/"),
    ("dry", rf"^{re.escape(SNAKEMAKE)} "),
)
#: what a ``template`` command's placeholders stand for
PLACEHOLDERS = ("/path/to/glue_data", "/path/to/squad")


@dataclass(frozen=True)
class Command:
    text: str  # as written, continuation lines joined, comment dropped
    kind: str

    @property
    def id(self) -> str:
        return f"{self.kind}: {self.text}"


def _commands_in(markdown: str) -> list[str]:
    """Every line of every ```bash block (continuations joined, comments dropped), then every
    ``make`` command quoted in the text (a table of targets, a sentence)."""
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", markdown, flags=re.M | re.S):
        joined = re.sub(r"\\\n\s*", "", block)
        for line in joined.splitlines():
            line = re.sub(r"(^|\s+)#.*$", "", line).strip()
            if line:
                commands.append(line)
    prose = re.sub(r"^```.*?^```", "", markdown, flags=re.M | re.S)
    commands += [span for span in re.findall(r"`([^`\n]+)`", prose) if re.match(r"make [a-z]", span)]
    return commands


def _classify(text: str) -> str:
    for kind, pattern in RULES:
        if re.search(pattern, text):
            return kind
    raise AssertionError(f"README command not classified in tests/test_readme.py RULES: {text}")


def readme_commands() -> list[Command]:
    seen, commands = set(), []
    for text in _commands_in(README.read_text()):
        if text not in seen:
            seen.add(text)
            commands.append(Command(text, _classify(text)))
    return commands


def _with_flag(text: str, word: str, flag: str) -> str:
    """``text`` with ``flag`` right after its first ``word`` (a whole word: ``--config``, not
    ``--configfile``)."""
    changed, found = re.subn(rf"(?<!\S){re.escape(word)}(?!\S)", lambda match: f"{match.group(0)} {flag}", text, count=1)
    assert found, f"{word!r} not in {text!r}"
    return changed


def _bash(text: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", text], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def _check(command: Command, env: dict[str, str], scratch: Path) -> tuple[str, str]:
    """Run ``command`` as its class says; return (outcome, detail): outcome ``ok``, ``skip``
    or ``fail``."""
    text = command.text
    if command.kind not in ("make", "setup", "script", "system"):
        for name, folder in (("GLUE", GLUE), ("SQuAD", SQUAD)):
            if f"shared/data/{folder.name}" in text and not folder.is_dir():
                return "skip", f"needs the local {name} copy at {folder}"
    if command.kind == "system":
        program = text.removeprefix("sudo ").split()[0]
        if "/" not in program:
            return "skip", f"{program} needs a running SLURM cluster"
        path = ROOT / program
        ok = path.is_file() and os.access(path, os.X_OK)
        return ("ok" if ok else "fail"), f"{program} is {'an' if ok else 'not an'} executable file"
    if command.kind == "setup":
        makefile = (ROOT / "Makefile").read_text()
        words = shlex.split(text)
        if words[:3] == ["python3", "-m", "venv"]:
            ok = words[3:] == [".venv"] and "$(PYTHON) -m venv $(VENV)" in makefile and "VENV ?= .venv" in makefile
            return ("ok" if ok else "fail"), "the Makefile makes the same environment"
        # what the Makefile's set-up installs (pip's arguments, options left out)
        installed = {word for line in makefile.splitlines() if "pip install" in line for word in shlex.split(line.split("pip install", 1)[1])}
        missing = [word for word in words[words.index("install") + 1 :] if word not in installed]
        return ("fail" if missing else "ok"), f"not what the Makefile installs: {missing}" if missing else "what the Makefile installs"
    if command.kind == "pytest":
        files = [word.split("::")[0] for word in shlex.split(text) if word.startswith("tests/")]
        missing = [name for name in files if not (ROOT / name).is_file()]
        return ("fail" if missing or not files else "ok"), f"test files {files}, missing: {missing}"
    if command.kind == "script":
        words = shlex.split(text)
        result = _bash(shlex.join(words[:2] + ["--help"]), env)
        unknown = [w.split("=")[0] for w in words[2:] if w.startswith("--") and w.split("=")[0] not in result.stdout]
        ok = result.returncode == 0 and not unknown
        return ("ok" if ok else "fail"), f"{words[1]} --help: rc {result.returncode}, options not in its help: {unknown}\n{result.stderr[-2000:]}"
    if command.kind == "run":
        run = text
    elif command.kind == "dry":
        run = _with_flag(text, SNAKEMAKE, "-n")
    elif command.kind == "template":
        run = text
        for placeholder in PLACEHOLDERS:
            folder = scratch / placeholder.strip("/").replace("/", "_")
            folder.mkdir(parents=True, exist_ok=True)
            run = run.replace(placeholder, str(folder))
        run = _with_flag(_with_flag(run, "--config", "preflight=False"), SNAKEMAKE, "-n")
    elif command.kind == "make":
        run = _with_flag(text, "make", "-n")
    else:
        raise AssertionError(command.kind)
    if run.startswith("make "):  # the environment these tests run in stands for `make setup`
        run = _with_flag(run, "make", f"-o {SETUP_MARK}")
    result = _bash(run, env)
    return ("ok" if result.returncode == 0 else "fail"), f"$ {run}\n{result.stdout[-2000:]}{result.stderr[-3000:]}"


COMMANDS = readme_commands()


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict[str, tuple[str, str]]:
    scratch = tmp_path_factory.mktemp("readme")
    env = {**os.environ, **offline_cache(scratch), "OMP_NUM_THREADS": "1"}
    workers = max(1, min(2, os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:
        results = pool.map(lambda command: _check(command, env, scratch / str(abs(hash(command.text)))), COMMANDS)
        return {command.text: outcome for command, outcome in zip(COMMANDS, results)}


@pytest.mark.slow
@pytest.mark.parametrize("command", COMMANDS, ids=[c.id for c in COMMANDS])
def test_readme_command_works_as_written(command, outcomes):
    outcome, detail = outcomes[command.text]
    if outcome == "skip":
        pytest.skip(detail)
    assert outcome == "ok", detail


def test_every_kind_of_command_is_covered():
    """The README still shows each kind of command the rules exist for, so a rule is never
    left matching nothing while the commands drift past it."""
    assert {"run", "dry", "template", "make", "pytest", "setup", "script", "system"} <= {c.kind for c in COMMANDS}


def test_inline_commands_name_the_environment_programs():
    """A command quoted in the text (not a block) that starts with a program found only on an
    activated environment's PATH would fail as written."""
    spans = re.findall(r"`([^`\n]+)`", re.sub(r"^```.*?^```", "", README.read_text(), flags=re.M | re.S))
    bare = [span for span in spans if re.match(r"(snakemake|pytest|python|pip) ", span)]
    assert not bare, bare
