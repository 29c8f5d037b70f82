"""torch.export and AOTInductor writers: the deployment path PyTorch recommends after TorchScript.

`model.pt2` is the BN-fused model as an `ExportedProgram` (`torch.export.export`, dynamic batch
dimension unless the export has a fixed batch size), written by `torch.export.save`; its graph keeps
every node's `nn_module_stack`, which the profiler uses to name the module of each op exactly.

`model_aoti_cpu.pt2` (and `model_aoti_cuda.pt2` when torch sees a GPU) is that program compiled
ahead of time by AOTInductor (`torch._inductor.aoti_compile_and_package`) into a package holding a
shared library and the weights. Compiling needs a C++ compiler (g++, or $CXX); the library is built
with `-march=native` for this CPU's vector ISA, which the manifest records and the runner checks.
The package carries, as AOTInductor metadata, the torch version that built it and the exported
graph's node -> module map, so its kernels can be named without the `model.pt2` beside it.

Both files are `.pt2` archives; the manifest entry's format ("pt2" or "aoti") tells them apart, and
without a manifest the archive's contents do (lowformer.engines.pt2.runner.package_kind).
"""
from __future__ import annotations

import contextlib
import logging
import os
import shlex
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch
from torch import nn

from lowformer.core.errors import LowformerError
from lowformer.core.files import atomic_path
from lowformer.engines.pt2.runner import META_NODES, META_TORCH, aoti_metadata, node_modules, quiet_torch_logs

log = logging.getLogger(__name__)

PT2_NAME = "model.pt2"
AOTI_NAMES = {"cpu": "model_aoti_cpu.pt2", "cuda": "model_aoti_cuda.pt2"}
# What the compile is asked for: kernel names in torch.profiler (`graph_0_cpp_fused_...`, a
# RECORD_FUNCTION that costs nothing when no profiler runs) and kernel_information.json (each
# kernel's source nodes of the exported graph). Not `freezing` (weights folded in and prepacked for oneDNN): measured on b1 it was ~5 % faster, but
# its fused conv+activation kernels name only the activation's node, so profiles lose the conv.
AOTI_CONFIGS = {"cpp.enable_kernel_profile": True, "trace.provenance_tracking_level": 1}


def find_cpp_compiler() -> str:
    """The C++ compiler AOTInductor compiles with (torch's `cpp.cxx`: $CXX when torch was imported,
    else g++), resolved on $PATH now; one line when there is none."""
    from torch._inductor import config

    cxx = config.cpp.cxx
    names = [c for c in (cxx if isinstance(cxx, (list, tuple)) else (cxx,)) if c]
    for name in names:
        parts = shlex.split(name)
        found = shutil.which(parts[0]) if parts else None
        if found:
            return found
    raise LowformerError(f"AOTInductor needs a C++ compiler and found none ({', '.join(names) or 'g++'} is not "
                         "on PATH): install g++ (apt-get install g++) or set CXX")


def aoti_devices() -> List[str]:
    """The devices an AOTInductor package is compiled for: the CPU, and CUDA when torch sees a GPU."""
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def export_program(model: nn.Module, example: torch.Tensor, dynamic: bool = True) -> Tuple[Any, Dict[str, Any]]:
    """(ExportedProgram, facts) of an eval-mode model; `dynamic`: the batch dimension is symbolic.

    torch.export specializes sizes 0 and 1, so a dynamic export needs an example batch of at least 2.
    """
    model = model.eval()
    if dynamic and example.shape[0] < 2:
        example = torch.cat([example, example])
    shapes = ({0: torch.export.Dim("batch", min=1)},) if dynamic else None
    t0 = time.perf_counter()
    try:
        with torch.no_grad():
            ep = torch.export.export(model, (example,), dynamic_shapes=shapes)
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise LowformerError(f"torch.export failed: {first[:200]}") from None
    seconds = time.perf_counter() - t0
    ops = [n for n in ep.graph.nodes if n.op == "call_function"]
    mapped = node_modules(ep.graph)
    return ep, {"torch": torch.__version__, "dynamic_batch": dynamic, "export_s": round(seconds, 2),
                "ops": len(ops), "ops_with_module": len(mapped)}


def save_program(ep, path: Path) -> Dict[str, Any]:
    """`torch.export.save` atomically (temp name beside `path`, renamed); checks the file loads again."""
    t0 = time.perf_counter()
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            torch.export.save(ep, f)
        try:
            with open(tmp, "rb") as f:  # a file object: torch wants a path ending in .pt2
                torch.export.load(f)
        except Exception as e:
            raise LowformerError(f"{path.name} does not load again: {str(e).splitlines()[0][:160]}") from None
    return {"save_s": round(time.perf_counter() - t0, 2)}


@contextlib.contextmanager
def _inductor_scratch() -> Iterator[None]:
    """Inductor's cache in a temporary folder (torch otherwise pins $TORCHINDUCTOR_CACHE_DIR for the
    process at the first compile, and under an export that is the staging folder, removed afterwards).
    A cache the user set is used as it is."""
    if os.environ.get("TORCHINDUCTOR_CACHE_DIR"):
        yield
        return
    from torch._inductor.runtime.cache_dir_utils import temporary_cache_dir

    scratch = tempfile.mkdtemp(prefix="lowformer-inductor-")
    try:
        with temporary_cache_dir(scratch):
            yield
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _node_map_metadata(graph) -> str:
    # Node names and module paths are identifiers and dotted identifiers: no quoting needed.
    return ";".join(f"{k}={v}" for k, v in node_modules(graph).items())


def compile_aoti(ep, path: Path, device: str = "cpu", dynamic: bool = True,
                 source: Optional[str] = PT2_NAME) -> Dict[str, Any]:
    """Compile an ExportedProgram with AOTInductor into the package `path` (atomically)."""
    compiler = find_cpp_compiler()
    if device == "cuda":
        if not torch.cuda.is_available():
            raise LowformerError("an AOTInductor package for CUDA needs a GPU that torch sees")
        from torch.export.passes import move_to_device_pass

        ep = move_to_device_pass(ep, "cuda")
    configs: Dict[str, Any] = dict(AOTI_CONFIGS)
    configs["aot_inductor.metadata"] = {META_TORCH: torch.__version__, META_NODES: _node_map_metadata(ep.graph)}
    t0 = time.perf_counter()
    # "No CUDA runtime is found" is logged on every CPU-only compile
    quiet = () if torch.cuda.is_available() else ("torch.utils.cpp_extension",)
    with atomic_path(path) as tmp, _inductor_scratch(), quiet_torch_logs(*quiet):
        try:
            with open(tmp, "w+b") as f, torch.no_grad():
                torch._inductor.aoti_compile_and_package(ep, package_path=f, inductor_configs=configs)
        except LowformerError:
            raise
        except Exception as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise LowformerError(f"AOTInductor could not compile {path.name} for {device}: {first[:200]}") from None
    seconds = time.perf_counter() - t0
    facts: Dict[str, Any] = {"torch": torch.__version__, "device": device, "compiler": compiler,
                             "compile_s": round(seconds, 1), "source": source,
                             "dynamic_batch": dynamic}
    if device == "cpu":  # the library is built for this CPU's vector ISA (-march=native)
        facts["cpu_isa"] = aoti_metadata(str(path)).get("AOTI_CPU_ISA")
    log.info("AOTInductor compiled %s for %s in %.1f s (%s)", path.name, device, seconds, compiler)
    return facts

