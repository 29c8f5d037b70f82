"""XNNPACK's PT2E quantizer, with ReLU6 (hardtanh) and clamp fused into the convolution before them.

XNNPACK's own quantizer fuses only ReLU into a convolution: a convolution followed by ReLU6 gets its
int8 output range observed *before* the ReLU6, on the pre-activation (measured on EfficientNet-Lite0
with its ImageNet weights: a range several times wider than [0, 6], and logits at cosine 0.91 against
PyTorch on 64 held-out ImageNet images, top-1 agreement 92 %). Quantizing after the clamp, as XNNPACK
runs it anyway (the lowering fuses the clamp into the convolution's output bounds), gave cosine 0.995
on the same images. LowFormer's activations (Hardswish, GELU) are not XNNPACK int8 operators at all:
they run in float between converts whatever the quantizer does.
"""
from __future__ import annotations

from typing import Any

import torch

Q_ANNOTATION_KEY = "quantization_annotation"
_CLAMPS = (torch.ops.aten.hardtanh.default, torch.ops.aten.hardtanh_.default, torch.ops.aten.clamp.default)


def clamp_fusing_quantizer(config: Any):
    """An XNNPACKQuantizer (global `config`) that first annotates conv -> hardtanh/clamp pairs as one
    quantized pattern (input and weights of the convolution, output of the clamp)."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer_utils import (
        _is_annotated, _is_conv_node, _mark_nodes_as_annotated, get_bias_qspec, get_input_act_qspec,
        get_output_act_qspec, get_weight_qspec)
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation

    class ClampFusingQuantizer(XNNPACKQuantizer):
        def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
            cfg = self.global_config
            for clamp in model.graph.nodes:
                if clamp.op != "call_function" or clamp.target not in _CLAMPS or cfg is None:
                    continue
                conv = clamp.args[0]
                if not isinstance(conv, torch.fx.Node) or not _is_conv_node(conv) or len(conv.users) > 1:
                    continue
                weight = conv.args[1]
                partition = [clamp, conv, weight]
                qspecs = {conv.args[0]: get_input_act_qspec(cfg), weight: get_weight_qspec(cfg)}
                bias = conv.args[2] if len(conv.args) > 2 else None
                if isinstance(bias, torch.fx.Node):
                    qspecs[bias] = get_bias_qspec(cfg)
                    partition.append(bias)
                if _is_annotated(partition) or (self.filter_fn and not all(self.filter_fn(n) for n in partition)):
                    continue
                conv.meta[Q_ANNOTATION_KEY] = QuantizationAnnotation(input_qspec_map=qspecs, _annotated=True)
                clamp.meta[Q_ANNOTATION_KEY] = QuantizationAnnotation(output_qspec=get_output_act_qspec(cfg),
                                                                      _annotated=True)
                _mark_nodes_as_annotated(partition)
            return super().annotate(model)

    return ClampFusingQuantizer().set_global(config)
