"""`make bench-gpu`: labeling speed on a GPU, decode + infer beside infer alone, measured in one run.

On the ImageNet-sized JPEGs and the 1000-class AlexNet of `make bench`, through our own model handler:
  infer alone:          batches already decoded and cropped to uint8 on the CPU: copy to the GPU, forward, top-k
  GPU decode + infer:   batches of JPEG bytes, decoded there with nvJPEG (what --gpu-decode does), then the same
  CPU decode:           the CPU's decode + resize + crop alone, on all cores, the rate --gpu-decode replaces
and end to end, `alexlabel label --device cuda` on the DirectRunner, without and with --gpu-decode, each with
its images/s and peak memory. It also compares the GPU-decoded pixels with the CPU's (color and grayscale
JPEGs) and the top-1 each gets (of a seeded untrained model: a check of the plumbing, not of accuracy).

Usage: python benchmarks/bench_gpu.py [--images 5000] [--batch 256] [--device cuda]
(--device cpu runs the same measurements on a machine without a GPU, to check the script itself.)
"""
import argparse
import io
import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from bench_label import make_model, ours
from make_images import ensure_images
from PIL import Image

from beam_pipeline.decode import ImageFile, eval_tensors_from_jpegs
from beam_pipeline.model_handler import AlexNetModelHandler
from schemas.transform import eval_tensor_from_bytes


def prepared(args: tuple[str, object]) -> torch.Tensor:
    path, pre = args
    with open(path, "rb") as f:
        return eval_tensor_from_bytes(f.read(), pre)[0]


def pixel_agreement(files: list[str], cpu_pixels: list[torch.Tensor], pre, device: torch.device) -> dict:
    """How far the batch decoder's eval tensors are from the CPU path's, on color and grayscale JPEGs."""
    gray = []
    for f in files[:20]:
        buffer = io.BytesIO()
        Image.open(f).convert("L").save(buffer, "JPEG", quality=90)
        gray.append(buffer.getvalue())
    cpu = cpu_pixels + [eval_tensor_from_bytes(g, pre)[0] for g in gray]
    jpegs = [torch.frombuffer(bytearray(Path(f).read_bytes()), dtype=torch.uint8) for f in files]
    jpegs += [eval_tensor_from_bytes(g, pre, keep_jpeg=True)[0] for g in gray]
    on_device = eval_tensors_from_jpegs(jpegs, pre, device)
    diff = torch.stack([(a.cpu().int() - b.int()).abs() for a, b in zip(on_device, cpu, strict=True)])
    return {"images": len(jpegs), "max_level_diff": diff.max().item(),
            "share_off_by_more_than_1": round((diff > 1).float().mean().item(), 5)}


def rate(handler, model, inputs: list[torch.Tensor], batch: int, seconds: float = 10.0) -> tuple[float, list]:
    """Images/s of handler.run_inference over `inputs` in batches (one untimed warm-up batch), and the
    top-1 of the first pass."""
    images = [ImageFile(str(i), pixels=t) for i, t in enumerate(inputs)]
    batches = [images[s:s + batch] for s in range(0, len(images), batch)]
    handler.run_inference(batches[0], model)
    top1 = [r.inference.indices[0] for b in batches for r in handler.run_inference(b, model)]
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for b in batches:
            handler.run_inference(b, model)  # returns lists on the CPU: the GPU's work is done
            n += len(b)
    return n / (time.perf_counter() - t0), top1


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--workdir", default="bench-out")
    args = ap.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    images_dir = os.path.join(args.workdir, f"images-{args.images}")
    files = ensure_images(images_dir, args.images)
    _, checkpoint = make_model(args.workdir)

    handler = AlexNetModelHandler(checkpoint, device=args.device, max_batch_size=args.batch)
    model = handler.load_model()
    pre = model.manifest.preprocess
    with ProcessPoolExecutor(mp_context=multiprocessing.get_context("spawn")) as pool:  # forked torch hangs
        list(pool.map(prepared, [(files[0], pre)] * 4 * (os.cpu_count() or 1)))  # untimed: workers start
        t0 = time.perf_counter()
        pixels = list(pool.map(prepared, [(f, pre) for f in files], chunksize=64))
        cpu_decode = len(files) / (time.perf_counter() - t0)
    jpegs = []
    for f in files:
        with open(f, "rb") as fh:
            jpegs.append(eval_tensor_from_bytes(fh.read(), pre, keep_jpeg=True)[0])
    assert all(j.dim() == 1 for j in jpegs), "every benchmark JPEG should take the GPU-decode path"

    results = {"pixels_gpu_vs_cpu_decode": pixel_agreement(files[:200], pixels[:200], pre, model.device)}
    results |= {"images": len(files), "cores": os.cpu_count(), "batch": args.batch, "device": str(model.device),
               "gpu": torch.cuda.get_device_name() if model.device.type == "cuda" else None}
    results["cpu_decode_images_per_s"] = round(cpu_decode)
    infer, top1 = rate(handler, model, pixels, args.batch)
    decode_infer, gpu_top1 = rate(handler, model, jpegs, args.batch)
    results["infer_alone_images_per_s"] = round(infer)
    results["gpu_decode_and_infer_images_per_s"] = round(decode_infer)
    results["top1_agreement_gpu_vs_cpu_decode"] = sum(a == b for a, b in zip(top1, gpu_top1, strict=True)) / len(top1)
    if model.device.type == "cuda":
        results["gpu_peak_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
    print(json.dumps(results, indent=2), flush=True)
    del model, pixels, jpegs
    torch.cuda.empty_cache()

    for name, extra in (("end_to_end_cpu_decode", []), ("end_to_end_gpu_decode", ["--gpu-decode"])):
        if args.device == "cpu" and extra:
            continue  # --gpu-decode needs a GPU; its chain on the CPU is what the tests run
        results[name] = ours(images_dir, checkpoint, os.path.join(args.workdir, f"gpu-{name}"),
                             ["--device", args.device, "--max-batch-size", str(args.batch), *extra])
        print(name, results[name], flush=True)
    print(json.dumps(results, indent=2))
    with open(os.path.join(args.workdir, "bench_gpu.json"), "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
