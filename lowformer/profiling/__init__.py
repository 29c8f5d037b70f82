"""Per-layer latency profiling of every artifact, mapped back to LowFormer blocks."""
from lowformer.profiling.api import profile, profile_runner, report_from_recording, report_from_trtexec
from lowformer.profiling.report import GROUPS, LayerRow, ProfileReport
from lowformer.profiling.structure import KINDS, ModelStructure

__all__ = ["profile", "profile_runner", "report_from_recording", "report_from_trtexec", "ProfileReport", "LayerRow", "GROUPS", "KINDS",
           "ModelStructure"]
