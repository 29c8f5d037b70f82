"""lowformer: export, quantize, validate, profile and benchmark LowFormer vision backbones (and any
timm model). The public Python API is one function per command (lowformer.api); each imports its
machinery when called.

    import lowformer

    result = lowformer.export("b1", to=("onnx", "openvino"), fp16=True, checkpoint="evalmodel.pt")
    report = lowformer.validate([str(result.out)], "imagenet/val", limit=1000)
    with lowformer.load(result.out / "model.onnx") as runner:
        logits = runner.run(images)
"""
from lowformer.api import bench, explain, export, load, profile, report, sweep, validate
from lowformer.core.errors import LowformerError
from lowformer.models.factory import create_model
from lowformer.models.fusion import fuse
from lowformer.models.registry import RELEASED, VARIANTS, resolve

__all__ = ["export", "validate", "explain", "profile", "bench", "sweep", "load", "report", "LowformerError", "fuse",
           "create_model", "resolve", "RELEASED", "VARIANTS"]
__version__ = "0.1.0"
