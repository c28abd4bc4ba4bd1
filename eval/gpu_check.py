#!/usr/bin/env python
"""The default recipe in every precision this machine has, one table: the check to run
on a GPU (about 10 minutes for DistilBERT on AllAgree), and on a CPU.

    python eval/gpu_check.py --data ../shared/data/FinancialPhraseBank-v1.0
    python eval/gpu_check.py --model PATH --data DIR -- --epochs 1     # flags after -- go to every run

On a GPU: fp32, fp16 and, where the GPU has bf16 units (compute capability 8.0+), bf16;
each without and with --xla on. On a CPU: fp32 and bf16 (emulated, and slower, on a CPU
without bf16 units); fp16 has no fast CPU kernels and XLA is a loss there
(docs/precision.md). Each is one train/full_finetune.py process with --agreement all and
the seed given; the table has its examples/s (median over the epochs after the first),
wall time from the script's start (after imports) to metrics.json, test accuracy and
macro-F1 (in float32, as every run's figures), the process's peak host memory, and on a
GPU the peak device memory (nvidia-smi, with TF_FORCE_GPU_ALLOW_GROWTH so the figure is
what the run used). Run folders go to --out: rerun with the same --out to resume (a
finished run is reused; the train script refuses a folder made with other flags).
"""
import argparse
import os
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
from common import REPO_ROOT, config, errors, runs  # noqa: E402  (no TensorFlow here: each run is its own process)

TRAIN = os.path.join(REPO_ROOT, "train", "full_finetune.py")


def parse(argv=None):
    p = config.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="distilbert-base-uncased", help="Hub id or local folder (as train scripts)")
    p.add_argument("--data", default="hub", help="Financial PhraseBank folder, zip or 'hub' (as train scripts)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--precisions", default="",
                   help="comma-separated subset of fp32,fp16,bf16 (default: all this device runs well)")
    p.add_argument("--xla", choices=["both", "off", "on"], default="",
                   help="runs without and/or with --xla on (default: both on a GPU, off on a CPU)")
    p.add_argument("--out", default="", help="folder for the run folders (default runs/gpu-check-<time>)")
    p.add_argument("train_flags", nargs=argparse.REMAINDER, help="after --: more flags for every run")
    args = p.parse_args(argv)
    args.train_flags = args.train_flags[1:] if args.train_flags[:1] == ["--"] else args.train_flags
    return args


def nvidia_smi(query: str) -> list:
    """nvidia-smi --query-gpu=QUERY rows, [] without a GPU or a driver that knows the fields."""
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [[x.strip() for x in line.split(",")] for line in out.stdout.splitlines()] if out.returncode == 0 else []


def gpus() -> list:
    """[(name, compute capability or None)] of the NVIDIA GPUs; [] on a CPU. Drivers before
    510 do not know compute_cap: then None, and bf16 runs only if --precisions asks."""
    def capability(text):
        try:
            return float(text)
        except ValueError:  # "[N/A]"
            return None
    rows = nvidia_smi("name,compute_cap")
    if rows:
        return [(name, capability(cap)) for name, cap in rows]
    return [(row[0], None) for row in nvidia_smi("name")]


def device_plan(args, devices) -> list:
    """[(precision, xla)] to run, from the flags and the devices."""
    if args.precisions:
        precisions = [x.strip() for x in args.precisions.split(",") if x.strip()]
        bad = [x for x in precisions if x not in ("fp32", "fp16", "bf16")]
        if bad:
            raise errors.FlagError(f"--precisions {','.join(bad)}: expected some of fp32, fp16, bf16")
    elif devices:
        precisions = ["fp32", "fp16"] + (["bf16"] if all((cap or 0) >= 8.0 for _, cap in devices) else [])
    else:
        precisions = ["fp32", "bf16"]
    xla = args.xla or ("both" if devices else "off")
    return [(p, x) for p in precisions for x in ({"both": ["off", "on"]}.get(xla, [xla]))]


class DeviceMemoryPeak(threading.Thread):
    """Samples nvidia-smi's memory.used (MiB, summed over GPUs) once a second."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak, self.done = 0.0, threading.Event()

    def run(self):
        while not self.done.wait(1.0):
            try:
                self.peak = max(self.peak, sum(float(row[0]) for row in nvidia_smi("memory.used")))
            except ValueError:
                pass


def train(args, run_dir: str, precision: str, xla: str, on_gpu: bool) -> dict:
    """One run as its own process; its metrics.json plus peak host (and device) memory."""
    command = [sys.executable, TRAIN, "--model", args.model, "--data", args.data, "--agreement", "all",
               "--seed", str(args.seed), "--precision", precision, "--xla", xla, *args.train_flags,
               "--run-dir", run_dir]
    host_mb = device_mb = None
    if not runs.finished_by(run_dir, command):
        # not finished, or made by another command: the train script resumes it or refuses it in one line
        env = {**os.environ, **({"TF_FORCE_GPU_ALLOW_GROWTH": "true"} if on_gpu else {})}
        sampler = DeviceMemoryPeak() if on_gpu else None
        if sampler:
            sampler.start()
        try:
            usage = errors.run_child(command, env)
        finally:
            if sampler:
                sampler.done.set()
                device_mb = sampler.peak
        host_mb = usage.ru_maxrss / 1024
    m = runs.read_json(os.path.join(run_dir, runs.METRICS))
    return {"precision": precision, "xla": xla, "examples_per_sec": m["examples_per_sec"],
            "wall_seconds": m["wall_seconds"], "test_accuracy": m["test"]["accuracy"],
            "test_macro_f1": m["test"]["macro_f1"], "peak_host_mb": host_mb, "peak_device_mb": device_mb,
            "run_dir": run_dir}


def table(rows, devices) -> str:
    where = ", ".join(f"{n} (compute {c if c is None else f'{c:g}'})" for n, c in devices) or "CPU"
    out = [f"device: {where}", "",
           "| precision | xla | examples/s | wall s | test accuracy | test macro-F1 | peak host MB | peak device MB |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        mem = lambda v: "reused run" if v is None else f"{v:.0f}"  # noqa: E731
        speed = "-" if r["examples_per_sec"] is None else f"{r['examples_per_sec']:.1f}"  # a one-epoch run
        out.append(f"| {r['precision']} | {r['xla']} | {speed} | {r['wall_seconds']:.0f} | "
                   f"{r['test_accuracy']:.4f} | {r['test_macro_f1']:.4f} | {mem(r['peak_host_mb'])} | "
                   f"{'-' if not devices else mem(r['peak_device_mb'])} |")
    return "\n".join(out)


def main(argv=None):
    args = parse(argv)
    devices = gpus()
    plan = device_plan(args, devices)
    out = args.out or os.path.join("runs", time.strftime("gpu-check-%Y%m%d-%H%M%S"))
    rows = []
    for i, (precision, xla) in enumerate(plan, 1):
        print(f"[{i}/{len(plan)}] {precision}, xla {xla}", flush=True)
        rows.append(train(args, os.path.join(out, f"{precision}-xla-{xla}"), precision, xla, bool(devices)))
    text = table(rows, devices)
    runs.write_text(os.path.join(out, "gpu_check.md"), text + "\n")
    print(text)
    return rows


if __name__ == "__main__":
    errors.run(main)
