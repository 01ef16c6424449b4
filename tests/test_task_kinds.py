"""Task kinds by name: built-ins, a custom kind installed as a ``fedge.tasks`` entry point, unknown names refused."""

import sys
import textwrap

import pytest

from fedge.coordinator.config import ConfigError, CoordinatorConfig
from fedge.task import kinds
from fedge.task.kinds import kind_of, task_problems
from fedge.wire import TaskSpec


@pytest.fixture
def installed_kind(tmp_path, monkeypatch):
    """A package on sys.path with dist-info metadata registering ``shout`` under ``fedge.tasks``."""
    (tmp_path / "shout_task.py").write_text(textwrap.dedent('''
        from fedge.task import classify

        class Shout:
            name = "shout"

            def problems(self, spec):
                return [] if spec.prompt.startswith("SAY") else ["task.prompt: must start with SAY"]

            def items(self, records, spec, source):
                return classify.examples_of(records, spec, source)

            def model(self, runner, tokenizer, spec):
                from fedge.task.classifier import classifier_for
                return classifier_for(runner, tokenizer, spec)

        KIND = Shout()
    '''))
    info = tmp_path / "shout_task-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: shout-task\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[fedge.tasks]\nshout = shout_task:KIND\nclassify = shout_task:KIND\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    kinds.installed.cache_clear()
    yield
    kinds.installed.cache_clear()
    sys.modules.pop("shout_task", None)


def test_a_custom_kind_is_found_by_name_and_cannot_replace_a_built_in(installed_kind):
    assert task_problems(TaskSpec("shout", ("a", "b"), "SAY {text}")) == []
    assert task_problems(TaskSpec("shout", ("a", "b"), "say {text}")) == ["task.prompt: must start with SAY"]
    assert kind_of("classify") is kinds.BUILT_IN["classify"]
    config = CoordinatorConfig.from_dict({"eval_data": "x.jsonl", "insecure": True, "task": {"kind": "shout", "labels": ["a", "b"], "prompt": "SAY {text}"}})
    assert config.task.kind == "shout"


def test_an_unknown_kind_names_what_is_installed():
    kinds.installed.cache_clear()
    (problem,) = task_problems(TaskSpec("regress"))
    assert problem.startswith("task.kind: 'regress' is not a task kind here; choose one of classify, instruct")
    with pytest.raises(ConfigError, match="task.kind: 'regress' is not a task kind"):
        CoordinatorConfig.from_dict({"eval_data": "x.jsonl", "insecure": True, "task": {"kind": "regress"}})


def test_instruct_config_takes_its_defaults_and_checks_its_keys():
    config = CoordinatorConfig.from_dict({"eval_data": "x.jsonl", "insecure": True, "task": {"kind": "instruct", "max_tokens": 128}})
    assert config.task == TaskSpec("instruct", (), "", 128, "token_f1", 32, 48)
    assert config.planner_options().answer_share == 0.5 and config.planner_options().seq_len == 128
    with pytest.raises(ConfigError) as error:
        CoordinatorConfig.from_dict({"eval_data": "x.jsonl", "insecure": True, "task": {"kind": "instruct", "metric": "bleu", "eval_samples": "all"}})
    assert "task.eval_samples: expected an integer" in str(error.value)
    with pytest.raises(ConfigError, match="task.metric: one of token_f1, exact_match"):
        CoordinatorConfig.from_dict({"eval_data": "x.jsonl", "insecure": True, "task": {"kind": "instruct", "metric": "bleu"}})
