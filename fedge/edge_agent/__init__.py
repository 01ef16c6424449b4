"""The edge agent: profile, receive an assignment, train LoRA locally, send the adapter update."""
