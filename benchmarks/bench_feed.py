"""`make bench-feed`: the GPU feed ceiling, measured without a GPU.

The real labeling job (match, read, decode or header-parse, batching, RunInference, the Parquet sinks, the
accounting) runs in this process on the DirectRunner, with a model whose forward costs nothing: a module that
returns zero logits. Two paths:
  cpu-decode  the CPU decodes and resizes every JPEG, as a CPU-decode GPU worker does;
  gpu-decode  --gpu-decode: JPEGs go to the model still encoded. nvJPEG is stood in for by a decoder that returns
              meta tensors (no data, no work). This machine has no GPU, so the bench lifts the option's
              --device cuda check.
In both, a batch goes "to the GPU" as a copy (the page-locked copy a GPU worker makes) to the meta device, where
the cast and the rest cost nothing, as they cost a GPU worker's CPU nothing: what is measured is the CPU side.
Each run is a process of its own. Each path labels a small and a large set of ImageNet-sized JPEGs, and the rate
is the marginal one between them (the launcher's checkpoint load and the pipeline start cancel):
  per core   one worker in a process pinned to one core (torch then takes one thread): what a core sustains;
  all cores  one worker per core, unpinned, as `alexlabel label` runs by default.
Both give images per CPU-second (user + system time) beside the wall rate. The ceiling of a 16-core GPU worker is
16 x the per-core rate. --profile prints where the time of one pinned large run goes.

Usage: python benchmarks/bench_feed.py [--images 500 3000] [--rounds 3] [--workdir bench-out] [--profile]
"""
import argparse
import contextlib
import cProfile
import json
import os
import pstats
import resource
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import replace

import torch
from bench_label import make_model
from make_images import ensure_images

from beam_pipeline import launch, model_handler
from beam_pipeline.options import LabelOptions
from common.devices import usable_cores

GPU_WORKER_CORES = 16
TARGETS = {"cpu-decode": 400, "gpu-decode": 1000}  # images/s per core


class FreeForward(torch.nn.Module):
    """Zero logits for any batch: a model whose forward costs nothing."""

    def __init__(self, classes: int):
        super().__init__()
        self.classes = classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(x.shape[0], self.classes)


def free_model(real_load):
    def load(checkpoint, device="cpu", precision="auto"):
        classifier = real_load(checkpoint, device, precision)
        return replace(classifier, module=FreeForward(len(classifier.manifest.class_names)))
    return load


def free_decode(images, pre, device):
    """nvJPEG's stand-in: each still-encoded JPEG becomes a meta tensor of the eval size (no pixels, no work)."""
    return [torch.empty(3, pre.crop, pre.crop, dtype=torch.uint8, device="meta") if image.dim() == 1 else image
            for image in images]


def free_send(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The batch to a free device: the host copy that pin_memory() makes, then a meta tensor."""
    return x.clone().to("meta")


class GpuDecodeOnCpu(LabelOptions):
    """--gpu-decode without the --device cuda check, which this GPU-less machine would fail."""

    def validate(self):
        self.gpu_decode = False
        super().validate()
        self.gpu_decode = True
        return self


def label(images_dir: str, checkpoint: str, out: str, path: str, workers: int, profile: str = "") -> dict:
    """One whole launcher run, in this process, with the free model: its wall and CPU seconds."""
    model_handler.load_classifier = free_model(model_handler.load_classifier)
    model_handler.decode_batch = free_decode
    model_handler._send = free_send
    shutil.rmtree(out, ignore_errors=True)
    options = GpuDecodeOnCpu if path == "gpu-decode" else LabelOptions
    opts = options(inputs=[f"{images_dir}/*.jpg"], checkpoint=checkpoint, output=out, workers=workers,
                   max_batch_size=256 if path == "gpu-decode" else 0)
    profiler = cProfile.Profile()
    cpu0, t0 = cpu_seconds(), time.perf_counter()
    with profiler if profile else contextlib.nullcontext():
        row = launch.run(opts)
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
    if profile:
        profiler.dump_stats(profile)
    assert row["labeled"] == row["matched"], row
    return {"images": row["labeled"], "wall_s": wall, "cpu_s": cpu}


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_child(images_dir: str, checkpoint: str, out: str, path: str, pinned: bool, profile: str = "") -> dict:
    """label() in a fresh process: pinned to one core with one worker, or one worker per core."""
    cmd = [sys.executable, __file__, "--child", json.dumps([images_dir, checkpoint, out, path, pinned, profile])]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"failed: {' '.join(cmd)}\n{result.stdout[-2000:]}{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def child(args: str) -> None:
    images_dir, checkpoint, out, path, pinned, profile = json.loads(args)
    if pinned:
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        torch.set_num_threads(1)
    print(json.dumps(label(images_dir, checkpoint, out, path, 1 if pinned else usable_cores(), profile)))


def marginal(small: dict, large: dict) -> dict:
    images = large["images"] - small["images"]
    return {"images_per_s": images / (large["wall_s"] - small["wall_s"]),
            "images_per_cpu_s": images / (large["cpu_s"] - small["cpu_s"])}


def measure(path: str, dirs: tuple[str, str], checkpoint: str, out: str, rounds: int) -> dict:
    """Per core and on all cores, in turns, small then large each round; medians and ranges."""
    runs = {"per_core": [], "all_cores": []}
    for i in range(rounds):
        for name, pinned in (("per_core", True), ("all_cores", False)):
            small, large = (run_child(d, checkpoint, out, path, pinned) for d in dirs)
            runs[name].append(marginal(small, large))
            print(f"{path} round {i + 1} {name}: {runs[name][-1]}", flush=True)
    return {name: {key: {"median": round(statistics.median(r[key] for r in values)),
                         "range": [round(min(r[key] for r in values)), round(max(r[key] for r in values))]}
                   for key in ("images_per_s", "images_per_cpu_s")}
            for name, values in runs.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, nargs=2, default=[500, 3000], metavar=("SMALL", "LARGE"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workdir", default="bench-out")
    ap.add_argument("--profile", action="store_true", help="profile one pinned large run of each path")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child)
    dirs = tuple(os.path.join(args.workdir, f"images-{n}") for n in args.images)
    for directory, n in zip(dirs, args.images, strict=True):
        ensure_images(directory, n)
    _, checkpoint = make_model(args.workdir)
    out = os.path.abspath(os.path.join(args.workdir, "feed-out"))
    if args.profile:
        for path in TARGETS:
            stats = os.path.abspath(os.path.join(args.workdir, f"feed-{path}.prof"))
            run_child(dirs[1], checkpoint, out, path, True, stats)
            print(f"\n== {path}, pinned to one core: where the time goes")
            pstats.Stats(stats).sort_stats("tottime").print_stats(25)
        return
    results = {"cores": usable_cores(), "images": args.images, "rounds": args.rounds}
    for path in TARGETS:
        run_child(dirs[0], checkpoint, out, path, True)  # warm the page cache
        results[path] = measure(path, dirs, checkpoint, out, args.rounds)
        results[path]["gpu_worker_ceiling"] = GPU_WORKER_CORES * results[path]["per_core"]["images_per_s"]["median"]
    print(json.dumps(results, indent=2))
    for path, target in TARGETS.items():
        got, ceiling = results[path]["per_core"]["images_per_s"]["median"], results[path]["gpu_worker_ceiling"]
        print(f"{path}: {got} images/s per core (target >= {target}) {'ok' if got >= target else 'MISSED'}; "
              f"a {GPU_WORKER_CORES}-core GPU worker can be fed {ceiling} images/s")
    with open(os.path.join(args.workdir, "bench_feed.json"), "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
