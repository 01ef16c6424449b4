"""The demo task: classify WordNet glosses into topics with a causal LM (a label-word verbaliser)."""
