"""Labelled image sets: layouts, label files, ImageNet class order, subsets, decoding, preprocessing."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lowformer.data.imagenet import (ImageDataset, Sample, imagenet_wnids, list_samples, load_rgb,
                            stratified_subset)
from lowformer.core.errors import LowformerError
from lowformer.data.preprocess import Preprocessing


def write_image(path: Path, size=(40, 30), mode="RGB", seed=0, fmt=None) -> Path:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    img = Image.fromarray(arr, "RGB")
    if mode != "RGB":
        img = img.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt)
    return path


def make_folder(root: Path, classes, per_class=2) -> Path:
    for c, name in enumerate(classes):
        for i in range(per_class):
            write_image(root / name / f"img_{c}_{i}.JPEG", seed=c * 100 + i)
    return root


# --- layouts and labels ------------------------------------------------------------------------


def test_synset_list_is_the_canonical_imagenet_order():
    wnids = imagenet_wnids()
    assert len(wnids) == 1000 == len(set(wnids))
    assert wnids[0] == "n01440764" and wnids[1] == "n01443537" and wnids[999] == "n15075141"


def test_imagenet_subset_folders_use_canonical_indices_not_folder_order(tmp_path):
    # Two of the 1000 classes: enumerating folders would give 0 and 1.
    root = make_folder(tmp_path / "val", ["n01443537", "n15075141"])
    listed = list_samples(root)
    assert listed.imagenet and listed.layout == "imagefolder"
    assert "ImageNet" in listed.label_source
    assert sorted({s.label for s in listed.samples}) == [1, 999]
    assert all(s.label == (1 if s.path.parent.name == "n01443537" else 999) for s in listed.samples)


def test_non_imagenet_folders_fall_back_to_sorted_folder_order(tmp_path):
    root = make_folder(tmp_path / "fashion", ["trouser", "ankle_boot", "shirt"])
    listed = list_samples(root)
    assert not listed.imagenet
    assert "sorted folder order" in listed.label_source
    assert listed.classes == ["ankle_boot", "shirt", "trouser"]
    assert {s.path.parent.name: s.label for s in listed.samples} == {"ankle_boot": 0, "shirt": 1, "trouser": 2}


def test_numbered_class_folders_like_fashion_mnist(tmp_path):
    root = make_folder(tmp_path / "fm", [str(i) for i in range(10)], per_class=1)
    listed = list_samples(root)
    assert not listed.imagenet and len(listed) == 10
    assert all(s.label == int(s.path.parent.name) for s in listed.samples)


def test_dataset_folder_holding_only_val_is_entered(tmp_path):
    make_folder(tmp_path / "imagenet-mini" / "val", ["n01440764"])
    listed = list_samples(tmp_path / "imagenet-mini")
    assert listed.root.name == "val" and listed.imagenet and len(listed) == 2


def test_flat_folder_with_kaggle_csv(tmp_path):
    flat = tmp_path / "ILSVRC" / "Data" / "CLS-LOC" / "val"
    for i in range(4):
        write_image(flat / f"ILSVRC2012_val_{i:08d}.JPEG", seed=i)
    csv = tmp_path / "LOC_val_solution.csv"
    csv.write_text("ImageId,PredictionString\n"
                   "ILSVRC2012_val_00000000,n01443537 10 20 30 40 n01443537 1 2 3 4\n"
                   "ILSVRC2012_val_00000001,n15075141 1 2 3 4\n"
                   "ILSVRC2012_val_00000002,n01440764 1 2 3 4\n"
                   "ILSVRC2012_val_00000099,n01440764 1 2 3 4\n")  # no such image
    for listed in (list_samples(flat, csv), list_samples(flat)):  # explicit and found four levels up
        assert listed.layout == "flat+labels" and listed.imagenet
        assert {s.path.stem: s.label for s in listed.samples} == {
            "ILSVRC2012_val_00000000": 1, "ILSVRC2012_val_00000001": 999, "ILSVRC2012_val_00000002": 0}
        assert listed.missing == 1
        assert [p.stem for p in listed.unlabeled] == ["ILSVRC2012_val_00000003"]
        assert listed.labels_file.resolve() == csv.resolve()


def test_flat_folder_with_file_and_wnid_or_index_lines(tmp_path):
    for i in range(3):
        write_image(tmp_path / "imgs" / f"a{i}.png", fmt="PNG", seed=i)
    wn = tmp_path / "wnids.txt"
    wn.write_text("a0.png n01443537\n# a comment\n\na1.png\tn15075141\n")
    listed = list_samples(tmp_path / "imgs", wn)
    assert listed.imagenet and {s.path.name: s.label for s in listed.samples} == {"a0.png": 1, "a1.png": 999}
    idx = tmp_path / "idx.txt"
    idx.write_text("file,label\na0.png,7\na1,3\na2.png 5\n")  # header, comma, stem-only name
    listed = list_samples(tmp_path / "imgs", idx)
    assert not listed.imagenet and "class indices" in listed.label_source
    assert {s.path.name: s.label for s in listed.samples} == {"a0.png": 7, "a1.png": 3, "a2.png": 5}


def test_label_file_with_paths_relative_to_the_data_folder(tmp_path):
    root = make_folder(tmp_path / "val", ["n01440764", "n01443537"], per_class=1)
    lines = [f"{s.path.parent.name}/{s.path.name} 42" for s in list_samples(root).samples]
    (tmp_path / "relabel.txt").write_text("\n".join(lines))
    listed = list_samples(root, tmp_path / "relabel.txt")
    assert len(listed) == 2 and all(s.label == 42 for s in listed.samples)


@pytest.mark.parametrize("text, where", [("a0.png\n", ":1:"), ("a0.png n0000000x\n", ":1:"),
                                         ("ImageId,PredictionString\nx,zebra 1 2\n", ":2:")])
def test_bad_label_lines_name_the_line(tmp_path, text, where):
    write_image(tmp_path / "imgs" / "a0.png", fmt="PNG")
    (tmp_path / "l.txt").write_text(text)
    with pytest.raises(LowformerError, match=where):
        list_samples(tmp_path / "imgs", tmp_path / "l.txt")


def test_bad_data_paths_are_user_errors(tmp_path):
    with pytest.raises(LowformerError, match="no such data folder"):
        list_samples(tmp_path / "nope")
    write_image(tmp_path / "flat" / "x.jpg")
    with pytest.raises(LowformerError, match="--labels"):
        list_samples(tmp_path / "flat")
    (tmp_path / "empty" / "n01440764").mkdir(parents=True)
    with pytest.raises(LowformerError, match="no images"):
        list_samples(tmp_path / "empty")
    with pytest.raises(LowformerError, match="no such label file"):
        list_samples(tmp_path / "flat", tmp_path / "missing.csv")


# --- subsets -----------------------------------------------------------------------------------


def _fake_samples(classes=20, per_class=7):
    return [Sample(Path(f"/data/c{c:03d}/img{i}.JPEG"), c) for c in range(classes) for i in range(per_class)]


def test_stratified_subset_is_deterministic_balanced_and_order_free():
    samples = _fake_samples()
    a = stratified_subset(samples, 50)
    shuffled = samples[:]
    random.Random(3).shuffle(shuffled)
    assert a == stratified_subset(samples, 50)
    assert set(a) == set(stratified_subset(shuffled, 50))
    counts = np.bincount([s.label for s in a], minlength=20)
    assert len(a) == 50 and counts.max() - counts.min() <= 1
    few = stratified_subset(samples, 8)
    assert len({s.label for s in few}) == 8  # fewer images than classes: all different classes
    assert stratified_subset(samples, 8, seed=1) != few
    assert stratified_subset(samples, None) == samples and stratified_subset(samples, 10**6) == samples


def test_stratified_subset_exclude_gives_disjoint_calibration_images():
    samples = _fake_samples()
    evaluation = stratified_subset(samples, 60)
    calib = stratified_subset(samples, 40, exclude=evaluation)
    assert len(calib) == 40 and not set(calib) & set(evaluation)
    by_path = stratified_subset(samples, 40, exclude=[s.path for s in evaluation])
    assert by_path == calib


# --- decoding and preprocessing ------------------------------------------------------------------


@pytest.mark.parametrize("pre", [Preprocessing(), Preprocessing(crop=32, resize=37, interpolation="bilinear"),
                                 Preprocessing(crop=48, resize=48, interpolation="nearest",
                                               mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))])
def test_dataset_equals_torchvision_bit_for_bit(tmp_path, pre):
    from torchvision import transforms as T

    modes = {"bicubic": T.InterpolationMode.BICUBIC, "bilinear": T.InterpolationMode.BILINEAR,
             "nearest": T.InterpolationMode.NEAREST}
    tv = T.Compose([T.Resize(pre.resize, interpolation=modes[pre.interpolation]), T.CenterCrop(pre.crop),
                    T.ToTensor(), T.Normalize(pre.mean, pre.std)])
    paths = [write_image(tmp_path / "a.jpg", size=(300, 200), seed=1),
             write_image(tmp_path / "b.png", size=(90, 160), seed=2, fmt="PNG")]
    ds = ImageDataset([Sample(p, 0) for p in paths], pre)
    for i, p in enumerate(paths):
        x, label, index, error = ds[i]
        with Image.open(p) as img:
            expected = tv(img.convert("RGB"))
        assert error == "" and index == i
        assert torch.equal(x, expected)


def test_timm_eval_transform_matches_preprocessing_from_timm_config(tmp_path):
    import timm
    from timm.data import create_transform, resolve_data_config

    from lowformer.data.preprocess import from_timm_config

    cfg = timm.get_pretrained_cfg("tf_efficientnet_lite0").to_dict()
    pre = from_timm_config(cfg)
    tf = create_transform(**resolve_data_config({}, pretrained_cfg=cfg))
    path = write_image(tmp_path / "a.jpg", size=(333, 250), seed=4)
    x = ImageDataset([Sample(path, 0)], pre)[0][0]
    with Image.open(path) as img:
        assert torch.equal(x, tf(img.convert("RGB")))


@pytest.mark.parametrize("mode, fmt", [("L", "JPEG"), ("CMYK", "JPEG"), ("P", "PNG"), ("RGBA", "PNG"),
                                       ("LA", "PNG")])
def test_non_rgb_images_become_rgb(tmp_path, mode, fmt):
    path = write_image(tmp_path / f"img.{fmt.lower()}", mode=mode, fmt=fmt)
    with Image.open(path) as raw:
        assert raw.mode == mode
    assert load_rgb(path).mode == "RGB"
    pre = Preprocessing(crop=16, resize=16, mean=(0, 0, 0), std=(1, 1, 1))
    x, _, _, error = ImageDataset([Sample(path, 0)], pre)[0]
    assert error == "" and x.shape == (3, 16, 16)
    if mode in ("L", "LA"):
        assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])


def test_unreadable_images_yield_an_error_not_an_exception(tmp_path):
    junk = tmp_path / "junk.JPEG"
    junk.write_bytes(b"this is not a jpeg" * 10)
    good = write_image(tmp_path / "good.jpg", size=(200, 200))
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[:400])
    ds = ImageDataset([Sample(junk, 0), Sample(truncated, 0)], Preprocessing(crop=8, resize=8))
    for i in range(2):
        x, _, _, error = ds[i]
        assert error and torch.count_nonzero(x) == 0 and x.shape == (3, 8, 8)


def test_dataset_in_dataloader_workers(tmp_path):
    root = make_folder(tmp_path / "val", ["n01440764", "n01443537"], per_class=3)
    listed = list_samples(root)
    loader = torch.utils.data.DataLoader(ImageDataset(listed.samples, Preprocessing(crop=16, resize=18)),
                                         batch_size=4, num_workers=1)
    batches = list(loader)
    x = torch.cat([b[0] for b in batches])
    assert x.shape == (6, 3, 16, 16)
    assert torch.cat([b[1] for b in batches]).tolist() == [s.label for s in listed.samples]
