"""bf16 vs fp32: top-1 agreement of the labeling path on a trained checkpoint (target >= 99.5%).

Both precisions go through the pipeline's own model handler (AlexNetModelHandler.run_inference) on the
same decoded images, so this measures exactly what `alexlabel label --precision` changes.

Usage: python benchmarks/bench_precision.py CHECKPOINT IMAGE_DIR [--batch 64]
(`make bench` uses the demo's checkpoint and every image of its sample set.)
"""
import argparse
import glob
import json
import time

from beam_pipeline.decode import ImageFile
from beam_pipeline.model_handler import AlexNetModelHandler
from common.storage import read_bytes
from schemas.checkpoint import load_checkpoint
from schemas.transform import eval_tensor_from_bytes


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("images")
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    pre = load_checkpoint(args.checkpoint)[1].preprocess
    files = sorted(glob.glob(f"{args.images}/**/*.jpg", recursive=True))
    examples = []
    for f in files:
        try:
            examples.append(ImageFile(f, pixels=eval_tensor_from_bytes(read_bytes(f), pre)[0]))  # the labeling path
        except OSError:
            continue  # the sample set's deliberately broken files
    results = {}
    for precision in ("fp32", "bf16"):
        handler = AlexNetModelHandler(args.checkpoint, precision=precision)
        model = handler.load_model()
        t0 = time.perf_counter()
        preds = []
        for i in range(0, len(examples), args.batch):
            preds += [p.inference.indices[0] for p in handler.run_inference(examples[i:i + args.batch], model)]
        results[precision] = {"top1": preds, "images_per_s": len(examples) / (time.perf_counter() - t0),
                              "dtype": str(model.dtype)}
    agree = sum(a == b for a, b in zip(results["fp32"]["top1"], results["bf16"]["top1"], strict=True)) / len(examples)
    summary = {"images": len(examples), "top1_agreement": round(agree, 5),
               **{p: {k: v for k, v in r.items() if k != "top1"} for p, r in results.items()}}
    print(json.dumps(summary, indent=2))
    print(f"bf16 vs fp32 top-1 agreement {agree:.2%} (target >= 99.5%) {'ok' if agree >= 0.995 else 'MISSED'}")


if __name__ == "__main__":
    main()
