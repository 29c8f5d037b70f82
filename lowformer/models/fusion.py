"""BatchNorm folding that keeps module names (profiling maps layers back to them)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

# Containers whose forward applies their children in registration order, so a BatchNorm2d that
# follows a conv among their children really is applied to that conv's output.
_SEQUENTIAL_PARENTS = ("Sequential", "ConvLayer", "ConvNormAct", "ConvBnAct")


@dataclass
class FuseReport:
    folded: int = 0
    names: List[str] = field(default_factory=list)


def _is_plain_bn(m: nn.Module) -> bool:
    # timm's BatchNormAct2d subclasses BatchNorm2d but also applies an activation: handled apart.
    return type(m) is nn.BatchNorm2d


def _folded_replacement(bn: nn.Module) -> nn.Module:
    """What stays of a BatchNorm after folding: nothing, or the act (and drop) of a BatchNormAct2d."""
    if _is_plain_bn(bn):
        return nn.Identity()
    return nn.Sequential(bn.drop, bn.act) if hasattr(bn, "act") else nn.Identity()


def _foldable(parent: nn.Module, conv: nn.Module, bn: nn.Module) -> bool:
    if not isinstance(conv, nn.Conv2d) or not isinstance(bn, nn.BatchNorm2d):
        return False
    if not bn.track_running_stats or bn.running_mean is None or conv.out_channels != bn.num_features:
        return False
    if _is_plain_bn(bn):
        return type(parent).__name__ in _SEQUENTIAL_PARENTS
    # BatchNormAct2d inside timm blocks that run conv -> bn in their forward
    return type(bn).__name__ == "BatchNormAct2d"


def fuse(model: nn.Module) -> FuseReport:
    """Fold every BatchNorm2d that directly follows a Conv2d into it, in place (eval mode).

    The conv keeps its name; the norm becomes an Identity (or the activation of a timm
    BatchNormAct2d), so module paths in exported graphs are unchanged.
    """
    model.eval()
    report = FuseReport()
    for parent_name, parent in list(model.named_modules()):
        children = list(parent.named_children())
        for (conv_name, conv), (bn_name, bn) in zip(children, children[1:]):
            if not _foldable(parent, conv, bn):
                continue
            setattr(parent, conv_name, fuse_conv_bn_eval(conv, bn))
            setattr(parent, bn_name, _folded_replacement(bn))
            report.folded += 1
            report.names.append(f"{parent_name}.{bn_name}".lstrip("."))
    return report


def count_batchnorms(model: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
