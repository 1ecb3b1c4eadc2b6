"""bf16 and int8 vs fp32: top-1 agreement of the labeling path on a trained checkpoint (targets: bf16 >= 99.5%,
int8 >= 99%).

Every precision goes through the pipeline's own model handler (AlexNetModelHandler.run_inference) on the
same decoded images, so this measures exactly what `alexlabel label --precision` changes. int8's ranges were
fitted on training images, so its agreement is also given on the images outside IMAGE_DIR/train.

Usage: python benchmarks/bench_precision.py CHECKPOINT IMAGE_DIR [--batch 64]
(`make bench` uses the demo's checkpoint and every image of its sample set.)
"""
import argparse
import glob
import json
import os
import time

from beam_pipeline.decode import ImageFile
from beam_pipeline.model_handler import AlexNetModelHandler
from common.storage import read_bytes
from schemas.checkpoint import load_checkpoint
from schemas.transform import eval_tensor_from_bytes

PRECISIONS = ("fp32", "bf16", "int8")
TARGETS = {"bf16": 0.995, "int8": 0.99}


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
    held_out = [not e.uri.startswith(os.path.join(args.images, "train") + os.sep) for e in examples]
    results = {}
    for precision in PRECISIONS:
        handler = AlexNetModelHandler(args.checkpoint, precision=precision)
        model = handler.load_model()
        t0 = time.perf_counter()
        preds = []
        for i in range(0, len(examples), args.batch):
            preds += [p.inference.indices[0] for p in handler.run_inference(examples[i:i + args.batch], model)]
        results[precision] = {"top1": preds, "images_per_s": len(examples) / (time.perf_counter() - t0),
                              "dtype": str(model.dtype)}
    summary = {"images": len(examples), "held_out": sum(held_out)}
    for precision, target in TARGETS.items():
        same = [a == b for a, b in zip(results["fp32"]["top1"], results[precision]["top1"], strict=True)]
        agree, unseen = sum(same) / len(same), sum(s for s, h in zip(same, held_out, strict=True) if h) / sum(held_out)
        summary[precision] = {"top1_agreement": round(agree, 5), "top1_agreement_held_out": round(unseen, 5)}
        print(f"{precision} vs fp32 top-1 agreement {agree:.2%}, {unseen:.2%} outside train (target >= {target:.1%}) "
              f"{'ok' if min(agree, unseen) >= target else 'MISSED'}")
    for precision, r in results.items():
        summary.setdefault(precision, {}).update({k: round(v, 1) if isinstance(v, float) else v
                                                  for k, v in r.items() if k != "top1"})
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
