"""Engine build from ONNX with timing cache; records the engine in the export folder's manifest."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union


from lowformer.core.errors import LowformerError, NeedsTargetDevice
from lowformer.core.files import atomic_path


DEFAULT_TIMING_CACHE = "trt-timing.cache"  # beside the engine: reused by every build in that folder

from lowformer.engines.tensorrt.config import DEFAULT_MAX_BATCH, TrtBuildConfig, default_batch_range  # noqa: F401
from lowformer.engines.tensorrt.environment import (_Logger, _import_trt, default_engine_path, gpu_info,
                                                    next_step_command, tensorrt_status, trt_major)
from lowformer.engines.tensorrt.onnx_facts import check_request, inspect_onnx, plan_build
from lowformer.engines.tensorrt.support import require_tensorrt_support, tables_differ

def _rel_or_abs(path: Path, folder: Optional[Path]) -> str:
    if folder is None:
        return str(path)
    return os.path.relpath(path.resolve(), folder.resolve())


def _manifest_folder(onnx_path: Path, manifest_folder: Optional[str]) -> Optional[Path]:
    from lowformer.artifacts import MANIFEST_NAME

    if manifest_folder is not None:
        return Path(manifest_folder)
    return onnx_path.parent if (onnx_path.parent / MANIFEST_NAME).is_file() else None


def _load_timing_cache(config, cache_path: Path) -> Tuple[Any, str]:
    """Attach the timing cache file (or a fresh one) to the config; says which it used."""
    data = b""
    if cache_path.is_file():
        data = cache_path.read_bytes()
    try:
        cache = config.create_timing_cache(data)
        ok = cache is not None and config.set_timing_cache(cache, False)
    except Exception:
        ok = False
    if ok:
        return cache, "reused" if data else "new"
    # A cache from another GPU / TensorRT version: start afresh rather than fail the build.
    cache = config.create_timing_cache(b"")
    config.set_timing_cache(cache, False)
    return cache, "replaced (it did not match this GPU or TensorRT version)"


def _save_timing_cache(config, cache_path: Path) -> None:
    cache = config.get_timing_cache()
    if cache is None:
        return
    with atomic_path(cache_path) as tmp:
        tmp.write_bytes(bytes(memoryview(cache.serialize())))


def _parser_errors(parser) -> str:
    """All parser errors as one line, each with the ONNX node it happened in."""
    msgs = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        desc = str(err.desc()).strip().replace("\n", " ")
        where = ""
        name, op = err.node_name(), err.node_operator()  # in every TensorRT >= 10 (10.3 checked)
        if name or op:
            where = f"node {name or '#' + str(err.node())}" + (f" ({op})" if op else "")
        elif err.node() >= 0:
            where = f"node #{err.node()}"
        msgs.append(f"{where}: {desc}" if where else desc)
    return "; ".join(msgs) if msgs else "no parser error reported"


def build_engine(onnx_path: Union[str, os.PathLike], engine_path: Union[str, os.PathLike, None] = None,
                 settings: Optional[TrtBuildConfig] = None, *, manifest_folder: Optional[str] = None,
                 lock_timeout: float = 600.0, **fields: Any) -> Dict[str, Any]:
    """Build a TensorRT engine from an ONNX file and return (and record) its manifest entry.

    `settings`: a TrtBuildConfig (lowformer.engines.tensorrt.config), or its fields as keywords: fp16,
    int8, strongly_typed, min_batch, opt_batch, max_batch, workspace_mb, timing_cache (unknown ones:
    one LowformerError). The entry is recorded in the manifest of `manifest_folder` (default: the
    ONNX's folder, when it has one), waiting at most `lock_timeout` seconds for another writer.

    Raises NeedsTargetDevice (exit 3) with the command to run on the device when TensorRT or a
    CUDA GPU is missing here.
    """
    settings = TrtBuildConfig.build(settings, **fields)
    fp16, int8, workspace_mb, timing_cache = settings.fp16, settings.int8, settings.workspace_mb, settings.timing_cache
    onnx_path = Path(onnx_path)
    engine = Path(engine_path) if engine_path is not None else default_engine_path(onnx_path)
    if engine.suffix.lower() not in (".engine", ".plan"):
        raise LowformerError(f"engine file must end in .engine or .plan: {engine}")
    if workspace_mb < 1:
        raise LowformerError("--workspace-mb must be positive")
    facts = inspect_onnx(onnx_path)  # bad input fails here (exit 1), before the device question (exit 3)
    settings = settings.resolved(facts.input_shape[0])
    min_batch, opt_batch, max_batch = settings.min_batch, settings.opt_batch, settings.max_batch
    check_request(facts, fp16, int8, min_batch, opt_batch, max_batch, onnx_path.name)
    require_tensorrt_support(onnx_path)  # onnx-tensorrt's documented ops and Q/DQ rules, without TensorRT (exit 1)
    folder = _manifest_folder(onnx_path, manifest_folder)
    if folder is not None:
        from lowformer.artifacts import MANIFEST_NAME, Manifest

        if (folder / MANIFEST_NAME).is_file():
            Manifest.load(folder)  # a broken manifest should fail before a minutes-long build

    ok, reason = tensorrt_status()
    if not ok:
        source, note = onnx_path, ""
        if fp16 and facts.precision == "fp32":  # TensorRT 11 refuses --fp16 on an FP32 ONNX (strongly typed)
            sibling = onnx_path.with_name("model_fp16.onnx")
            if sibling.is_file():
                source, engine_path = sibling, None
            else:
                note = (" (an FP32 ONNX gives an FP16 engine on TensorRT 10 only: for TensorRT 11 export with "
                        "--fp16 and build model_fp16.onnx)")
        cmd = next_step_command(source, settings, engine_path)
        raise NeedsTargetDevice(f"{reason}; the ONNX is ready: on the target device run: {cmd}{note}")

    trt = _import_trt()
    major = trt_major(trt)
    if tables_differ():  # the documented operator tables differ between majors: check this one's
        require_tensorrt_support(onnx_path, major)
    plan = plan_build(facts, major, settings, onnx_path.name)
    cache_path = Path(timing_cache) if timing_cache is not None else engine.parent / DEFAULT_TIMING_CACHE

    logger = _Logger.create(trt)
    builder = trt.Builder(logger)
    flags = 0
    if plan.strongly_typed:  # STRONGLY_TYPED is 1 in 10.x, 0 in 11.x (where every network is strongly typed)
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # from the file so that external weights resolve
        raise LowformerError(f"TensorRT cannot parse {onnx_path.name}: {_parser_errors(parser)}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # layer names + ONNX nodes for profiling
    if major < 11:  # BuilderFlag.FP16/INT8 exist in TensorRT 10 only; plan_build asks for none on 11
        for name in plan.flags:
            config.set_flag({"FP16": trt.BuilderFlag.FP16, "INT8": trt.BuilderFlag.INT8}[name])
    if plan.profile is not None:
        profile = builder.create_optimization_profile()
        shape_min, shape_opt, shape_max = plan.profile
        profile.set_shape(facts.input_name, shape_min, shape_opt, shape_max)
        config.add_optimization_profile(profile)
    _, cache_state = _load_timing_cache(config, cache_path)

    try:
        serialized = builder.build_serialized_network(network, config)
    except Exception as e:  # pybind raises on some invalid configurations
        raise LowformerError(f"TensorRT could not build {onnx_path.name}: {str(e).splitlines()[0]}") from None
    if serialized is None:
        raise LowformerError(f"TensorRT could not build {onnx_path.name}: {logger.last_error()}")
    with atomic_path(engine) as tmp:
        tmp.write_bytes(bytes(memoryview(serialized)))
    _save_timing_cache(config, cache_path)

    from lowformer.models.checkpoints import sha256_file

    entry: Dict[str, Any] = {
        "path": _rel_or_abs(engine, folder),
        "format": "tensorrt",
        "precision": plan.precision,
        "sha256": sha256_file(str(engine)),
        "tensorrt": str(trt.__version__),
        **gpu_info(),
        "source": {"path": _rel_or_abs(onnx_path, folder), "sha256": sha256_file(str(onnx_path))},
        "input": {"name": facts.input_name, "shape": [None if plan.profile else facts.input_shape[0],
                                                      *facts.input_shape[1:]]},
        "build": {"min_batch": plan.profile[0][0] if plan.profile else facts.input_shape[0],
                  "opt_batch": plan.profile[1][0] if plan.profile else facts.input_shape[0],
                  "max_batch": plan.profile[2][0] if plan.profile else facts.input_shape[0],
                  "workspace_mb": int(workspace_mb), "strongly_typed": plan.strongly_typed,
                  "builder_flags": list(plan.flags), "onnx_precision": facts.precision,
                  "timing_cache": str(cache_path), "timing_cache_state": cache_state,
                  "profiling_verbosity": "detailed"},
    }
    if plan.notes:
        entry["warnings"] = list(plan.notes)
    if folder is not None:
        from lowformer import artifacts

        if (folder / artifacts.MANIFEST_NAME).is_file():
            record = artifacts.ArtifactEntry.from_dict(entry)
            # re-read under the lock: the build took a while
            artifacts.update(folder, lambda m: m.upsert(record), timeout=lock_timeout)
    return entry


