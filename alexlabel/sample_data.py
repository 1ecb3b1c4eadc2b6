"""The built-in sample image set: photo-like JPEGs of eight shape classes, generated from a seed.

Each image is a few hundred pixels a side: a smooth, noisy background (like a blurred photo) with one
coloured shape whose kind is the class. Layout:

    DIR/train/<class>/*.jpg   DIR/val/<class>/*.jpg   DIR/bucket/*.jpg (unlabeled, plus broken files)
    DIR/bucket_truth.csv      (uri,label) for the bucket's good images, uris relative to DIR
"""
import csv
import io
import math
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageOps

CLASSES = ("circle", "cross", "diamond", "ring", "square", "star", "stripes", "triangle")
SIZES = ((320, 240), (240, 320), (400, 300), (300, 300))


def background(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """Three sine plaids: sin(ax + by + p) = sin(ax)cos(by + p) + cos(ax)sin(by + p), as outer products."""
    x, y = np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32)
    base = np.empty((h, w, 3), np.float32)
    for c in range(3):
        a, b, p = rng.uniform(-1, 1, 3)
        ax, by = a * x / 60, b * y / 45 + p * 6
        base[..., c] = np.outer(np.cos(by), np.sin(ax)) + np.outer(np.sin(by), np.cos(ax))
    return Image.fromarray((128 + 60 * base).astype(np.uint8))


def _polygon(cx, cy, r, n, rot, inner=None):
    pts = []
    for i in range(n * (2 if inner else 1)):
        rad = inner * r if inner and i % 2 else r
        a = rot + math.pi * 2 * i / (n * (2 if inner else 1))
        pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
    return pts


def draw_shape(d: ImageDraw.ImageDraw, kind: str, cx: float, cy: float, r: float, rot: float, colour) -> None:
    if kind == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif kind == "ring":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], outline=colour, width=max(3, int(r / 4)))
    elif kind == "square":
        d.polygon(_polygon(cx, cy, r, 4, rot + math.pi / 4), fill=colour)
    elif kind == "diamond":
        d.polygon([(cx, cy - r), (cx + 0.6 * r, cy), (cx, cy + r), (cx - 0.6 * r, cy)], fill=colour)
    elif kind == "triangle":
        d.polygon(_polygon(cx, cy, r, 3, rot - math.pi / 2), fill=colour)
    elif kind == "star":
        d.polygon(_polygon(cx, cy, r, 5, rot - math.pi / 2, inner=0.42), fill=colour)
    elif kind == "cross":
        t = r / 3
        d.rectangle([cx - r, cy - t, cx + r, cy + t], fill=colour)
        d.rectangle([cx - t, cy - r, cx + t, cy + r], fill=colour)
    elif kind == "stripes":
        for k in range(-2, 3):
            y = cy + k * r / 2.5
            d.rectangle([cx - r, y - r / 10, cx + r, y + r / 10], fill=colour)
    else:
        raise ValueError(f"unknown shape {kind!r}")


def sample_image(rng: np.random.Generator, kind: str) -> Image.Image:
    w, h = SIZES[rng.integers(len(SIZES))]
    img = background(rng, w, h)
    d = ImageDraw.Draw(img)
    short = min(w, h)
    r = short * rng.uniform(0.22, 0.32)
    cx, cy = w / 2 + rng.uniform(-0.1, 0.1) * short, h / 2 + rng.uniform(-0.1, 0.1) * short
    behind = np.asarray(img)[int(cy), int(cx)].astype(int)
    colour = tuple(int(v) for v in (behind + 128 + rng.integers(-40, 41, 3)) % 256)  # stands out from behind
    draw_shape(d, kind, cx, cy, r, rng.uniform(-0.3, 0.3), colour)
    img = img.filter(ImageFilter.GaussianBlur(1.0))
    noisy = np.asarray(img).astype(np.int16) + rng.integers(-8, 9, (h, w, 3), dtype=np.int16)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def jpeg_bytes(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def near_copies(img: Image.Image) -> dict[str, bytes]:
    """What a photo goes through on its way back into a dataset, each as a JPEG: the ground truth that the
    audit's near-duplicate pass is measured on (tests, benchmarks/bench_curation.py)."""
    w, h = img.size
    overlay = img.copy()
    ImageDraw.Draw(overlay).text((w // 20, h - h // 8), "(c) alexlabel 2026", fill=(255, 255, 255))
    return {"requality": jpeg_bytes(img, quality=50),
            "resized": jpeg_bytes(img.resize((w * 2 // 3, h * 2 // 3), Image.Resampling.BILINEAR)),
            "cropped": jpeg_bytes(img.crop((w // 20, h // 20, w - w // 20, h - h // 20))),  # center 90%
            "flipped": jpeg_bytes(ImageOps.mirror(img)),
            "text": jpeg_bytes(overlay)}


def broken_files(rng: np.random.Generator) -> dict[str, bytes]:
    """Files that must land in the errors table: empty, truncated JPEG, random bytes, HTML as .jpg."""
    good = jpeg_bytes(sample_image(rng, CLASSES[0]))
    return {
        "broken_empty.jpg": b"",
        "broken_truncated.jpg": good[: len(good) * 3 // 10],
        "broken_random.png": rng.bytes(4096),
        "broken_html.jpg": b"<!doctype html><html><body>Not Found</body></html>\n",
    }


def write_sample_data(root: str, seed: int = 0, train_per_class: int = 80, val_per_class: int = 25,
                      bucket_size: int = 120) -> dict[str, int]:
    """Write the sample set under `root` (a local directory); returns the counts written."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", train_per_class), ("val", val_per_class)):
        for kind in CLASSES:
            os.makedirs(os.path.join(root, split, kind), exist_ok=True)
            for i in range(n):
                _write(os.path.join(root, split, kind, f"{kind}_{i:04d}.jpg"), jpeg_bytes(sample_image(rng, kind)))
    os.makedirs(os.path.join(root, "bucket"), exist_ok=True)
    truth = []
    for i in range(bucket_size):
        kind = CLASSES[rng.integers(len(CLASSES))]
        name = f"bucket/img_{i:05d}.jpg"
        _write(os.path.join(root, name), jpeg_bytes(sample_image(rng, kind), quality=int(rng.integers(80, 95))))
        truth.append((name, kind))
    broken = broken_files(rng)
    for name, data in broken.items():
        _write(os.path.join(root, "bucket", name), data)
    with open(os.path.join(root, "bucket_truth.csv"), "w", newline="") as f:
        csv.writer(f).writerows([("uri", "label"), *truth])
    return {"classes": len(CLASSES), "train": train_per_class * len(CLASSES), "val": val_per_class * len(CLASSES),
            "bucket": bucket_size, "broken": len(broken)}


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
