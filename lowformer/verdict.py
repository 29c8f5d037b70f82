"""One verdict per artifact, decided in one place and shown the same way everywhere.

Two named checks can decide: the export check (logit parity on a fixed batch, recorded by
`export`) and the validation (accuracy gates on images, recorded by `validate`). Accuracy gates
decide only on labelled real images; on generated images the export check decides for FP32/FP16,
and INT8 stays "not decided" (its accuracy is not measurable there), with the reason said.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, Optional

from lowformer.artifacts import ArtifactEntry, Manifest, ValidationRecord

PASS, FAIL, UNDECIDED = "pass", "fail", "not decided"
EXPORT_CHECK, VALIDATION = "export check", "validation"
IMAGENET_CLASSES = 1000


@dataclass(frozen=True)
class Verdict:
    status: str  # pass | fail | not decided
    decided_by: Optional[str]  # export check | validation | None
    reason: str

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        return self.status if self.decided_by is None else f"{self.status} ({self.decided_by})"


def decide(precision: str, export_check_passed: Optional[bool], validation: Optional[Dict[str, Any]],
           real_labels: bool) -> Verdict:
    """The verdict from an artifact's two checks.

    `validation`: its score (`passed`, `failures`, `error`); `real_labels`: whether the images were
    labelled real images (so the accuracy gates mean something).
    """
    if export_check_passed is False:
        return Verdict(FAIL, EXPORT_CHECK, "logit parity on the export's fixed batch failed")
    if validation and validation.get("error"):
        return Verdict(FAIL, VALIDATION, str(validation["error"]))
    if validation and real_labels and validation.get("passed") is not None:  # None: gates not applied
        if validation.get("passed"):
            return Verdict(PASS, VALIDATION, "accuracy gates hold on labelled images")
        return Verdict(FAIL, VALIDATION, "; ".join(validation.get("failures") or ["a gate failed"]))
    if precision == "int8":
        return Verdict(UNDECIDED, None, "INT8 accuracy is not measurable on generated images: validate on "
                                        "real labelled images")
    if export_check_passed:
        why = "accuracy gates not applied: generated images" if validation else "not validated"
        return Verdict(PASS, EXPORT_CHECK, f"logit parity holds; {why}")
    return Verdict(UNDECIDED, None, "no export check recorded and no validation on labelled images")


GATES_NOT_APPLIED = ("the labels are class-folder order, not the ImageNet classes of this 1000-class model "
                     "(generated images?): top-1 means nothing there and the accuracy gates decide only on "
                     "labelled real images (ImageNet wnid folders or --labels); the export check decides")


def gates_not_applied(num_classes: Optional[int], label_source: Optional[str]) -> Optional[str]:
    """Why `validate`'s accuracy gates do not apply to a run (None: they apply): an ImageNet model on
    class folders that are not ImageNet wnids, whose labels are folder order (the demo's generated images)."""
    if num_classes == IMAGENET_CLASSES and (label_source or "").startswith("sorted folder order"):
        return GATES_NOT_APPLIED
    return None


def folder_order_labels(manifest: Manifest, v: Optional[ValidationRecord]) -> bool:
    """Validated on class folders that are not ImageNet wnids with an ImageNet model: the labels are
    folder order, so its top-1 means nothing (the demo's generated images)."""
    return v is not None and gates_not_applied(manifest.num_classes, v.label_source) is not None


def artifact_verdict(manifest: Manifest, entry: ArtifactEntry,
                     validation: Optional[ValidationRecord] = None) -> Verdict:
    """The verdict of a manifest entry from its export check and `validation` (default: its own)."""
    v = entry.validation if validation is None else validation
    parity = entry.parity.passed if entry.parity is not None else None
    return decide(entry.precision, parity, v.to_dict() if v else None,
                  real_labels=v is not None and not folder_order_labels(manifest, v))
