"""``python -m fedge.shell.trial.run_insider ATTACK AGENT-ARGS…``: ``fedge agent`` as a compromised device
(``fedge.shell.trial.insider``), for field trials of the robust aggregation rules."""

from __future__ import annotations

import sys
from functools import partial

from fedge.shell import cli
from fedge.shell.trial.config import ATTACKS
from fedge.shell.trial.insider import InsiderAgent


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ATTACKS:
        print(f"usage: python -m fedge.shell.trial.run_insider {{{','.join(ATTACKS)}}} AGENT-ARGS…", file=sys.stderr)
        return 2
    return cli.main(argv[1:], agent_type=partial(InsiderAgent, attack=argv[0]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
