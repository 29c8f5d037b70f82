"""The paper's peer backbones that timm lacks, written in timm's style (one file per architecture).

Importing this package registers every model with timm (`@register_model`), so
`timm.create_model("edgevit_xs")` and `lowformer ... timm:edgevit_xs` both work.
"""
import importlib
import pkgutil

# Import every architecture module of this folder: each registers its models with timm.
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
