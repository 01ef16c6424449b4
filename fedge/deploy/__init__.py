"""Deploying a run's result: ONNX export and evaluation on onnxruntime or torch."""
