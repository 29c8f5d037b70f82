"""lowformer: export, quantize, validate, profile and benchmark LowFormer vision backbones."""
from lowformer.core.errors import LowformerError
from lowformer.models.fusion import fuse
from lowformer.models.factory import create_model
from lowformer.models.registry import RELEASED, VARIANTS, resolve

__all__ = ["LowformerError", "fuse", "create_model", "resolve", "RELEASED", "VARIANTS"]
__version__ = "0.1.0"
