"""Export: fused ONNX graph, manifest, TensorRT engine. Imports nothing heavy at package level."""
