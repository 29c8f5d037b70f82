"""The PyTorch reference of an evaluation: the model the artifacts came from (or one named), and the
preprocessing every image goes through (the manifest's, else the reference's own, overridden)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

from lowformer.artifacts import Manifest
from lowformer.core.errors import LowformerError
from lowformer.core.files import PathLike
from lowformer.data.preprocess import Preprocessing
from lowformer.evaluate.config import DataConfig, ReferenceConfig
from lowformer.evaluate.items import Item, folder_of


def reference_model(manifest: Manifest, folder: PathLike):
    """The unfused PyTorch model an export folder came from (the parity reference)."""
    from lowformer.models.factory import create_model

    return create_model(manifest.model_name, manifest.checkpoint_path(folder), num_classes=manifest.num_classes)


def _reference_from_manifests(items: Sequence[Item], checkpoint: Optional[str] = None, full: bool = False,
                              notes: Optional[List[str]] = None) -> Tuple[Any, Manifest, Path, bool]:
    """(reference model, manifest, folder, whether its weights are trained rather than random).

    The manifest's checkpoint is held to the rules of artifacts (inside the folder, size and
    sha256 as recorded: `Manifest.checkpoint_path`); `checkpoint`, given explicitly, replaces it
    when it has the recorded sha256 (said in one line of `notes`)."""
    from lowformer.models.checkpoints import sha256_file
    from lowformer.models.factory import create_model

    found = {}
    for path, entry, manifest in items:
        if manifest is None or entry is None:
            raise LowformerError(f"{path} has no manifest entry: give --reference MODEL [--checkpoint PATH]")
        folder = folder_of(path, entry)
        sha = manifest.checkpoint.get("sha256")
        ckpt = None if checkpoint is not None else manifest.checkpoint_path(folder, full)
        # the same model with the same weights (sha256) and input, whichever folder holds its copy of them
        same_weights = sha if sha and sha != "random-init" else (str(Path(ckpt).resolve()) if ckpt else None, sha)
        key = (manifest.model_name, same_weights, json.dumps(manifest.preprocessing, sort_keys=True))
        found.setdefault(key, (manifest, folder, ckpt, (ckpt is not None or checkpoint is not None)
                               and sha != "random-init"))
    if len(found) > 1:
        raise LowformerError("the artifacts come from different models or checkpoints: validate them "
                             "separately, or give --reference MODEL --checkpoint PATH")
    manifest, folder, ckpt, trained = next(iter(found.values()))
    if checkpoint is not None:
        sha, size = manifest.checkpoint.get("sha256"), manifest.checkpoint.get("size")
        if not os.path.isfile(checkpoint):
            raise LowformerError(f"no such checkpoint: {checkpoint}")
        if not (isinstance(sha, str) and len(sha) == 64):
            raise LowformerError(f"the manifest of {folder} records no sha256 of its checkpoint to check "
                                 f"{checkpoint} against: give --reference MODEL --checkpoint PATH")
        if (isinstance(size, int) and os.path.getsize(checkpoint) != size) or sha256_file(checkpoint) != sha:
            raise LowformerError(f"{checkpoint} is not the checkpoint the artifacts were exported from (sha256 "
                                 "differs from the manifest's): to compare with other weights give "
                                 f"--reference {manifest.model_name} --checkpoint PATH")
        if notes is not None:
            notes.append(f"reference: weights from --checkpoint {checkpoint} (the sha256 the manifest records), "
                         "not the manifest's checkpoint path")
        ckpt = checkpoint
    model = create_model(manifest.model_name, ckpt, num_classes=manifest.num_classes)
    return model, manifest, folder, trained


def resolve_reference(items: Sequence[Item], config: Optional[ReferenceConfig] = None, image_size: int = 224,
                      notes: Optional[List[str]] = None, *, images: Optional[DataConfig] = None, **fields: Any
                      ) -> Tuple[Any, Optional[Manifest], str, bool, Preprocessing]:
    """(reference model, manifest, its name, whether its weights are real, preprocessing) of a run.

    `config`: a ReferenceConfig, or its fields as keywords (reference, checkpoint, verify): the model
    named by `reference` (with `checkpoint`), else the one the artifacts' manifests came from (with
    `checkpoint`: those weights, which must have the manifest's sha256; `verify="full"` re-hashes the
    manifest's checkpoint). Preprocessing from the manifest (else the reference's own at
    `image_size`), overridden by `images` (a DataConfig: crop_ratio, interpolation, mean, std; also
    as keywords). A reference given explicitly instead of a manifest's is said in one line of `notes`."""
    from lowformer.models.factory import create_model
    from lowformer.models.registry import resolve

    own = ReferenceConfig.option_names()
    config = ReferenceConfig.build(config, **{k: v for k, v in fields.items() if k in own})
    images = DataConfig.build(images, **{k: v for k, v in fields.items() if k not in own})
    reference, checkpoint = config.reference, config.checkpoint
    if reference is not None:
        ref_model = create_model(reference, checkpoint)
        manifest = next((m for _, _, m in items if m is not None), None)
        real_checkpoint, ref_name = checkpoint is not None, resolve(reference).display
        if manifest is not None and notes is not None:
            notes.append(_explicit_reference_note(manifest, reference, checkpoint))
    else:
        ref_model, manifest, _, real_checkpoint = _reference_from_manifests(items, checkpoint, config.full, notes)
        ref_name = manifest.display_name
    if manifest is not None:
        pre = Preprocessing.from_dict(manifest.preprocessing)
    else:
        pre = resolve(reference).preprocessing(image_size)  # type: ignore[arg-type]
    return ref_model, manifest, ref_name, real_checkpoint, pre.override(**images.overrides())


def _explicit_reference_note(manifest: Manifest, reference: str, checkpoint: Optional[str]) -> str:
    """One line: the reference was given with --reference (and --checkpoint), not the manifest's."""
    from lowformer.models.checkpoints import sha256_file

    sha = manifest.checkpoint.get("sha256")
    if checkpoint is None:
        weights = "random weights (no --checkpoint)"
    else:
        same = isinstance(sha, str) and len(sha) == 64 and os.path.isfile(checkpoint) and sha256_file(checkpoint) == sha
        weights = f"--checkpoint {checkpoint} (" + ("the weights the artifacts were exported from" if same else
                                                     "not the weights the artifacts were exported from") + ")"
    return f"reference: {reference} with {weights}, given explicitly instead of the manifest's checkpoint"
