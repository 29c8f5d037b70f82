"""Labelled image sets for validation and INT8 calibration.

Two layouts: an ImageFolder (`val/<class>/*.JPEG`) and a flat folder of images plus a label file
(Kaggle's `LOC_val_solution.csv`, or lines of `<file> <wnid-or-index>`). ImageNet wnids always map
to the canonical ImageNet-1k class order, never to the order of the folders that happen to exist.
"""
from __future__ import annotations

import csv
import functools
import hashlib
import logging
import math
import re
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
from torchvision.datasets.folder import IMG_EXTENSIONS as IMAGE_EXTENSIONS
import torch.utils.data

from lowformer.core.errors import LowformerError, env_int
from lowformer.core.files import PathLike
from lowformer.data.preprocess import Preprocessing

# torchvision's IMG_EXTENSIONS (matched case-insensitively).
log = logging.getLogger(__name__)

SYNSETS_FILE = Path(__file__).resolve().parent / "imagenet_synsets.txt"
KAGGLE_LABELS = "LOC_val_solution.csv"
_WNID = re.compile(r"^n\d{8}$")


class Sample(NamedTuple):
    path: Path
    label: int


@dataclass
class SampleList:
    """The labelled images of a data folder and how their labels were decided."""

    root: Path
    samples: List[Sample]
    layout: str  # "imagefolder" or "flat+labels"
    label_source: str  # human-readable: where the class indices come from
    imagenet: bool  # labels are ImageNet-1k class indices
    classes: List[str] = field(default_factory=list)  # index -> class folder name (folder order only)
    labels_file: Optional[Path] = None
    unlabeled: List[Path] = field(default_factory=list)  # images the label file does not mention
    missing: int = 0  # label-file entries whose image is absent
    warnings: List[str] = field(default_factory=list)  # e.g. images the label file does not mention

    def __len__(self) -> int:
        return len(self.samples)

    def describe(self) -> Dict[str, object]:
        return {"root": str(self.root.resolve()), "layout": self.layout, "label_source": self.label_source,
                "imagenet_labels": self.imagenet, "labels_file": str(self.labels_file) if self.labels_file else None,
                "images_listed": len(self.samples), "classes_present": len({s.label for s in self.samples}),
                "unlabeled_images": len(self.unlabeled), "labels_without_image": self.missing,
                "warnings": list(self.warnings)}


@functools.lru_cache(maxsize=1)
def imagenet_wnids() -> Tuple[str, ...]:
    """The 1000 ImageNet-1k wnids in canonical (class index) order."""
    try:
        lines = SYNSETS_FILE.read_text().splitlines()
    except OSError as e:
        raise LowformerError(f"cannot read the ImageNet class list {SYNSETS_FILE}: {e}") from None
    return tuple(line.split()[0] for line in lines if line.strip())


@functools.lru_cache(maxsize=1)
def imagenet_index() -> Dict[str, int]:
    return {w: i for i, w in enumerate(imagenet_wnids())}


def is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _images_in(folder: Path, recursive: bool) -> List[Path]:
    it = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in it if is_image(p) and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _subfolders(folder: Path) -> List[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def list_samples(data: PathLike, labels: Optional[PathLike] = None) -> SampleList:
    """All labelled images under `data`.

    Without `labels`: class subfolders (ImageNet wnids -> canonical indices, anything else -> sorted
    folder order, as torchvision's ImageFolder), or a flat folder with `LOC_val_solution.csv` in it
    or up to four folders above it (Kaggle's layout).
    """
    root = Path(data)
    if not root.exists():
        raise LowformerError(f"no such data folder: {root}")
    if not root.is_dir():
        raise LowformerError(f"--data must be a folder of images: {root}")
    if labels is not None:
        return _flat_with_labels(root, Path(labels))
    folders = _subfolders(root)
    flat = _images_in(root, recursive=False)
    # A dataset folder holding just `val/` (e.g. imagenet-val-1300/): use the split inside.
    if not flat and len(folders) == 1 and _subfolders(folders[0]):
        root, folders = folders[0], _subfolders(folders[0])
    if folders and not flat:
        return _image_folder(root, folders)
    if flat:
        found = _find_kaggle_labels(root)
        if found is None:
            raise LowformerError(f"{root} holds images but no class folders: give --labels "
                                 f"(LOC_val_solution.csv or lines of '<file> <wnid-or-index>')")
        return _flat_with_labels(root, found)
    raise LowformerError(f"no images found in {root} (expected <class>/*.JPEG or a flat folder with --labels)")


def any_images(folder: PathLike, what: str) -> SampleList:
    """All images of a folder; labelled when it is a class-folder/label-file layout, else label -1
    (calibration and parity checks need no labels). `what` names the option in errors."""
    root = Path(folder)
    if not root.is_dir():
        raise LowformerError(f"{what} {folder}: no such folder")
    try:
        return list_samples(root)
    except LowformerError:
        images = sorted(p for p in root.rglob("*") if is_image(p)
                        and not any(part.startswith(".") for part in p.relative_to(root).parts))
        if not images:
            raise LowformerError(f"{what} {folder}: no images found") from None
        return SampleList(root, [Sample(p, -1) for p in images], "flat", "none", False)


def _image_folder(root: Path, folders: List[Path]) -> SampleList:
    names = [f.name for f in folders]
    index = imagenet_index()
    if all(n in index for n in names):
        mapping, imagenet = {n: index[n] for n in names}, True
        source = f"ImageNet-1k wnid order ({SYNSETS_FILE.name})"
        classes: List[str] = []
    else:
        mapping, imagenet = {n: i for i, n in enumerate(names)}, False
        not_wnid = next(n for n in names if n not in index)
        source = f"sorted folder order ({len(names)} classes; {not_wnid!r} is not an ImageNet wnid)"
        classes = names
    samples = [Sample(p, mapping[f.name]) for f in folders for p in _images_in(f, recursive=True)]
    if not samples:
        raise LowformerError(f"no images found in the class folders of {root}")
    return SampleList(root, samples, "imagefolder", source, imagenet, classes)


def _find_kaggle_labels(root: Path) -> Optional[Path]:
    for folder in [root, *list(root.resolve().parents)[:4]]:
        if (folder / KAGGLE_LABELS).is_file():
            return folder / KAGGLE_LABELS
    return None


def read_label_file(path: Path) -> Tuple[List[Tuple[str, int]], str, bool]:
    """(file or image id, class index) pairs, a description, and whether the indices are ImageNet's.

    Formats: Kaggle `ImageId,PredictionString` CSV (first token of the prediction is the wnid), or
    lines `<file> <wnid-or-index>` (space, tab or comma separated; `#` comments allowed).
    """
    try:
        text = path.read_text()
    except OSError as e:
        raise LowformerError(f"cannot read label file {path}: {e.strerror or e}") from None
    index = imagenet_index()
    pairs: List[Tuple[str, int]] = []
    kinds = set()
    lines = text.splitlines()
    if lines and lines[0].replace(" ", "").lower().startswith("imageid,predictionstring"):
        for n, row in enumerate(csv.reader(lines[1:]), start=2):
            if not row:
                continue
            tokens = row[1].split() if len(row) > 1 else []
            if not tokens or tokens[0] not in index:
                raise LowformerError(f"{path}:{n}: expected 'ImageId,<wnid> ...', got {','.join(row)[:60]!r}")
            pairs.append((row[0].strip(), index[tokens[0]]))
        kinds.add("wnid")
    else:
        for n, line in enumerate(lines, start=1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            parts = re.split(r"[\s,]+", line)
            if len(parts) < 2:
                raise LowformerError(f"{path}:{n}: expected '<file> <wnid-or-index>', got {line[:60]!r}")
            name, lab = parts[0], parts[1]
            if lab.isdigit():
                pairs.append((name, int(lab)))
                kinds.add("index")
            elif lab in index:
                pairs.append((name, index[lab]))
                kinds.add("wnid")
            elif n == 1 and lab.isalpha() and Path(name).suffix.lower() not in IMAGE_EXTENSIONS:
                continue  # a header line such as "file,label"
            else:
                raise LowformerError(f"{path}:{n}: label {lab!r} is neither a class index nor an ImageNet wnid")
    if not pairs:
        raise LowformerError(f"label file {path} lists no images")
    if kinds == {"wnid"}:
        return pairs, f"label file {path.name} (wnids, ImageNet-1k order)", True
    if kinds == {"index"}:
        return pairs, f"label file {path.name} (class indices)", False
    return pairs, f"label file {path.name} (wnids and class indices)", True


def _flat_with_labels(root: Path, labels: Path) -> SampleList:
    if not labels.is_file():
        raise LowformerError(f"no such label file: {labels}")
    pairs, source, imagenet = read_label_file(labels)
    images = _images_in(root, recursive=False)
    by_name = {p.name: p for p in images}
    by_stem = {p.stem: p for p in images}
    samples, used, missing = [], set(), 0
    for key, label in pairs:
        p = by_name.get(key) or by_stem.get(key) or by_name.get(Path(key).name)
        if p is None and is_image(root / key):
            p = root / key  # a path relative to the data folder
        if p is None:
            missing += 1
            continue
        if p not in used:
            used.add(p)
            samples.append(Sample(p, label))
    if not samples:
        raise LowformerError(f"none of the {len(pairs)} images in {labels} is in {root}")
    samples.sort(key=lambda s: s.path)
    unlabeled = [p for p in images if p not in used]
    notes = []
    if unlabeled:
        notes.append(f"{len(unlabeled)} of {len(images)} images in {root} have no label in {labels.name} and are "
                     f"not scored (e.g. {unlabeled[0].name})")
        log.warning("%s", notes[-1])
    return SampleList(root, samples, "flat+labels", source, imagenet, [], labels, unlabeled, missing, notes)


def _rank(seed: int, key: str) -> str:
    # A hash, not a RNG stream: a file's rank does not depend on which other files exist.
    return hashlib.sha1(f"{seed}:{key}".encode()).hexdigest()


def _sample_key(s: Sample) -> str:
    return f"{s.path.parent.name}/{s.path.name}"  # stable across machines (no absolute root)


def stratified_subset(samples: Sequence[Sample], n: Optional[int], seed: int = 0,
                      exclude: Iterable[Union[Sample, PathLike]] = ()) -> List[Sample]:
    """A deterministic, class-balanced subset of `n` samples (all of them when n is None).

    Classes are visited in a seeded order, one image each per round, so `n` smaller than the number
    of classes still spreads over unrelated classes. `exclude` (samples or paths) removes images
    first, e.g. calibration images disjoint from an evaluation subset.
    """
    excluded = {Path(e.path if isinstance(e, Sample) else e) for e in exclude}
    pool = [s for s in samples if s.path not in excluded]
    if n is None or n >= len(pool):
        return list(pool)
    if n <= 0:
        return []
    by_class: Dict[int, List[Sample]] = defaultdict(list)
    for s in pool:
        by_class[s.label].append(s)
    order = sorted(by_class, key=lambda c: _rank(seed, f"class:{c}"))
    queues = [sorted(by_class[c], key=lambda s: _rank(seed, _sample_key(s))) for c in order]
    chosen: List[Sample] = []
    depth = 0
    while len(chosen) < n:
        for q in queues:
            if depth < len(q):
                chosen.append(q[depth])
                if len(chosen) == n:
                    break
        depth += 1
    picked = set(chosen)
    return [s for s in pool if s in picked]  # the original (path) order


DEFAULT_MAX_IMAGE_PIXELS = 2 ** 26  # 67.1 M pixels (8192 x 8192)
DRAFT_MIN_PIXELS = 2 ** 22  # JPEGs above 4.2 M pixels may decode reduced (smaller ones: bit-exact decode)
_EIGHT_BIT_MODES = {"1", "L", "P", "PA", "LA", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"}


def max_image_pixels() -> int:
    """The decode cap: `LOWFORMER_MAX_IMAGE_PIXELS` when set, else DEFAULT_MAX_IMAGE_PIXELS."""
    return env_int("LOWFORMER_MAX_IMAGE_PIXELS", DEFAULT_MAX_IMAGE_PIXELS)


@functools.lru_cache(maxsize=1)
def _sixteen_to_eight() -> np.ndarray:
    return ((np.arange(65536, dtype=np.uint32) + 128) // 257).astype(np.uint8)  # round(v / 257)


def _to_rgb8(img):
    """8-bit RGB: 8-bit modes through PIL's convert (alpha dropped), 16-bit (I;16*, and I with values
    in 0..65535) scaled by 1/257 rather than clipped, anything else (F, ...) refused."""
    from PIL import Image

    mode = img.mode
    if mode == "RGB":
        return img
    if mode in _EIGHT_BIT_MODES:
        return img.convert("RGB")
    if mode == "I" or mode.startswith("I;16"):
        a = np.asarray(img)
        lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
        if lo < 0 or hi > 65535:
            raise LowformerError(f"{mode} image with values {lo}..{hi} is not a 16-bit image; convert it to 8-bit RGB")
        gray = _sixteen_to_eight()[a.astype(np.uint16, copy=False)]
        del a
        return Image.fromarray(gray, "L").convert("RGB")
    raise LowformerError(f"images of mode {mode} (e.g. floating-point) are not supported; convert it to 8-bit RGB")


def _draft_jpeg(img, resize: int) -> None:
    """Let libjpeg decode a large JPEG at 1/2, 1/4 or 1/8 scale, keeping the shorter side >= 2 x `resize`
    (the resize then still reduces it by 2x or more, so the result is the same within JPEG noise)."""
    w, h = img.size
    short, target = min(w, h), 2 * resize
    if w * h <= DRAFT_MIN_PIXELS or short < 2 * target:
        return
    scale = target / short
    img.draft("RGB", (max(1, math.ceil(w * scale)), max(1, math.ceil(h * scale))))


def load_rgb(path: PathLike, resize: Optional[int] = None):
    """Decode an image fully as 8-bit RGB (grayscale, CMYK, palette, alpha and 16-bit images converted).

    Memory is bounded: an image of more than `max_image_pixels()` pixels (2^26 = 67 M by default,
    `LOWFORMER_MAX_IMAGE_PIXELS`) is refused from its header, before any pixel is decoded; with
    `resize` (the shorter side the preprocessing resizes to), a JPEG above 4.2 M pixels decodes at
    1/2-1/8 scale (`Image.draft`) as long as its shorter side stays >= 2 x resize. Decoding, the
    conversion to RGB and the resize then peak at about 8 bytes per decoded pixel (measured: RGBA
    PNG 8, 16-bit PNG 7, 32-bit integer TIFF 12): at most ~0.5 GB per image (per DataLoader worker)
    at the cap, a few MB for a typical photo; `Preprocessing.transform` never makes an intermediate
    larger than 16 x resize^2 pixels (ResizeCenterCrop crops elongated images first).
    """
    from PIL import Image, UnidentifiedImageError

    with open(path, "rb") as f:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own cap applies below
            try:
                img = Image.open(f)
            except UnidentifiedImageError:  # its message names the file object, not the file
                raise UnidentifiedImageError(f"cannot identify image file {path}") from None
        if resize and img.format == "JPEG":
            _draft_jpeg(img, resize)
        w, h = img.size
        cap = max_image_pixels()
        if w * h > cap:
            raise LowformerError(f"image of {w}x{h} = {w * h:,} pixels exceeds the decode limit of {cap:,} pixels "
                                 f"(LOWFORMER_MAX_IMAGE_PIXELS)")
        img.load()  # decode now: truncated files fail here, not later
        return _to_rgb8(img)


class ImageDataset(torch.utils.data.Dataset):
    """A torch Dataset of (tensor, label, index, error) with the given Preprocessing.

    Unreadable images do not raise (that would kill a DataLoader worker); they yield a zero tensor
    and the error text, and the consumer decides whether that is fatal.
    """

    def __init__(self, samples: Sequence[Sample], preprocessing: Preprocessing):
        self.samples = list(samples)
        self.preprocessing = preprocessing
        self._transform = None  # built lazily in each worker

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        if self._transform is None:
            self._transform = self.preprocessing.transform()
        path, label = self.samples[i]
        try:
            x = self._transform(load_rgb(path, self.preprocessing.resize))
            error = ""
        except Exception as e:  # any decoder failure: corrupt, truncated, not an image
            x = torch.zeros(3, self.preprocessing.crop, self.preprocessing.crop)
            error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".rstrip(": ")
        return x, label, i, error

    def __getstate__(self):
        d = dict(self.__dict__)
        d["_transform"] = None
        return d


def load_images(samples: Sequence[Sample], preprocessing: Preprocessing) -> np.ndarray:
    """Preprocessed images (N, 3, H, W) float32; unreadable files are skipped with a warning."""
    ds = ImageDataset(samples, preprocessing)
    arrays, bad = [], []
    for i in range(len(ds)):
        x, _, _, error = ds[i]
        if error:
            bad.append(f"{samples[i].path.name} ({error})")
            continue
        arrays.append(x.numpy())
    if bad:
        log.warning("skipped %d unreadable image(s): %s", len(bad), ", ".join(bad[:3]))
    if not arrays:
        raise LowformerError("none of the selected images could be read")
    return np.stack(arrays).astype(np.float32)
