"""Soak test of export folders: randomized exports, re-exports, validations, kills and concurrent pairs.

After every operation, every manifest entry's file must exist with its recorded size and sha256
(`Manifest.verify`), and no command may print a traceback. Refusals (one `error:` line, exit 1) are
allowed outcomes: e.g. random weights refused in a folder exported from a checkpoint.

    python benchmarks/soak.py --ops 200 --json benchmarks/soak.json      # b0 at 64 px, about 10 minutes
"""
from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Dict, List

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


def run(cmd: List[str], kill_after: float = None) -> str:
    """Outcome of one command: ok, refused (one error line), killed, or broken (a traceback)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if kill_after is not None:
        try:
            proc.wait(kill_after)
        except subprocess.TimeoutExpired:
            proc.send_signal(random.choice([signal.SIGKILL, signal.SIGTERM]))
            proc.wait(60)
            return "killed"
    _, err = proc.communicate(timeout=600)
    if "Traceback" in err:
        return "broken: " + err.strip().splitlines()[-1][:200]
    if proc.returncode == 0:
        return "ok"
    last = err.strip().splitlines()[-1] if err.strip() else ""
    return "refused" if last.startswith("error:") else f"broken: exit {proc.returncode}: {last[:200]}"


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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ops", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the summary here")
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="lowformer-soak-"))
    torch.manual_seed(args.seed)
    checkpoint = work / "trained.pt"
    torch.save(create_model(MODEL).state_dict(), checkpoint)
    images = generate_images(work / "images", count=16)
    folders = [work / "a", work / "b"]
    outcomes: Counter = Counter()
    failures: List[Dict[str, str]] = []
    t0 = time.monotonic()
    for i in range(args.ops):
        folder = rng.choice(folders)
        op = rng.choices(["export", "validate", "kill", "pair"], weights=[4, 3, 2, 1])[0]
        if op == "export":
            results = [run(export_cmd(rng, folder, str(checkpoint)))]
        elif op == "validate":
            results = [run(validate_cmd(folder, images))] if (folder / "manifest.json").is_file() else ["skipped"]
        elif op == "kill":
            results = [run(export_cmd(rng, folder, str(checkpoint)), kill_after=rng.uniform(0.5, 6.0))]
        else:  # two writers at once into one folder
            cmds = [export_cmd(rng, folder, str(checkpoint)),
                    validate_cmd(folder, images) if (folder / "manifest.json").is_file()
                    else export_cmd(rng, folder, str(checkpoint))]
            procs = [subprocess.Popen(c, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for c in cmds]
            results = []
            for p in procs:
                _, err = p.communicate(timeout=600)
                last = err.strip().splitlines()[-1] if err.strip() else ""
                results.append("broken: traceback" if "Traceback" in err else "ok" if p.returncode == 0
                               else "refused" if last.startswith("error:") else f"broken: exit {p.returncode}")
        problems = check(folders)
        for r in results:
            outcomes[f"{op}: {r.split(':')[0]}"] += 1
            if r.startswith("broken"):
                failures.append({"op": str(i), "kind": op, "what": r})
        failures += [{"op": str(i), "kind": op, "what": f"manifest: {p}"} for p in problems]
        print(f"[{i + 1:3d}/{args.ops}] {op:<8} {', '.join(results):<30} "
              f"{'OK' if not problems else 'MANIFEST BROKEN: ' + problems[0]}", file=sys.stderr, flush=True)
    summary = {"ops": args.ops, "seed": args.seed, "model": MODEL, "image_size": SIZE,
               "seconds": round(time.monotonic() - t0, 1), "outcomes": dict(sorted(outcomes.items())),
               "failures": failures, "passed": not failures, "machine": machine_info()}
    print(json.dumps({k: v for k, v in summary.items() if k != "machine"}, indent=2))
    if args.json:
        write_json(args.json, summary)
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
