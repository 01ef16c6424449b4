"""Tasks: what a run fine-tunes for. ``classify`` scores the operator's labels after a prompt; the WordNet topic
task is the demo's ``classify`` configuration."""
