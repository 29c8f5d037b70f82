"""ONNX Runtime: `.onnx` artifacts (FP32, FP16, INT8 Q/DQ) on the CPU, CUDA or TensorRT providers."""
