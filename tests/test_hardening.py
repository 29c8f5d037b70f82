"""Issue #21, nothing trusted blindly: hostile or odd inputs are converted correctly, bounded, or refused
in one line (16-bit images, elongated images, large JPEGs, deflate bombs, --jobs, label files,
one-class training, --resume without a run, out-of-range recipe and preprocessing values)."""
from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import assert_one_line_error, run_cli
from lowformer.core.errors import LowformerError
from lowformer.data.imagenet import ImageDataset, Sample, list_samples, load_rgb
from lowformer.data.preprocess import Preprocessing

REPO = Path(__file__).resolve().parents[1]
PLAIN = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def _smooth(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A photo-like 8-bit grey image: gradients plus mild noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    a = 127 + 60 * np.sin(x / max(w, 1) * 7) + 50 * np.cos(y / max(h, 1) * 5) + rng.normal(0, 4, (h, w))
    return np.clip(a, 0, 255).astype(np.uint8)


# --- 16-bit and other non-8-bit images -----------------------------------------------------------


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    gray = _smooth(120, 160)
    Image.fromarray(gray, "L").save(tmp_path / "g8.png")
    im16 = Image.new("I;16", (160, 120))
    im16.frombytes((gray.astype(np.uint16) * 257).astype("<u2").tobytes())
    im16.save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as raw:
        assert raw.mode == "I;16"
        assert (np.asarray(raw.convert("RGB")) == 255).mean() > 0.9  # PIL's own convert clips
    pre = Preprocessing(crop=64, resize=72, **PLAIN)
    ds = ImageDataset([Sample(tmp_path / "g8.png", 0), Sample(tmp_path / "g16.png", 0)], pre)
    (x8, _, _, e8), (x16, _, _, e16) = ds[0], ds[1]
    assert e8 == e16 == ""
    assert torch.equal(x8, x16)
    # a 32-bit integer image holding 16-bit values is scaled the same way
    Image.fromarray(gray.astype(np.int32) * 257, "I").save(tmp_path / "g32.tif")
    assert np.array_equal(np.asarray(load_rgb(tmp_path / "g32.tif")), np.asarray(load_rgb(tmp_path / "g8.png")))


def test_float_and_out_of_range_images_are_refused_in_one_line(tmp_path):
    Image.fromarray(np.full((8, 8), 0.5, np.float32), "F").save(tmp_path / "f.tif")
    Image.fromarray(np.full((8, 8), 100_000, np.int32), "I").save(tmp_path / "big.tif")
    for name, fragment in (("f.tif", "mode F"), ("big.tif", "not a 16-bit image")):
        with pytest.raises(LowformerError, match=fragment):
            load_rgb(tmp_path / name)
        _, _, _, error = ImageDataset([Sample(tmp_path / name, 0)], Preprocessing(crop=8, resize=8))[0]
        assert fragment in error and "\n" not in error


# --- memory bounds -------------------------------------------------------------------------------

_RSS_PROBE = textwrap.dedent("""
    import resource, sys
    from lowformer.data.imagenet import ImageDataset, Sample
    from lowformer.data.preprocess import Preprocessing
    ds = ImageDataset([Sample(sys.argv[1], 0), Sample(sys.argv[2], 0)], Preprocessing())
    ds[0]  # warm up: imports, allocator
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    x, _, _, error = ds[1]
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(error or tuple(x.shape), (after - before) // 1024)
""")


def test_16000x1_png_costs_a_crop_not_gigabytes(tmp_path):
    Image.new("L", (16000, 1), 128).save(tmp_path / "long.png")
    Image.fromarray(_smooth(300, 400)).save(tmp_path / "small.png")
    assert (tmp_path / "long.png").stat().st_size < 200
    out = subprocess.run([sys.executable, "-c", _RSS_PROBE, str(tmp_path / "small.png"), str(tmp_path / "long.png")],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    shape, grown_mb = out.stdout.split(")")[0] + ")", int(out.stdout.split()[-1])
    assert shape == "(3, 224, 224)"
    assert grown_mb < 100, f"peak RSS grew {grown_mb} MB (a full resize takes ~2700 MB)"


@pytest.mark.parametrize("size", [(4000, 30), (30, 4000), (2000, 3)])
def test_elongated_images_match_torchvision_within_one_level(size):
    from torchvision import transforms as T

    pre = Preprocessing(**PLAIN)
    img = Image.fromarray(_smooth(size[1], size[0], seed=3)).convert("RGB")
    tv = T.Compose([T.Resize(pre.resize, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(pre.crop),
                    T.ToTensor()])
    x = pre.transform()(img)
    assert x.shape == (3, 224, 224)
    assert (x - tv(img)).abs().max().item() <= 1.5 / 255


def test_pixel_cap_refuses_before_decoding(tmp_path, monkeypatch):
    Image.fromarray(_smooth(100, 100)).save(tmp_path / "a.png")
    monkeypatch.setenv("LOWFORMER_MAX_IMAGE_PIXELS", "5000")
    _, _, _, error = ImageDataset([Sample(tmp_path / "a.png", 0)], Preprocessing(crop=8, resize=8))[0]
    assert "10,000 pixels exceeds the decode limit of 5,000" in error


def test_large_jpeg_decodes_reduced_with_the_same_result(tmp_path):
    from torchvision import transforms as T

    Image.fromarray(_smooth(1800, 2400, seed=5)).convert("RGB").save(tmp_path / "big.jpg", quality=92)
    assert load_rgb(tmp_path / "big.jpg", resize=236).size == (1200, 900)  # 1/2 scale: shorter side 900 >= 472
    assert load_rgb(tmp_path / "big.jpg").size == (2400, 1800)
    pre = Preprocessing(**PLAIN)
    x = ImageDataset([Sample(tmp_path / "big.jpg", 0)], pre)[0][0]
    with Image.open(tmp_path / "big.jpg") as img:
        full = T.Compose([T.Resize(236, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(224),
                          T.ToTensor()])(img.convert("RGB"))
    assert (x - full).abs().mean().item() < 1.0 / 255 and (x - full).abs().max().item() < 8.0 / 255


# --- checkpoints ---------------------------------------------------------------------------------


def _rezip_deflated(src: Path, dst: Path) -> None:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info.filename))


def _declare_size(path: Path, member_suffix: str, size: int) -> None:
    """Patch the uncompressed size a zip declares for one member (local header and directory)."""
    data = bytearray(path.read_bytes())
    for sig, size_at, name_len_at, header in ((b"PK\x03\x04", 22, 26, 30), (b"PK\x01\x02", 24, 28, 46)):
        at = data.find(sig)
        while at >= 0:
            n = int.from_bytes(data[at + name_len_at:at + name_len_at + 2], "little")
            if data[at + header:at + header + n].decode().endswith(member_suffix):
                data[at + size_at:at + size_at + 4] = size.to_bytes(4, "little")
            at = data.find(sig, at + 4)
    path.write_bytes(bytes(data))


def test_deflate_bomb_checkpoint_is_refused_before_torch_load(tmp_path, monkeypatch):
    from lowformer.models import checkpoints

    torch.save({"w": torch.zeros(64 * 1024 ** 2 // 4 + 1024)}, tmp_path / "zeros.pt")  # 64 MiB of zeros
    _rezip_deflated(tmp_path / "zeros.pt", tmp_path / "bomb.pt")
    assert (tmp_path / "bomb.pt").stat().st_size < 1024 ** 2
    torch.save({"w": torch.ones(4)}, tmp_path / "small.pt")
    _rezip_deflated(tmp_path / "small.pt", tmp_path / "huge.pt")
    _declare_size(tmp_path / "huge.pt", "data/0", 3 * 1024 ** 3)  # declares 3 GiB
    assert zipfile.ZipFile(tmp_path / "huge.pt").getinfo("small/data/0").file_size == 3 * 1024 ** 3

    def no_load(*a, **k):
        raise AssertionError("torch.load was reached")

    monkeypatch.setattr(checkpoints.torch, "load", no_load)
    with pytest.raises(LowformerError, match=r"compressed \d[\d,]*x") as e:
        checkpoints.read_state_dict(tmp_path / "bomb.pt")
    assert "\n" not in str(e.value)
    with pytest.raises(LowformerError, match=r"would inflate to 3.00 GiB .* over the 2.00 GiB limit"):
        checkpoints.read_state_dict(tmp_path / "huge.pt")
    monkeypatch.setenv("LOWFORMER_MAX_CHECKPOINT_BYTES", "100")
    with pytest.raises(LowformerError, match="LOWFORMER_MAX_CHECKPOINT_BYTES"):
        checkpoints.read_state_dict(tmp_path / "small.pt")
    monkeypatch.undo()
    assert torch.equal(checkpoints.read_state_dict(tmp_path / "small.pt")["w"], torch.ones(4))  # ordinary file


def test_describe_file_names_a_state_dict_given_as_torchscript(tmp_path):
    from lowformer.models.checkpoints import describe_file

    torch.save(torch.nn.Linear(2, 2).state_dict(), tmp_path / "sd.pt")
    torch.save({"a": torch.zeros(1)}, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    torch.jit.save(torch.jit.trace(torch.nn.Linear(2, 2), torch.zeros(1, 2)), tmp_path / "ts.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a model at all")
    text = describe_file(tmp_path / "sd.pt")
    assert text.startswith("a PyTorch state dict / checkpoint, not a TorchScript module")
    assert "lowformer export MODEL --checkpoint FILE --to torchscript" in text
    assert describe_file(tmp_path / "legacy.pt").startswith("a legacy (non-zip) PyTorch pickle")
    assert describe_file(tmp_path / "ts.pt") == "a TorchScript module"
    assert describe_file(tmp_path / "junk.pt").startswith("not a PyTorch file")


# --- bench --jobs --------------------------------------------------------------------------------


def test_jobs_are_capped_by_available_memory(tmp_path, monkeypatch):
    from lowformer.bench import run

    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       8000000 kB\nMemAvailable:    2000000 kB\n")  # 2.05 GB: 2 jobs
    monkeypatch.setattr(run, "MEMINFO", str(meminfo))
    assert run.available_memory() == 2_048_000_000
    run.check_jobs_fit(2)
    assert_one_line_error(run_cli("bench", "b0", "--jobs", "256"), "--jobs 256", "at most 2 job(s)")
    monkeypatch.setattr(run, "MEMINFO", str(tmp_path / "absent"))
    run.check_jobs_fit(256)  # unknown memory (not Linux): no cap


# --- label files ---------------------------------------------------------------------------------


def test_images_without_labels_are_warned_about(tmp_path, caplog):
    for i in range(3):
        Image.fromarray(_smooth(20, 20, seed=i)).save(tmp_path / f"img{i}.png")
    labels = tmp_path / "labels.txt"
    labels.write_text("img0.png n01440764\n")
    with caplog.at_level(logging.WARNING, logger="lowformer.data.imagenet"):
        listed = list_samples(tmp_path, labels)
    assert len(listed) == 1
    assert any("2 of 3 images" in r.getMessage() and "no label" in r.getMessage() for r in caplog.records)
    d = listed.describe()
    assert d["unlabeled_images"] == 2 and any("2 of 3 images" in w for w in d["warnings"])


# --- training inputs -----------------------------------------------------------------------------


def _image_folder(root: Path, classes) -> Path:
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(_smooth(16, 16, seed=i)).save(root / c / f"{i}.png")
    return root


def test_one_class_training_folder_is_refused(tmp_path):
    data = _image_folder(tmp_path / "one", ["cat"])
    result = run_cli("train", "b0", "--data", str(data), "--out", str(tmp_path / "run"), "--epochs", "1")
    assert_one_line_error(result, "1 class folder(s)", "at least 2")
    assert not (tmp_path / "run").exists()


def test_resume_without_a_run_is_refused(tmp_path):
    data = _image_folder(tmp_path / "two", ["cat", "dog"])
    result = run_cli("train", "b0", "--data", str(data), "--out", str(tmp_path / "run"), "--resume")
    assert_one_line_error(result, "--resume", "no run to continue")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("setting, fragment", [
    ("crop_scale=[2,1]", "crop_scale must be an ordered pair"), ("crop_scale=[1.0,0.5]", "crop_scale"),
    ("crop_scale=[0,1]", "crop_scale"), ("hflip=1.5", "hflip must be a probability"),
    ("reprob=2", "reprob"), ("mix_prob=1.01", "mix_prob"), ("lr_per_128=0", "lr_per_128 must be a positive"),
    ("smoothing=1", "smoothing"), ("ema_decay=1.5", "ema_decay"), ("drop_path=1", "drop_path"),
    ("betas=[0.9,1.5]", "betas"), ("eps=0", "eps"), ("mixup_alpha=Infinity", "mixup_alpha"),
    ("mesa=[2,1]", "mesa")])
def test_recipe_values_are_range_checked(tmp_path, setting, fragment):
    from lowformer.training.recipe import parse_recipe_value, recipe_for

    key, text = setting.split("=", 1)
    with pytest.raises(LowformerError, match=fragment.replace("[", r"\[")) as e:
        recipe_for("b0", {key: parse_recipe_value(key, text)})
    assert "\n" not in str(e.value)


def test_recipe_range_error_through_the_cli(tmp_path):
    data = _image_folder(tmp_path / "two", ["cat", "dog"])
    result = run_cli("train", "b0", "--data", str(data), "--out", str(tmp_path / "run"), "--set", "crop_scale=[2,1]")
    assert_one_line_error(result, "crop_scale must be an ordered pair", "[2.0, 1.0]")
    from lowformer.training.recipe import recipe_for

    assert recipe_for("b0", {"crop_scale": [0.35, 1], "hflip": 0.0, "reprob": 1}).crop_scale == (0.35, 1.0)


# --- preprocessing -------------------------------------------------------------------------------

GOOD = {"crop": 224, "resize": 236, "interpolation": "bicubic", "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225], "crop_ratio": 0.949153}


@pytest.mark.parametrize("change, fragment", [
    ({"mean": [0.5]}, "mean must be three finite numbers"), ({"std": [0.2, 0.2, 0]}, "std must be three"),
    ({"std": [0.2, "x", 0.2]}, "std"), ({"mean": [0.5, float("nan"), 0.5]}, "mean"),
    ({"crop": 0}, "crop must be a positive whole number"), ({"crop": 22.5}, "crop"),
    ({"resize": 200}, "resize (200) must be >= crop (224)"), ({"interpolation": "lanczos"}, "interpolation"),
    ({"resize": None}, "resize")])
def test_preprocessing_values_are_range_checked(change, fragment):
    with pytest.raises(LowformerError) as e:
        Preprocessing.from_dict({**GOOD, **change})
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_good_preprocessing_round_trips():
    p = Preprocessing.from_dict(GOOD)
    assert p == Preprocessing() and Preprocessing.from_dict(p.to_dict()) == p
    with pytest.raises(LowformerError, match="std"):
        p.override(std=(0.0, 0.1, 0.1))
