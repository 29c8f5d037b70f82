"""Soak test of export folders: randomized exports, re-exports, validations, kills and concurrent pairs,
and the cases of issue #33: NaN checkpoints, mtime-preserving rewrites, validate-during-export.

After every operation, every manifest entry's file must exist with its recorded size and sha256
(`Manifest.verify`), and no command may print a traceback. Refusals (one `error:` line, exit 1) are
allowed outcomes: e.g. random weights refused in a folder exported from a checkpoint. Some operations
must be refused: an export of a checkpoint with a NaN weight (and it writes nothing), and a validate
of a folder whose artifact was rewritten in place with its size and mtime kept (then the bytes are
put back). A pair whose validate and export both succeeded must keep the validation on model.onnx
when the export did not change its bytes.

    python benchmarks/soak.py --ops 200 --json benchmarks/soak.json      # b0 at 64 px, two streams

Two streams (`--streams`) run at once, each on its own export folder, so every check after an
operation reads a folder nobody is writing; the pairs put two writers into one folder.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional

import torch

from lowformer.artifacts import Manifest
from lowformer.core.errors import LowformerError
from lowformer.core.files import write_json
from lowformer.core.machine import machine_info
from lowformer.data.synthetic import generate_images
from lowformer.models.factory import create_model

MODEL, SIZE = "b0", 64
CLI = [sys.executable, "-m", "lowformer"]


def export_cmd(rng: random.Random, folder: Path, checkpoint: str) -> List[str]:
    targets = rng.sample(["onnx", "torchscript"], rng.randint(1, 2))
    cmd = CLI + ["export", MODEL, "--image-size", str(SIZE), "--out", str(folder), "--lock-timeout", "120"]
    for t in targets:
        cmd += ["--to", t]
    if "onnx" in targets and rng.random() < 0.4:
        cmd.append("--fp16")
    if rng.random() < 0.8:  # mostly the folder's own weights; sometimes random ones (refused in a trained folder)
        cmd += ["--checkpoint", checkpoint]
    return cmd


def validate_cmd(folder: Path, images: Path) -> List[str]:
    return CLI + ["validate", str(folder), "--data", str(images), "--limit", "8", "--workers", "0", "--skip-missing"]


def outcome(returncode: int, err: str) -> str:
    """ok, refused (one `error:` line), or broken (a traceback, or a failure without one clear line)."""
    if "Traceback" in err:
        return "broken: " + err.strip().splitlines()[-1][:200]
    if returncode == 0:
        return "ok"
    last = err.strip().splitlines()[-1] if err.strip() else ""
    return "refused" if last.startswith("error:") else f"broken: exit {returncode}: {last[:200]}"


def run(cmd: List[str], kill_after: Optional[float] = None, rng: Optional[random.Random] = None) -> str:
    """Outcome of one command: ok, refused, killed (SIGKILL or SIGTERM after `kill_after` s), or broken."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if kill_after is not None:
        try:
            proc.wait(kill_after)
        except subprocess.TimeoutExpired:
            proc.send_signal((rng or random).choice([signal.SIGKILL, signal.SIGTERM]))
            proc.wait(60)
            return "killed"
    _, err = proc.communicate(timeout=600)
    return outcome(proc.returncode, err)


def check(folders: List[Path]) -> List[str]:
    problems = []
    for f in folders:
        if not (f / "manifest.json").is_file():
            continue
        try:
            Manifest.load(f).verify(f)
        except LowformerError as e:
            problems.append(str(e))
    return problems


def plan(rng: random.Random, ops: int) -> List[str]:
    """The operations, drawn once from the seed (export 4 : validate 3 : kill 2 : pair 2 : nan 1 : tamper 1)."""
    return rng.choices(["export", "validate", "kill", "pair", "nan", "tamper"], weights=[4, 3, 2, 2, 1, 1], k=ops)


def must_refuse(result: str, what: str) -> str:
    """`refused` stays; anything else (ok above all) is a failure: this input must not pass."""
    return result if result == "refused" else f"broken: {what} was not refused ({result})"


def nan_export(rng: random.Random, folder: Path, nan_checkpoint: str) -> List[str]:
    """A checkpoint with a NaN weight, into a fresh folder: refused, and nothing left there."""
    out = folder.parent / f"{folder.name}-nan"
    cmd = CLI + ["export", MODEL, "--image-size", str(SIZE), "--out", str(out), "--checkpoint", nan_checkpoint,
                 "--to", rng.choice(["onnx", "torchscript"])]
    result = must_refuse(run(cmd), "an export of a NaN checkpoint")
    left = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if left and not result.startswith("broken"):
        result = f"broken: the refused NaN export left {left[:3]}"
    if out.is_dir():
        for p in out.iterdir():  # keep the next nan op's check meaningful
            if p.is_file():
                p.unlink()
    return [result]


def tamper_validate(rng: random.Random, folder: Path, images: Path) -> List[str]:
    """Rewrite 4,000 bytes of one artifact in place with its size and mtime kept: validate must refuse it;
    then the bytes (not the mtime) are put back."""
    if not (folder / "manifest.json").is_file():
        return ["skipped"]
    files = [folder / a.path for a in Manifest.load(folder).artifacts
             if (folder / a.path).is_file() and (folder / a.path).stat().st_size > 8000]
    if not files:
        return ["skipped"]
    path = rng.choice(files)
    st, original = path.stat(), path.read_bytes()
    at = rng.randrange(0, len(original) - 4000)
    with open(path, "r+b") as f:
        f.seek(at)
        f.write(bytes(b ^ 0xFF for b in original[at:at + 4000]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    try:
        return [must_refuse(run(validate_cmd(folder, images)), f"a validate of {path.name} rewritten in place")]
    finally:
        path.write_bytes(original)


def onnx_sha(folder: Path) -> Optional[str]:
    try:
        entry = Manifest.load(folder).entry("model.onnx")
    except LowformerError:
        return None
    return entry.sha256 if entry is not None else None


def run_op(op: str, rng: random.Random, folder: Path, checkpoint: str, images: Path,
           nan_checkpoint: str = "") -> List[str]:
    """One operation on `folder`; the outcome of each process it started."""
    if op == "nan":
        return nan_export(rng, folder, nan_checkpoint)
    if op == "tamper":
        return tamper_validate(rng, folder, images)
    if op == "export":
        return [run(export_cmd(rng, folder, checkpoint))]
    if op == "validate":
        return [run(validate_cmd(folder, images))] if (folder / "manifest.json").is_file() else ["skipped"]
    if op == "kill":
        return [run(export_cmd(rng, folder, checkpoint), kill_after=rng.uniform(0.5, 6.0), rng=rng)]
    # two writers at once into one folder
    validating = (folder / "manifest.json").is_file()
    before = onnx_sha(folder)
    cmds = [export_cmd(rng, folder, checkpoint),
            validate_cmd(folder, images) if validating else export_cmd(rng, folder, checkpoint)]
    procs = [subprocess.Popen(c, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for c in cmds]
    results = []
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        results.append(outcome(proc.returncode, err))
    if validating and results == ["ok", "ok"] and before is not None and onnx_sha(folder) == before:
        entry = Manifest.load(folder).entry("model.onnx")
        if entry is None or entry.validation is None:  # the export landed after the validate recorded
            results[1] = "broken: the validation recorded on model.onnx was lost to the concurrent export"
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ops", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--streams", type=int, default=2,
                    help="concurrent streams of operations, each on its own export folder")
    ap.add_argument("--json", help="write the summary here")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="lowformer-soak-"))
    torch.manual_seed(args.seed)
    checkpoint = work / "trained.pt"
    state = create_model(MODEL).state_dict()
    torch.save(state, checkpoint)
    first = next(k for k, v in state.items() if v.is_floating_point() and v.dim() == 4)  # the stem conv
    state[first].view(-1)[0] = float("nan")
    nan_checkpoint = work / "nan.pt"
    torch.save(state, nan_checkpoint)
    images = generate_images(work / "images", count=16)
    ops = plan(random.Random(args.seed), args.ops)
    streams = max(1, args.streams)
    outcomes: Counter = Counter()
    failures: List[Dict[str, str]] = []
    done = [0]
    lock = threading.Lock()
    t0 = time.monotonic()

    def stream(k: int) -> None:
        rng = random.Random(args.seed * 1000 + k)  # each stream draws its commands and kill times alone
        folder = work / f"stream{k}"
        for i in range(k, len(ops), streams):
            results = run_op(ops[i], rng, folder, str(checkpoint), images, str(nan_checkpoint))
            problems = check([folder])  # only this stream writes this folder: nothing is in flight
            with lock:
                done[0] += 1
                for r in results:
                    outcomes[f"{ops[i]}: {r.split(':')[0]}"] += 1
                    if r.startswith("broken"):
                        failures.append({"op": str(i), "kind": ops[i], "what": r})
                failures.extend({"op": str(i), "kind": ops[i], "what": f"manifest: {p}"} for p in problems)
                print(f"[{done[0]:3d}/{len(ops)}] stream {k} {ops[i]:<8} {', '.join(results):<30} "
                      f"{'OK' if not problems else 'MANIFEST BROKEN: ' + problems[0]}", file=sys.stderr, flush=True)

    threads = [threading.Thread(target=stream, args=(k,)) for k in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    summary = {"ops": args.ops, "streams": streams, "seed": args.seed, "model": MODEL, "image_size": SIZE,
               "seconds": round(time.monotonic() - t0, 1), "outcomes": dict(sorted(outcomes.items())),
               "failures": failures, "passed": not failures, "machine": machine_info()}
    print(json.dumps({k: v for k, v in summary.items() if k != "machine"}, indent=2))
    if args.json:
        write_json(args.json, summary)
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
