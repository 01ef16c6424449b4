"""fedge: federated LoRA fine-tuning for heterogeneous edge devices over MQTT."""

__version__ = "0.1.0"
