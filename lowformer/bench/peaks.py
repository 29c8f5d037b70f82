"""Measured compute peaks of this machine (FP32 and INT8 matmuls), the ceiling for achieved GFLOP/s."""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np

from lowformer.core.timing import best_seconds


# GEMM shapes (M, K, N) of the 1x1 convolutions of a LowFormer at 224 px: ONNX Runtime runs them
# faster than one big square matmul, so the peak is the best over these too.
CONV_GEMM_SHAPES = ((3136, 64, 256), (784, 128, 512), (196, 256, 1024))


def matmul_peak_gflops(n: int = 2048, repeats: int = 5, threads: Optional[int] = None) -> float:
    """Measured FP32 peak: the best of torch.matmul (n x n) and ONNX Runtime's MatMul (prepacked
    constant weights, the kernel its convolutions use) at n x n and at convolution GEMM shapes."""
    import torch

    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        a, b = torch.randn(n, n), torch.randn(n, n)
        torch.matmul(a, b)
        best = best_seconds(lambda: torch.matmul(a, b), repeats)
    finally:
        torch.set_num_threads(old)
    rng = np.random.default_rng(0)
    peaks = [2 * n ** 3 / best / 1e9]
    for m, k, cols in ((n, n, n),) + CONV_GEMM_SHAPES:
        peaks.append(ort_matmul_gops("MatMul", rng.standard_normal((m, k), np.float32),
                                      rng.standard_normal((k, cols), np.float32), repeats, threads) or 0.0)
    return max(peaks)


def ort_matmul_gops(op: str, a: np.ndarray, weight: np.ndarray, repeats: int, threads: Optional[int]) -> Optional[float]:
    """GOP/s of one ONNX Runtime MatMul / MatMulInteger node whose weight is a constant (prepacked)."""
    try:
        import onnxruntime as ort
        from onnx import helper, numpy_helper
    except ImportError:
        return None
    types = {np.dtype(np.float32): 1, np.dtype(np.uint8): 2, np.dtype(np.int8): 3}
    m, k = a.shape
    out_type = 1 if op == "MatMul" else 6  # float / int32
    graph = helper.make_graph([helper.make_node(op, ["a", "w"], ["y"])], op,
                              [helper.make_tensor_value_info("a", types[a.dtype], [m, k])],
                              [helper.make_tensor_value_info("y", out_type, [m, weight.shape[1]])],
                              [numpy_helper.from_array(weight, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = min(model.ir_version, 9)
    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    sess.run(None, {"a": a})
    return 2 * m * k * weight.shape[1] / best_seconds(lambda: sess.run(None, {"a": a}), repeats) / 1e9


def int8_peak_gops(n: int = 1024, repeats: int = 5, threads: Optional[int] = None) -> Dict[str, float]:
    """Measured INT8 matmul peaks (GOP/s): torch._int_mm and ONNX Runtime's MatMulInteger (u8 x s8
    with prepacked constant weights, the kernel its quantized convolutions use on x86)."""
    out: Dict[str, float] = {}
    try:
        import torch

        a = torch.randint(-128, 127, (n, n), dtype=torch.int8)
        b = torch.randint(-128, 127, (n, n), dtype=torch.int8)
        torch._int_mm(a, b)
        out["torch_int_mm"] = 2 * n ** 3 / best_seconds(lambda: torch._int_mm(a, b), repeats) / 1e9
    except Exception:  # not every torch build has a CPU _int_mm
        pass
    rng = np.random.default_rng(0)
    ort_peak = max(ort_matmul_gops("MatMulInteger", rng.integers(0, 256, (m, k), dtype=np.uint8),
                                    rng.integers(-128, 128, (k, cols), dtype=np.int8), repeats, threads) or 0.0
                   for m, k, cols in ((n, n, n),) + CONV_GEMM_SHAPES)
    if ort_peak:
        out["ort_matmulinteger"] = ort_peak
    return out
