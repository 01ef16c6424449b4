"""Every command the README and the docs show in a bash block is run by a test as written: the quick ones here, in a
scratch directory; the long ones by the test named for each (the tutorial's by tests/integration/test_tutorial.py).
A command added to the docs without a test fails here. The docs site builds with ``mkdocs build --strict``."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fedge.shell.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted(page for page in (ROOT / "docs").rglob("*.md") if "reference" not in page.parts)]
TUTORIAL = ROOT / "docs" / "tutorial.md"

RUN_HERE = {  # command -> (exit status, what its output must say)
    "fedge plan examples/fleet.yaml --model llama-2-7b": (0, "llama-2-7b"),
    "fedge profile": (0, "ram"),
    "fedge status runs/my-first-run": (1, "no coordinator serves runs/my-first-run"),
}
ELSEWHERE = {  # command -> the test that runs it (or what it runs)
    "bash scripts/test.sh": ".ci/run runs this very command",
    "bash scripts/demo.sh": "tests/integration/test_demo_learns.py runs `fedge demo`, what the script runs once set up, at reduced size",
    "bash scripts/cuda_check.sh": "tests/test_benchmarks.py::test_cuda_check_without_cuda_says_so_and_fails (and its --quick path on the CPU)",
    "fedge export runs/demo/coordinator --onnx runs/demo/onnx --int8": "tests/test_export.py::test_the_docs_deployment_commands_run_as_written",
    "fedge evaluate runs/demo/onnx --data runs/demo/data/test.jsonl --int8": "tests/test_export.py::test_the_docs_deployment_commands_run_as_written",
    "fedge evaluate runs/demo/coordinator --data runs/demo/data/test.jsonl": "tests/test_export.py::test_the_docs_deployment_commands_run_as_written",
    "fedge trial examples/trial.yaml --out runs/trial": "tests/integration/test_trial.py runs `fedge trial` at reduced size; its config is checked here",
    "fedge coordinator --config examples/coordinator.yaml --arms examples/arms.yaml --out runs/field": "tests/integration/test_field_trial.py; both files are checked here",
}


def shown_commands(page: Path) -> list[str]:
    """The commands in a page's bash blocks, comments dropped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", page.read_text(), re.S):
        commands += [re.sub(r"\s+#.*$", "", line).strip() for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return commands


def test_every_command_shown_has_a_test_that_runs_it():
    shown = {command for page in PAGES if page != TUTORIAL for command in shown_commands(page)}
    assert shown - set(RUN_HERE) - set(ELSEWHERE) == set(), "a command in the docs that no test runs"
    assert set(RUN_HERE) | set(ELSEWHERE) <= shown, "a command the docs no longer show"


@pytest.mark.parametrize("command", sorted({c for page in PAGES for c in shown_commands(page) if c.startswith("fedge ")}))
def test_every_fedge_command_shown_parses(command):
    words = shlex.split(command.split(" > ")[0].rstrip(" &"))
    build_parser().parse_args(words[1:])


@pytest.mark.parametrize("command", sorted(RUN_HERE))
def test_the_quick_commands_run_as_written(command, tmp_path):
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    done = subprocess.run([sys.executable, "-m", "fedge.shell.cli", *shlex.split(command)[1:]], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    status, says = RUN_HERE[command]
    assert done.returncode == status and says in done.stdout, done.stdout[-2000:] + done.stderr[-2000:]


def test_the_long_commands_files_are_valid():
    from fedge.coordinator.config import CoordinatorConfig
    from fedge.shell.trial.config import TrialConfig
    from fedge.shell.trial.field import FieldTrial

    TrialConfig.from_yaml(ROOT / "examples" / "trial.yaml")
    FieldTrial.from_yaml(ROOT / "examples" / "arms.yaml", CoordinatorConfig.from_yaml(ROOT / "examples" / "coordinator.yaml"))


def test_the_docs_site_builds_strictly(tmp_path):
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (tmp_path / "site" / "tutorial" / "index.html").exists() and (tmp_path / "site" / "reference" / "configuration" / "index.html").exists()
