"""Scorers: one Scorer protocol and its backends (ONNX Runtime, TensorRT, the torch reference),
and picking one for a model directory."""
