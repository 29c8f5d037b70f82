"""Where a module path sits in a LowFormer: its kind, block and stage.

Kinds: stem, downsample, fused MBConv, MBConv, attention, MLP, head, other. With the model at hand
the answer comes from the module classes (and conv strides); without it, from LowFormer's naming
(`stem.N`, `stages.S.B.attn|mlp|local`, head modules), which also covers the reference code's names.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

from torch import nn

KINDS = ("stem", "downsample", "fused MBConv", "MBConv", "attention", "MLP", "head", "other")  # model order
UNATTRIBUTED = "(unattributed)"

_STEM_ROOTS = {"stem", "input_stem", "conv_stem", "conv1", "bn1", "patch_embed"}
_HEAD_ROOTS = {"head", "in_conv", "global_pool", "flatten", "pre_classifier", "classifier", "fc",
               "head_drop", "conv_head", "bn2", "norm_head", "fc_norm", "pre_logits", "conv_head_norm"}
_STAGE_ROOTS = {"stages", "layers", "blocks"}
_FUSED_MB = ("FusedMBConv", "EdgeResidual", "FusedMBConvBlock")
_MB = ("MBConv", "InvertedResidual", "MobileBlock")


@dataclass(frozen=True)
class Placement:
    """A module path's block, stage and kind."""

    module: str
    block: str
    stage: str
    kind: str


def _is_index(s: str) -> bool:
    return s.isdigit()


@dataclass
class ModelStructure:
    """Module paths and their class names (plus conv strides), taken from a built model."""

    classes: Dict[str, str] = field(default_factory=dict)
    strided: Dict[str, bool] = field(default_factory=dict)  # path -> some conv inside has stride > 1
    no_shortcut: Dict[str, bool] = field(default_factory=dict)  # ResidualBlock paths whose shortcut is None

    @classmethod
    def from_model(cls, model: nn.Module) -> "ModelStructure":
        s = cls()
        for name, mod in model.named_modules():
            s.classes[name] = type(mod).__name__
            if hasattr(mod, "shortcut") and getattr(mod, "shortcut") is None:
                s.no_shortcut[name] = True
        for name, mod in model.named_modules():
            stride = getattr(mod, "stride", None)
            if isinstance(mod, nn.modules.conv._ConvNd) and max(stride or (1,)) > 1:
                parts = name.split(".")
                for i in range(len(parts) + 1):
                    s.strided[".".join(parts[:i])] = True
        return s

    @property
    def known(self) -> bool:
        return bool(self.classes)

    def longest_known_prefix(self, parts: Sequence[str]) -> Optional[str]:
        """The longest module path that `parts` starts with (None when the structure is unknown)."""
        if not self.known:
            return None
        for i in range(len(parts), 0, -1):
            p = ".".join(parts[:i])
            if p in self.classes:
                return p
        return ""

    # ------------------------------------------------------------------ placement

    def place(self, module: str) -> Placement:
        if not module:
            return Placement("", UNATTRIBUTED, UNATTRIBUTED, "other")
        parts = module.split(".")
        root = parts[0]
        if root in _STEM_ROOTS:
            block = ".".join(parts[:2]) if len(parts) > 1 and _is_index(parts[1]) else root
            return Placement(module, block, root, "stem")
        if root in _HEAD_ROOTS:
            return Placement(module, root, "head", "head")
        if root in _STAGE_ROOTS and len(parts) > 1 and _is_index(parts[1]):
            stage = ".".join(parts[:2])
            if len(parts) > 2 and _is_index(parts[2]):
                block = ".".join(parts[:3])
                return Placement(module, block, stage, self._kind_in_block(block, parts[3:]))
            return Placement(module, stage, stage, "other")
        if root in _STAGE_ROOTS:
            return Placement(module, root, root, "other")
        # Other timm layouts (`layer1.0`, `features.3`): the top module is the stage.
        block = ".".join(parts[:2]) if len(parts) > 1 and _is_index(parts[1]) else root
        return Placement(module, block, root, self._generic_kind(parts))

    def _class(self, path: str) -> str:
        return self.classes.get(path, "")

    def _kind_in_block(self, block: str, rest: List[str]) -> str:
        """Kind of something inside block `stages.S.B`."""
        branch = rest[0] if rest else ""
        if branch in ("attn", "attention", "token_mixer", "context"):
            return "attention"
        if branch in ("mlp", "ffn", "channel_mixer"):
            return "MLP"
        if self.known:
            block_cls = self._class(block)
            if self.no_shortcut.get(block) or (block_cls != "LowFormerBlock" and self.strided.get(block)):
                return "downsample"
            target = f"{block}.{branch}.main" if branch == "local" else f"{block}.main"
            cls = self._class(target) or self._class(block)
            kind = _conv_kind(cls)
            if kind:
                return kind
            # Class names of any module along the path (e.g. attention modules in other models).
            chain = [self._class(".".join([block] + rest[:i])) for i in range(len(rest) + 1)]
            return _generic_from_classes(chain)
        # Naming only: LowFormer's first block of a stage downsamples; conv blocks name their convs.
        if block.endswith(".0") and branch in ("main", ""):
            return "downsample"
        leaf = set(rest)
        if "spatial_conv" in leaf:
            return "fused MBConv"
        if leaf & {"inverted_conv", "depth_conv"}:
            return "MBConv"
        return "other"

    def _generic_kind(self, parts: List[str]) -> str:
        chain = [self._class(".".join(parts[:i])) for i in range(1, len(parts) + 1)]
        if any(p in ("attn", "attention") for p in parts):
            return "attention"
        if any(p in ("mlp", "ffn") for p in parts):
            return "MLP"
        if any(p in ("downsample", "downsample_layers") for p in parts):
            return "downsample"
        return _generic_from_classes(chain)


def _conv_kind(cls: str) -> Optional[str]:
    if cls in _FUSED_MB:
        return "fused MBConv"
    if cls in _MB:
        return "MBConv"
    return None


def _generic_from_classes(chain: Sequence[str]) -> str:
    for cls in reversed([c for c in chain if c]):
        if "Attention" in cls:
            return "attention"
        if "Mlp" in cls or "MLP" in cls:
            return "MLP"
        kind = _conv_kind(cls)
        if kind:
            return kind
    return "other"


def structure_of(model: Optional[nn.Module]) -> ModelStructure:
    return ModelStructure.from_model(model) if model is not None else ModelStructure()
