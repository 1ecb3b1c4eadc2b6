"""Training speed of `alexnet` at 224 px (bf16 autocast, channels_last, SGD), eager and torch.compile'd.

Each mode is fed two ways, so what data loading costs shows beside what compute costs:
- synthetic: one uint8 batch already on the device, so the steps measure the model alone;
- jpeg: ImageNet-sized JPEGs (about 500x375) decoded and augmented by trainer.data's loader, exactly as
  `alexlabel train` reads them; and that loader alone, with no model.
If the jpeg rows run far below the synthetic ones, the decode workers are the bottleneck, not the GPU.
Prints a table, then the figures as one JSON line (--json FILE also writes them).

    python benchmarks/bench_train.py                         # GPU: 2000 JPEGs, made if missing; no GPU: loader row
    python benchmarks/bench_train.py --device cpu --steps 2 --warmup 1 --batch-size 16 --count 64  # smoke run
"""
import argparse
import itertools
import json
import os
import time

import torch
from make_images import ensure_images

from common.devices import pick_device
from schemas.transform import Preprocess
from trainer.config import TrainConfig
from trainer.data import EpochSampler, loader, train_transform
from trainer.models import build_model
from trainer.train import make_optimizer

HERE = os.path.dirname(os.path.abspath(__file__))
CLASSES = 1000


def synthetic_batches(batch_size: int, size: int, device: torch.device):
    x = torch.randint(0, 256, (batch_size, 3, size, size), dtype=torch.uint8, device=device)
    return itertools.repeat((x, torch.randint(0, CLASSES, (batch_size,), device=device)))


def jpeg_batches(files: list[str], pre: Preprocess, batch_size: int, workers: int):
    """Endless training batches of the JPEGs, epoch after epoch, through trainer.data's loader."""
    sampler = EpochSampler(len(files), 0, batch_size)
    data = loader([(f, i % CLASSES) for i, f in enumerate(files)], train_transform(pre), pre.resize, batch_size,
                  workers, sampler)
    for epoch in itertools.count():
        sampler.set_epoch(epoch)
        for x, y, _ in data:
            yield x, y


def make_step(device: torch.device, pre: Preprocess, compile_model: bool):
    """One training step of a fresh 1000-class alexnet, as trainer.train takes it."""
    model = build_model("alexnet", CLASSES).to(device, memory_format=torch.channels_last)
    if compile_model:
        model.compile()
    optimizer = make_optimizer(TrainConfig(output=""), model)
    criterion = torch.nn.CrossEntropyLoss()

    def step(x, y):
        x = pre.normalize(x.to(device, non_blocking=True)).contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = criterion(model(x), y.to(device, non_blocking=True))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def measure(batches, step, steps: int, warmup: int, device: torch.device) -> dict:
    """images/s over `steps` steps after `warmup` untimed ones (compilation, worker start-up, allocator)."""
    t0 = time.perf_counter()
    for x, y in itertools.islice(batches, warmup):
        step(x, y)
    sync(device)
    t1 = time.perf_counter()
    images = 0
    for x, y in itertools.islice(batches, steps):
        step(x, y)
        images += len(y)
    sync(device)
    seconds = time.perf_counter() - t1
    return {"images_per_second": images / seconds, "ms_per_step": 1000 * seconds / steps, "warmup_s": t1 - t0}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=["auto", "cuda", "cpu"],
                   help="default: the GPU; without one, the loader row alone (alexnet on CPUs takes very long)")
    p.add_argument("--steps", type=int, default=50, help="timed steps per row")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps first")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1), help="JPEG decode processes")
    p.add_argument("--images", default="bench-out/train-jpegs", help="folder of JPEGs, filled when short")
    p.add_argument("--count", type=int, default=2000, help="JPEGs to train on")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    p.add_argument("--json", help="also write the figures here")
    args = p.parse_args()

    device = pick_device(args.device or "auto")
    cpu_only = args.device is None and device.type == "cpu"
    if cpu_only:
        print("no GPU: the model rows are skipped (alexnet training on CPUs takes very long; --device cpu runs them)")
    pre = Preprocess(resize=round(args.image_size * 256 / 224), crop=args.image_size)
    files = ensure_images(args.images, args.count)
    run = dict(steps=args.steps, warmup=args.warmup, device=device)
    rows = [{"feed": "jpeg loader alone", "compile": None,
             **measure(jpeg_batches(files, pre, args.batch_size, args.workers), lambda x, y: None, **run)}]
    for compile_model in [] if cpu_only else [False] + ([] if args.no_compile else [True]):
        step = make_step(device, pre, compile_model)
        rows.append({"feed": "synthetic", "compile": compile_model,
                     **measure(synthetic_batches(args.batch_size, args.image_size, device), step, **run)})
        rows.append({"feed": "jpeg", "compile": compile_model,
                     **measure(jpeg_batches(files, pre, args.batch_size, args.workers), step, **run)})

    print(f"\nalexnet {args.image_size}px, batch {args.batch_size}, bf16 autocast + channels_last, {device}, "
          f"{args.workers} decode workers, {len(files)} JPEGs, {args.steps} timed steps after {args.warmup}")
    print(f"{'feed':<18} {'compile':<8} {'images/s':>10} {'ms/step':>9} {'warmup s':>9}")
    for r in rows:
        print(f"{r['feed']:<18} {'-' if r['compile'] is None else str(r['compile']).lower():<8} "
              f"{r['images_per_second']:>10.1f} {r['ms_per_step']:>9.1f} {r['warmup_s']:>9.1f}")
    report = {"benchmark": "train", "arch": "alexnet", "device": str(device),
              "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
              "torch": torch.__version__, "threads": torch.get_num_threads(),
              **{k: getattr(args, k) for k in ("batch_size", "image_size", "workers", "steps", "warmup")},
              "images": len(files), "rows": rows}
    print(json.dumps(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
