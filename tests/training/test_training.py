"""Training on real data (Fashion-MNIST, as an ImageFolder) with a tiny LowFormer: it learns, a killed
run resumes exactly, checkpoints survive a kill mid-write, DDP runs under torchrun, and best.pt is
an official-format checkpoint that `create_model` loads. Plus the official key mapping.

The folder preparation and the refusals of bad input need no real data: they run on generated idx
files in Debian's format (helpers.write_fake_fashion_mnist), so they run on every machine."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import FIXTURES, REPO
from helpers import assert_one_line_error, load_mini, run_cli, write_fake_fashion_mnist, write_idx

from lowformer.models.checkpoints import read_state_dict, to_official_keys
from lowformer.data.fashion_mnist import CLASSES, MARKER, load_split, prepare_fashion_mnist
from lowformer.training import TrainConfig, load_checkpoint_file, remove_stale_temporaries, train

BIN = Path(sys.executable).parent
TINY = {"width_list": [8, 16, 32, 48, 64], "depth_list": [0, 1, 1, 1, 1], "head_widths": [64, 64]}
# The recipe's ImageNet augmentation is far too strong for a few hundred steps on 28-pixel images.
LIGHT = {"crop_scale": [1.0, 1.0], "mixup_alpha": 0.0, "cutmix_alpha": 0.0, "randaug": None, "drop_path": 0.0}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread: on 2 cores shared with other jobs, more threads only spin against each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def fm_data(fashion_mnist, tmp_path_factory) -> Path:
    """2,000 training and 500 test images (balanced)."""
    return prepare_fashion_mnist(tmp_path_factory.mktemp("fm") / "fm", fashion_mnist, per_class=200, test_per_class=50)


@pytest.fixture(scope="module")
def fm_tiny(fashion_mnist, tmp_path_factory) -> Path:
    """500 training and 100 test images."""
    return prepare_fashion_mnist(tmp_path_factory.mktemp("fm") / "tiny", fashion_mnist, per_class=50, test_per_class=10)


@pytest.fixture(scope="module")
def fm_generated(tmp_path_factory) -> Path:
    """40 training and 20 test images of generated idx files, prepared as the real ones are."""
    root = tmp_path_factory.mktemp("fm-generated")
    source = write_fake_fashion_mnist(root / "source", per_class=4, test_per_class=2)
    return prepare_fashion_mnist(root / "fm", source)


@pytest.fixture(scope="module")
def generated_run(fm_generated, tmp_path_factory):
    """A finished run (2 epochs x 2 steps) on generated images: what --resume checks read."""
    out = tmp_path_factory.mktemp("runs") / "generated"
    return train(_config(fm_generated, out)), out, fm_generated


def _config(data: Path, out: Path, **kw) -> TrainConfig:
    base = dict(model="b0", data=str(data / "train"), val_data=str(data / "test"), out=str(out), epochs=2,
                batch_size=16, lr=2e-3, image_sizes=(32,), eval_size=32, workers=0, threads=1,
                model_kwargs=dict(TINY), recipe=dict(LIGHT))
    base.update(kw)
    return TrainConfig(**base)


def _cli_args(cfg: TrainConfig):
    args = ["train", cfg.model, "--data", cfg.data, "--val-data", cfg.val_data, "--out", cfg.out,
            "--epochs", str(cfg.epochs), "--batch-size", str(cfg.batch_size),
            "--image-sizes", ",".join(map(str, cfg.image_sizes)), "--eval-size", str(cfg.eval_size),
            "--workers", str(cfg.workers), "--threads", str(cfg.threads), "--model-kwargs",
            json.dumps(cfg.model_kwargs)]
    if cfg.lr is not None:
        args += ["--lr", str(cfg.lr)]
    for k, v in cfg.recipe.items():
        args += ["--set", f"{k}={json.dumps(v)}"]
    return args


# ------------------------------------------------------------------------------------------------
# Fashion-MNIST as an ImageFolder
# ------------------------------------------------------------------------------------------------

@pytest.fixture(params=["generated", "debian"])
def fm_source(request, tmp_path) -> Path:
    """Folder of the four idx.gz files: generated ones (always), Debian's (skips without them)."""
    if request.param == "debian":
        return request.getfixturevalue("fashion_mnist")
    return write_fake_fashion_mnist(tmp_path / "source", per_class=5, test_per_class=3)


def test_fashion_mnist_folder_is_exact_and_idempotent(fm_source, tmp_path):
    from PIL import Image
    from torchvision.datasets import ImageFolder

    dest = prepare_fashion_mnist(tmp_path / "fm", fm_source, per_class=3, test_per_class=2)
    train_set = ImageFolder(dest / "train")
    assert train_set.classes == list(CLASSES) and len(train_set) == 30 and len(ImageFolder(dest / "test")) == 20
    images, labels = load_split("train", fm_source)
    for path, label in train_set.samples[::7]:
        index = int(Path(path).stem)
        assert labels[index] == label
        pixels = np.asarray(Image.open(path))
        assert pixels.shape == (28, 28, 3) and (pixels == images[index][..., None]).all()

    marker = dest / "train" / MARKER
    stamp = marker.stat().st_mtime_ns
    prepare_fashion_mnist(dest, fm_source, per_class=3, test_per_class=2)
    assert marker.stat().st_mtime_ns == stamp  # finished splits are not rewritten

    prepare_fashion_mnist(dest, fm_source, per_class=4, test_per_class=2)  # a different request replaces
    assert len(ImageFolder(dest / "train")) == 40
    assert sorted(p.name for p in dest.iterdir()) == ["test", "train"]  # no temporary folders left


def test_bad_fashion_mnist_files_are_one_line_errors(tmp_path, capsys):
    import gzip

    from lowformer.data.fashion_mnist import main

    def error(*argv):
        assert main([str(tmp_path / "out"), *argv]) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and "\n" not in err, err
        return err

    source = write_fake_fashion_mnist(tmp_path / "source", per_class=2, test_per_class=1)
    assert "per-class image count must be at least 1" in error("--source", str(source), "--per-class", "0")
    assert f"Fashion-MNIST file not found: {tmp_path / 'none' / 'train-images-idx3-ubyte.gz'}" in \
        error("--source", str(tmp_path / "none"))
    labels, images = source / "train-labels-idx1-ubyte.gz", source / "train-images-idx3-ubyte.gz"
    labels.write_bytes(b"\x00\x00")
    assert f"cannot read {labels}: " in error("--source", str(source))  # not gzip
    labels.write_bytes(gzip.compress(b"\x00\x00\x0d\x01"))  # idx of floats: not Fashion-MNIST's bytes
    assert f"{labels} is not an unsigned-byte idx file" in error("--source", str(source))
    write_idx(labels, np.zeros(19, np.uint8))  # 20 images, 19 labels
    assert f"Fashion-MNIST train files in {source} do not match" in error("--source", str(source))
    images.write_bytes(gzip.compress(gzip.decompress(images.read_bytes())[:-5]))  # a cut-off idx body
    assert f"{images} is truncated" in error("--source", str(source))
    assert not (tmp_path / "out" / "train").exists()


# ------------------------------------------------------------------------------------------------
# Official key format
# ------------------------------------------------------------------------------------------------

def test_to_official_keys_gives_the_released_key_sets():
    import timm
    from timm.models.lowformer import checkpoint_filter_fn

    manifests = json.loads((FIXTURES / "manifests.json").read_text())
    for name, entry in manifests.items():
        with torch.device("meta"):
            sd = timm.create_model(f"lowformer_{name.lower()}").state_dict()
        official = to_official_keys(sd)
        assert {k: list(v.shape) for k, v in official.items()} == {k: s for k, s, _ in entry["state_dict"]}, name
        assert list(checkpoint_filter_fn(official, None)) == list(sd), name


@pytest.mark.parametrize("path", sorted((FIXTURES / "mini").glob("*.safetensors")), ids=lambda p: p.stem)
def test_to_official_keys_round_trips_reference_weights(path):
    from safetensors.torch import load_file

    original = {k[len("state_dict."):]: v.float() if v.is_floating_point() else v
                for k, v in load_file(str(path)).items() if k.startswith("state_dict.")}
    model, _, _ = load_mini(path)
    official = to_official_keys(model.state_dict())
    assert set(official) == set(original)
    assert all(torch.equal(official[k], original[k]) for k in original)


# ------------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained_run(fm_data, tmp_path_factory):
    """A tiny LowFormer, 2 epochs x 125 steps of 16 images at 32 px (about 30-50 s on 2 busy cores)."""
    out = tmp_path_factory.mktemp("runs") / "tiny"
    return train(_config(fm_data, out)), out, fm_data


def test_small_lowformer_learns_fashion_mnist(trained_run):
    summary, out, _ = trained_run
    assert summary["steps"] == 250 and summary["epochs"] == 2
    assert summary["final"]["n"] == 500
    assert summary["final"]["top1"] > 50.0, summary["final"]  # chance is 10%
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2]
    assert history[1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["lr"] < 1e-6  # the cosine schedule ran to its end


def test_best_checkpoint_is_official_and_loads_with_create_model(trained_run):
    from lowformer import create_model
    from lowformer.data.training import eval_loader, evaluate

    summary, out, data = trained_run
    raw = torch.load(out / "best.pt", map_location="cpu", weights_only=True)
    assert raw["key_format"] == "official" and raw["epoch"] == summary["best"]["epoch"]
    assert all(k.startswith(("backbone.input_stem.", "backbone.stages.", "head.op_list.")) for k in raw["state_dict"])
    model = create_model("b0", checkpoint=str(out / "best.pt"), num_classes=10, **TINY)
    loader, _ = eval_loader(str(data / "test"), model_preprocessing(), batch_size=50, workers=0)
    result = evaluate(model, loader, torch.device("cpu"))
    assert result["top1"] == pytest.approx(summary["best"]["top1"], abs=1e-9)


def model_preprocessing():
    from lowformer.models.registry import resolve

    return resolve("b0").preprocessing(32)


@pytest.mark.heavy
def test_kill_and_resume_gives_the_uninterrupted_result(fm_tiny, tmp_path):
    """One run of 2 epochs in one go; another killed (SIGKILL) during epoch 2 and resumed from last.pt."""
    straight = _config(fm_tiny, tmp_path / "straight", batch_size=16, workers=1)
    reference = train(straight)

    killed = _config(fm_tiny, tmp_path / "killed", batch_size=16, workers=1)
    proc = subprocess.Popen([str(BIN / "lowformer"), *_cli_args(killed)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    last = Path(killed.out) / "last.pt"
    deadline = time.time() + 120
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert load_checkpoint_file(last)["epoch"] == 1, "the run was not killed during its second epoch"

    result = run_cli(*_cli_args(killed), "--resume", "--json")
    assert result.exit_code == 0, result.output
    resumed = json.loads(result.stdout)
    assert resumed["resumed_from_epoch"] == 1 and resumed["steps"] == reference["steps"]

    a = [json.loads(x) for x in (Path(straight.out) / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (Path(killed.out) / "metrics.jsonl").read_text().splitlines()]
    assert [h["train_loss"] for h in b] == pytest.approx([h["train_loss"] for h in a], rel=1e-5)
    assert [c for h in b for _, c in h["loss_curve"]] == pytest.approx([c for h in a for _, c in h["loss_curve"]],
                                                                       rel=1e-4, abs=1e-5)
    assert resumed["final"]["top1"] == pytest.approx(reference["final"]["top1"], abs=1e-9)
    sa, sb = load_checkpoint_file(Path(straight.out) / "last.pt"), load_checkpoint_file(last)
    for part in ("model", "ema"):
        for k, v in sa[part].items():
            assert torch.allclose(v.float(), sb[part][k].float(), rtol=1e-4, atol=1e-6), (part, k)


def test_checkpoint_write_killed_midway_keeps_the_previous_one(tmp_path):
    """SIGKILL while torch.save is writing a large checkpoint: last.pt stays the previous, valid one."""
    path = tmp_path / "last.pt"
    script = (
        "import sys, torch\n"
        "from lowformer.training import save_checkpoint\n"
        f"save_checkpoint({str(path)!r}, {{'epoch': 1, 'w': torch.arange(10)}})\n"
        "print('saved', flush=True)\n"
        f"save_checkpoint({str(path)!r}, {{'epoch': 2, 'w': torch.ones(32, 1024, 1024)}})\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "saved"
    deadline = time.time() + 60
    partial = []
    while not partial and time.time() < deadline:
        partial = [p for p in tmp_path.glob(".last.pt.*.tmp") if p.stat().st_size > 0]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert partial, "the second write was never observed"
    state = load_checkpoint_file(path)
    assert state["epoch"] == 1 and torch.equal(state["w"], torch.arange(10))
    assert remove_stale_temporaries(tmp_path) and not list(tmp_path.glob(".*.tmp"))


@pytest.mark.heavy
def test_torchrun_two_processes_gloo(fm_tiny, tmp_path):
    """DDP with gloo on CPU: 2 processes split each epoch, the total batch and lr double."""
    cfg = _config(fm_tiny, tmp_path / "ddp", epochs=1, lr=None, batch_size=16)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", "-m", "lowformer",
                           *_cli_args(cfg), "--json"], capture_output=True, text=True, env=env,
                          timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert summary["world_size"] == 2 and summary["total_batch"] == 32
    assert summary["steps"] == 500 // 2 // 16  # each process sees half of every epoch
    assert summary["lr"] == pytest.approx(0.000332 * 128 / 170 * 32 / 128)  # B0's released lr, scaled linearly
    assert summary["final"]["n"] == 100  # the evaluation is split across processes without padding
    assert read_state_dict(Path(cfg.out) / "best.pt")


# ------------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------------

def test_cli_rejects_bad_input(generated_run, tmp_path):
    _, out, data = generated_run
    common = ["--image-sizes", "32", "--eval-size", "32", "--workers", "0"]
    assert_one_line_error(run_cli("train", "b0", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r"),
                                  *common), "--data", "not found")
    assert_one_line_error(run_cli("train", "b0", "--data", str(data / "train"), "--model-kwargs", "{bad",
                                  "--out", str(tmp_path / "r")), "--model-kwargs")
    assert_one_line_error(run_cli("train", "b0", "--data", str(data / "train"), "--set", "mixp=1",
                                  "--out", str(tmp_path / "r")), "unknown recipe key")
    assert_one_line_error(run_cli("train", "b0", "--data", str(data / "train"), "--set", "crop_scale=0.5",
                                  "--out", str(tmp_path / "r")), "crop_scale must be a pair")
    assert_one_line_error(run_cli("train", "b0", "--data", str(data / "train"), "--randaug", "bogus", *common,
                                  "--out", str(tmp_path / "r")), "randaug")
    assert_one_line_error(run_cli("train", "b0", "--data", str(data / "train"), "--out", str(out), *common),
                          "--resume")
    assert_one_line_error(run_cli("train", "b0", "--data", str(data / "train"), "--batch-size", "64", *common,
                                  "--out", str(tmp_path / "r")), "40 training images are too few for batch size 64")
    other = tmp_path / "other-classes"
    for name in CLASSES[:3]:
        (other / name).mkdir(parents=True)
        (other / name / "0.png").write_bytes(next((data / "test" / name).iterdir()).read_bytes())
    assert_one_line_error(run_cli("train", "b0", "--data", str(data / "train"), "--val-data", str(other), *common,
                                  "--out", str(tmp_path / "r")), "--val-data classes differ", "(3 vs 10 folders)")
    args = _cli_args(_config(data, out))
    assert_one_line_error(run_cli(*args, "--resume", "--epochs", "3"), "epochs differs")
    assert not list(out.glob(".*.tmp"))


def test_trained_lowformer_keeps_its_predictions_in_int8(trained_run, tmp_path):
    """The INT8 goal on a LowFormer trained here: >= 98 % top-1 agreement with FP32 on the Fashion-MNIST
    test images, calibrated on training images (the tiny variant: export_model builds named variants)."""
    import numpy as np
    import onnxruntime as ort

    from lowformer import create_model
    from lowformer.calibrate.config import CalibrationConfig
    from lowformer.calibrate.quantize import quantize_onnx
    from lowformer.data.imagenet import list_samples, load_images
    from lowformer.export.onnx_export import export_onnx
    from lowformer.models.fusion import fuse
    from lowformer.models.registry import resolve

    _, out, data = trained_run
    model = create_model("b0", checkpoint=str(out / "best.pt"), num_classes=10, **TINY).eval()
    fuse(model)
    export_onnx(model, tmp_path / "model.onnx", 32)
    quantize_onnx(tmp_path / "model.onnx", tmp_path / "model_int8.onnx", resolve("b0").preprocessing(32),
                  CalibrationConfig(calib_data=str(data / "train"), calib_size=256, target="cpu"))
    images = load_images(list_samples(data / "test").samples, model_preprocessing())
    fp32, int8 = (ort.InferenceSession(str(tmp_path / f), providers=["CPUExecutionProvider"])
                  .run(None, {"input": images})[0] for f in ("model.onnx", "model_int8.onnx"))
    agreement = float(np.mean(fp32.argmax(1) == int8.argmax(1)))
    assert agreement >= 0.98, agreement
