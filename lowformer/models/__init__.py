"""Models: the registry on timm, the factory, checkpoints, pretrained weights, fusion, complexity.

Importing this package registers the paper's peer backbones that timm lacks (`models/peers/`).
"""
from lowformer.models import peers  # noqa: F401  (registers edgevit_xs, fat_b0, ... with timm)
