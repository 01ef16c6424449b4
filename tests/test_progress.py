import io

from rich.console import Console

from fedge.shell.progress import long_step


def test_long_step_prints_a_line_when_output_is_not_a_terminal():
    out = io.StringIO()
    with long_step(Console(file=out, force_terminal=False, width=240), "centralised LoRA baseline"):
        pass
    assert out.getvalue().strip() == "centralised LoRA baseline …"


def test_long_step_leaves_no_line_behind_on_a_terminal():
    out = io.StringIO()
    with long_step(Console(file=out, force_terminal=True, width=240), "centralised LoRA baseline"):
        pass
    assert "centralised LoRA baseline …" not in out.getvalue()
