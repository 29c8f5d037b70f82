"""Throughput and latency of models and artifacts (`bench`), and this machine's compute peaks."""
from lowformer.bench.peaks import CONV_GEMM_SHAPES, int8_peak_gops, matmul_peak_gflops, ort_matmul_gops
from lowformer.bench.run import BenchReport, BenchResult, bench, bench_target, default_threads, macs_of, run_jobs

__all__ = ["BenchReport", "BenchResult", "bench", "bench_target", "default_threads", "macs_of", "run_jobs",
           "CONV_GEMM_SHAPES", "int8_peak_gops", "matmul_peak_gflops", "ort_matmul_gops"]

from lowformer.core.command_module import callable_as_command  # noqa: E402

callable_as_command(__name__)  # `lowformer.bench(...)` stays the API function
