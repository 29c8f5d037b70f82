"""The ONNX format's graph for `validate --explain`: its named nodes, and a copy of the model whose
outputs are the block boundaries (only those, so the runtime fuses the graph as before), run by
ONNX Runtime."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from lowformer.core.batching import run_in_fixed_batches_multi
from lowformer.core.errors import LowformerError
from lowformer.core.files import PathLike
from lowformer.engines.backend import BoundaryRunner, GraphNodes
from lowformer.engines.onnxruntime.runner import session_options


def onnx_graph(path: Path) -> Tuple[GraphNodes, str]:
    """(name, inputs, outputs) of every node, and the logits tensor (the first graph output)."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001
        raise LowformerError(f"cannot read {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    return [(n.name, list(n.input), list(n.output)) for n in model.graph.node], model.graph.output[0].name


def exposed_onnx(src: PathLike, dst: PathLike, boundaries: Dict[str, str]) -> Dict[str, str]:
    """Write a copy of `src` whose outputs are the logits then each block boundary (not every tensor).
    A boundary made by a DequantizeLinear is read from a clone of it, so the original keeps its one
    consumer and the runtime fuses the graph as before. Returns block -> output name in `dst`."""
    import onnx
    from onnx import helper, shape_inference

    model = onnx.load(str(src))
    g = model.graph
    logits = g.output[0].name
    try:
        inferred = shape_inference.infer_shapes(model)
        types = {v.name: v.type.tensor_type.elem_type for v in list(inferred.graph.value_info) + list(g.output)}
    except Exception:  # noqa: BLE001 - outputs then go out typed float
        types = {}
    producer = {t: n for n in g.node for t in n.output}
    names: Dict[str, str] = {}
    new_outputs = []
    for block, tensor in boundaries.items():
        if tensor == logits:
            names[block] = logits
            continue
        node = producer.get(tensor)
        if node is not None and node.op_type == "DequantizeLinear":
            out = f"{tensor}__explain"
            clone = helper.make_node("DequantizeLinear", list(node.input), [out], name=f"{node.name}__explain",
                                     domain=node.domain)
            clone.attribute.extend(node.attribute)
            g.node.append(clone)
            elem = onnx.TensorProto.FLOAT
        else:
            out = tensor
            elem = types.get(tensor) or onnx.TensorProto.FLOAT
        new_outputs.append(helper.make_tensor_value_info(out, elem, None))
        names[block] = out
    g.output.extend(new_outputs)
    onnx.save(model, str(dst))
    return names


class OrtBoundaries(BoundaryRunner):
    """ONNX Runtime (CPU) running a copy of the ONNX whose outputs are the block boundaries."""

    def __init__(self, path: Path, boundaries: Dict[str, str], threads: Optional[int], exact: bool):
        import onnxruntime as ort

        self.path = path
        self.tmp: Optional[str] = tempfile.mkdtemp(prefix="lowformer-explain-")
        copy = Path(self.tmp) / path.name
        outputs = exposed_onnx(path, copy, boundaries)
        so = session_options(threads, exact=exact)
        try:
            self.session = ort.InferenceSession(str(copy), so, providers=["CPUExecutionProvider"])
            self._so = (threads, exact)
        except Exception as e:
            self.close()
            raise LowformerError(f"ONNX Runtime cannot load {path.name} with its block boundaries exposed: "
                                 f"{str(e).splitlines()[0]}") from None
        self.boundaries = dict(boundaries)
        self.names = [outputs[b] for b in boundaries]
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.fixed_batch = inp.shape[0] if isinstance(inp.shape[0], int) else None

    def outputs(self, x: np.ndarray) -> List[np.ndarray]:
        return self.session.run(self.names, {self.input_name: np.ascontiguousarray(x, np.float32)})

    def original_logits(self, x: np.ndarray) -> np.ndarray:
        import onnxruntime as ort

        threads, exact = self._so
        sess = ort.InferenceSession(str(self.path), session_options(threads, exact=exact),
                                    providers=["CPUExecutionProvider"])
        name = sess.get_outputs()[0].name
        return run_in_fixed_batches_multi(lambda c: sess.run([name], {self.input_name: c}), x, self.fixed_batch)[0]

    def close(self) -> None:
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None
