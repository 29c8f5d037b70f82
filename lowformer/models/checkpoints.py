"""Reading checkpoints safely (weights_only) and loading them strictly into timm's LowFormer."""
from __future__ import annotations

import os
import zipfile
from typing import Dict, Mapping, Optional, Union

import torch
from torch import nn

from lowformer.core.errors import LowformerError, env_int
from lowformer.core.files import sha256_file  # noqa: F401  (re-exported: callers hash checkpoints)

StateDict = Dict[str, torch.Tensor]
_CONTAINER_KEYS = ("state_dict", "model", "state_dict_ema", "model_ema")
# torch.save writes a zip whose members are stored, not compressed. Before torch.load inflates one,
# the sizes its directory declares are checked: 2 GiB in all (the largest released LowFormer, B3, is
# ~0.23 GB; a training last.pt with optimizer and EMA ~1.2 GB), and deflated members may not shrink
# more than 100x once they pass 64 MiB (float weights barely compress; a zip bomb is zeros).
DEFAULT_MAX_CHECKPOINT_BYTES = 2 * 1024 ** 3
MAX_COMPRESSION_RATIO = 100
_RATIO_CHECKED_ABOVE = 64 * 1024 ** 2


def max_checkpoint_bytes() -> int:
    """The bound on a checkpoint's uncompressed size: `LOWFORMER_MAX_CHECKPOINT_BYTES` when set."""
    return env_int("LOWFORMER_MAX_CHECKPOINT_BYTES", DEFAULT_MAX_CHECKPOINT_BYTES, "bytes")


def check_archive(path: Union[str, os.PathLike]) -> None:
    """Refuse (one LowformerError) a zip-format checkpoint whose declared uncompressed size exceeds
    `max_checkpoint_bytes()`, or whose deflated members inflate more than MAX_COMPRESSION_RATIO x;
    reads only the zip directory. Legacy (non-zip) pickles pass: they are read with weights_only."""
    path = os.fspath(path)
    try:
        if not zipfile.is_zipfile(path):
            return
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
    except (OSError, zipfile.BadZipFile, ValueError):
        return  # torch.load reports a broken file in its own words
    total = sum(i.file_size for i in infos)
    limit = max_checkpoint_bytes()
    if total > limit:
        raise LowformerError(f"checkpoint {path} would inflate to {total / 2 ** 30:.2f} GiB (from "
                             f"{os.path.getsize(path) / 2 ** 20:.1f} MiB), over the {limit / 2 ** 30:.2f} GiB limit "
                             f"(LOWFORMER_MAX_CHECKPOINT_BYTES)")
    deflated = [i for i in infos if i.compress_type != zipfile.ZIP_STORED]
    inflated, packed = sum(i.file_size for i in deflated), sum(i.compress_size for i in deflated)
    if inflated > _RATIO_CHECKED_ABOVE and inflated > MAX_COMPRESSION_RATIO * max(packed, 1):
        raise LowformerError(f"checkpoint {path} is compressed {inflated / max(packed, 1):,.0f}x "
                             f"({packed / 2 ** 20:.1f} MiB inflating to {inflated / 2 ** 20:,.0f} MiB): "
                             f"not a torch.save file (a zip bomb?)")


def describe_file(path: Union[str, os.PathLike]) -> str:
    """What a model file is, from its first bytes and (for zips) its member names, for errors such as
    a state dict handed to the TorchScript loader. Never loads (unpickles) anything."""
    path = os.fspath(path)
    hint = "export it with `lowformer export MODEL --checkpoint FILE --to torchscript`"
    try:
        with open(path, "rb") as f:
            head = f.read(16)
        names = []
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
    except (OSError, zipfile.BadZipFile, ValueError) as e:
        return f"unreadable ({getattr(e, 'strerror', None) or e})"
    if not head:
        return "an empty file"
    if names:
        parts = {n.split("/", 1)[1] if "/" in n else n for n in names}
        if any(n.startswith("code/") for n in parts) and "constants.pkl" in parts:
            return "a TorchScript module"
        if any(n.endswith(("serialized_exported_program.json", "archive_format")) for n in names):
            return "a torch.export program (.pt2), not a TorchScript module"
        if "data.pkl" in parts:
            return f"a PyTorch state dict / checkpoint, not a TorchScript module: {hint}"
        return "a zip archive that is neither a TorchScript module nor a PyTorch checkpoint"
    if head[:1] == b"\x80":
        return f"a legacy (non-zip) PyTorch pickle checkpoint, not a TorchScript module: {hint}"
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100_000_000:
        return f"a safetensors state dict, not a TorchScript module: {hint}"
    if head.startswith(b"\x08") and b"\x12" in head[:8]:
        return "probably an ONNX model (load it with the onnxruntime backend), not a TorchScript module"
    return "not a PyTorch file (unrecognised contents)"


def read_state_dict(path: Union[str, os.PathLike]) -> StateDict:
    """Tensors of a checkpoint file: torch pickle (weights only) or safetensors; unwrapped.

    Not timm's `load_state_dict`: it allowlists argparse.Namespace in the pickle, and we refuse
    every non-tensor object (tests/models/test_checkpoints.py::test_checkpoint_with_code_objects_is_refused).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise LowformerError(f"checkpoint not found: {path}")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            obj = load_file(path)
        else:
            check_archive(path)  # before torch.load inflates anything
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except LowformerError:
        raise
    except Exception as e:  # pickle errors, truncated files, foreign objects
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LowformerError(f"cannot read checkpoint {path}: {first}") from None
    return unwrap_state_dict(obj, path)


def unwrap_state_dict(obj: object, where: str = "checkpoint") -> StateDict:
    """The tensors of a (possibly nested) checkpoint container, DDP/compile prefixes removed.

    Kept beside timm's `load_state_dict`, which opens one container level only: our training
    checkpoints and some releases nest `{"model": {"state_dict": ...}}` (tests/models/test_checkpoints.py).
    """
    from timm.models import clean_state_dict

    while isinstance(obj, Mapping):
        inner = next((obj[k] for k in _CONTAINER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise LowformerError(f"{where} does not hold a state dict of tensors")
    return clean_state_dict(dict(obj))


def to_timm_keys(state_dict: StateDict, model: nn.Module) -> StateDict:
    """Official LowFormer keys (backbone./head.op_list./head.opseq.) to timm's module names."""
    from timm.models.lowformer import LowFormer, checkpoint_filter_fn

    if isinstance(model, LowFormer):
        return checkpoint_filter_fn(state_dict, model)
    return state_dict


def _mismatch(expected: Mapping[str, torch.Size], got: StateDict):
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    wrong = [k for k in expected if k in got and tuple(got[k].shape) != tuple(expected[k])]
    return missing, unexpected, wrong


def identify_variant(state_dict: StateDict) -> Optional[str]:
    """Which released (or b2) LowFormer variant a state dict (official or timm keys) belongs to."""
    from timm.models.lowformer import checkpoint_filter_fn

    from lowformer.models.registry import VARIANTS, meta_state_dict_shapes

    sd = checkpoint_filter_fn(state_dict, None)
    for name in VARIANTS:
        expected = meta_state_dict_shapes(name)
        if not any(_mismatch(expected, sd)):
            return name
    return None


def load_checkpoint(model: nn.Module, checkpoint: Union[str, os.PathLike, StateDict], spec=None) -> None:
    """Load strictly; on a mismatch raise one LowformerError naming the first offending keys and,
    when the checkpoint is another released LowFormer variant, which one."""
    state_dict = unwrap_state_dict(checkpoint) if isinstance(checkpoint, Mapping) else read_state_dict(checkpoint)
    sd = to_timm_keys(state_dict, model)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    missing, unexpected, wrong = _mismatch(expected, sd)
    if missing or unexpected or wrong:
        name = getattr(spec, "name", None) or type(model).__name__
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if keys:
                shown = ", ".join(keys[:3]) + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else "")
                parts.append(f"{len(keys)} {label}: {shown}")
        other = identify_variant(state_dict) if getattr(spec, "is_lowformer", False) else None
        hint = f"this checkpoint is a {other}, not a {name}; " if other and other != name else ""
        raise LowformerError(f"checkpoint does not match {name}: {hint}" + "; ".join(parts))
    model.load_state_dict(sd, strict=True)


def to_official_keys(timm_state_dict: StateDict) -> StateDict:
    """timm LowFormer keys to the official (reference code) keys: the inverse of timm's
    `checkpoint_filter_fn`, so that files we write load in the paper's code. A block's attention
    branch is `total.0.0` when the block also has an MLP branch (`total.0.1`), else `total.0`."""
    import re

    sd = dict(timm_state_dict)
    if not any(k.startswith("stem.0.") for k in sd):
        return sd  # already official (or not a LowFormer): nothing to rename
    block = re.compile(r"^stages\.(\d+)\.(\d+)\.(.*)$")
    with_mlp = {m.group(1, 2) for m in map(block.match, sd) if m and m.group(3).startswith("mlp.")}
    head = (("in_conv.", "head.op_list.0."), ("pre_classifier.0.", "head.op_list.2.linear."),
            ("pre_classifier.1.", "head.op_list.2.norm."), ("classifier.", "head.op_list.3.linear."))
    out: StateDict = {}
    for k, v in sd.items():
        m = block.match(k)
        if m:
            stage, idx, rest = m.groups()
            for branch, official in (("attn.", "total.0.0." if (stage, idx) in with_mlp else "total.0."),
                                     ("mlp.", "total.0.1."), ("local.", "total.1.")):
                if rest.startswith(branch):
                    rest = official + rest[len(branch):]
                    break
            k = f"backbone.stages.{stage}.op_list.{idx}.{rest}"
        elif k.startswith("stem."):
            k = "backbone.input_stem.op_list." + k[len("stem."):]
        else:
            k = next((new + k[len(old):] for old, new in head if k.startswith(old)), k)
        k = k.replace(".conv_proj.conv.", ".conv_proj.0.").replace(".conv_proj.norm.", ".conv_proj.1.")
        k = k.replace(".pwise.", ".pwise.0.")
        out[k] = v
    return out
