"""The command-line reference in Markdown, written from fedge's argument parser (``fedge schema --write`` keeps
``docs/reference/cli.md`` current; a test checks it is)."""

from __future__ import annotations

import argparse
from functools import partial

CLI_REFERENCE = "docs/reference/cli.md"
USAGE_WIDTH = 110


def cli_reference(parser: argparse.ArgumentParser) -> str:
    lines = ["# Command-line reference", "", "Written by `fedge schema --write` from fedge's own argument parser; do not edit by hand.", "",
             "Every command takes the global options `-v/--verbose` (debug logging) and `--log-file FILE` before its name:", "`fedge --log-file agent.log agent ...`.", ""]
    commands = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction))
    helps = {choice.dest: choice.help for choice in commands._choices_actions}
    for name, command in commands.choices.items():
        command.formatter_class = partial(argparse.HelpFormatter, width=USAGE_WIDTH)  # the same text whatever the terminal
        summary = helps.get(name, "")
        lines += [f"## fedge {name}", "", f"{summary[:1].upper()}{summary[1:]}.", "", "```text", command.format_usage().strip().removeprefix("usage: "), "```", ""]
        rows = [_row(action) for action in command._actions if not isinstance(action, argparse._HelpAction)]
        if rows:
            lines += ["| argument | meaning | default |", "|---|---|---|", *rows, ""]
    return "\n".join(lines).rstrip() + "\n"


def _row(action: argparse.Action) -> str:
    name = ", ".join(f"`{option}`" for option in action.option_strings) or f"`{action.dest}`"
    if action.choices and not action.option_strings:
        name += " (" + ", ".join(f"`{choice}`" for choice in action.choices) + ")"
    elif action.choices:
        name += " " + "/".join(f"`{choice}`" for choice in action.choices)
    default = "" if action.default is None or action.default is False or action.default == argparse.SUPPRESS or action.required else f"`{action.default}`"
    help_text = (action.help or "").replace("|", "/")
    return f"| {name} | {help_text}{' (required)' if action.required else ''} | {default} |"
