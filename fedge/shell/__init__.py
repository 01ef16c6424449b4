"""The command-line shell: the `fedge` command, the demo and field trials; the only layer that imports both the
agent and the coordinator."""
