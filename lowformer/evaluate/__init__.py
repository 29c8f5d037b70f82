"""One evaluation pass: what `validate` and `explain` share.

The images (`data`: calibration images held out, a stratified seeded subset, one DataLoader, the
unreadable ones), the reference (`reference`), the pass itself (`passes.run_pass`: each image
decoded once, every batch handed to each consumer in turn), and the consumers: `scoring.Scorer`
(validate: the reference and every artifact, accuracy and parity tallies) and
`divergence.Divergence` (explain: the tapped reference and every artifact's block boundaries).
`validate --explain` is one pass with both consumers (`lowformer.validate.validate(...,
explain_plan=...)`).

Modules:
  items       the artifacts of a run: (path, entry, manifest), their folders, display names
  reference   the PyTorch reference model and the preprocessing of a run
  data        which images, decoded how, and the unreadable ones
  passes      the pass: `run_pass(samples, pre, batch_size, workers, consumers, ...)`
  tally       running sums: accuracy and logit parity (`Tally`), block error sums (`BlockTally`)
  scoring     validate's consumer
  divergence  explain's consumer (reference taps, boundary runners, per-block sums)

Layered between validate/explain (above) and verdict (below): it imports neither of them.
"""
from lowformer.evaluate.data import Batch, Images, calibration_images, default_workers, select_images
from lowformer.evaluate.items import Item, folder_of, unique_names
from lowformer.evaluate.passes import Consumer, Deferred, run_pass
from lowformer.evaluate.reference import reference_model, resolve_reference

__all__ = ["Batch", "Consumer", "Deferred", "Images", "Item", "calibration_images", "default_workers", "folder_of",
           "reference_model", "resolve_reference", "run_pass", "select_images", "unique_names"]
