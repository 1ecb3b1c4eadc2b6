"""`make bench-curation`: how good `alexlabel audit` is, on ground truth this benchmark builds itself. It times
nothing; it runs the real commands (subprocesses) and scores what they wrote.

1. A fresh image set in a temp folder, from images the model never saw: new sample images (the built-in shape
   classes, generated from a seed of their own, not the demo's), and the truth of what each one is:
     originals         --n of them, the classes in turn
     near copies       for a fixed random 25% of the originals, each of sample_data.near_copies' five: requality
                       (JPEG q50), resized (2/3), cropped (center 90%), flipped, text (overlay); a set is an
                       original and its copies
     exact copies      5% of the originals again, byte for byte, under other names
     junk              a few images that fit no class: uniform noise, flat colours, a background without a shape
2. `alexlabel label --input 'DIR/**' --checkpoint CKPT --output OUT --embeddings --probabilities`.
3. A uri,label CSV of the true labels with 10% flipped to another class (fixed seed; junk gets no label), then
   `alexlabel audit OUT --labels that.csv` at its default threshold.
4. Near-duplicates, pair level: a pair is found when the audit puts both images in one near_duplicate or
   exact_duplicate group. Recall and precision over the pairs of the truth sets, recall per transformation
   (original-copy pairs), exact copies found; then the same over thresholds 0.80-0.99 (and 0.995, 0.999) from
   the embeddings table itself (exact cosine similarities of all pairs), for the embeddings, for the pixel
   fingerprints, and for both as the audit pairs them: pairs at or above the threshold, and the audit's sets
   (connected components of those pairs). Pairs that touch a junk image are scored apart: junk is
   no copy. First a check that byte-identical images got the same embedding (else the table is not to be trusted).
5. Label errors: the label_error rows against the flipped set, and the precision-recall curve of the ranking
   the audit scores them by: cleanlab.rank.get_label_quality_scores (self_confidence) on the probabilities
   table and the given labels, computed here the way output_tools/audit.py does.
6. Outliers: how many junk images the outlier rows catch and which other images they flag; each kind's median
   distance by both of the audit's measures (output_tools/outlying.py: to the mean of the model's class, and to
   the 10 nearest fingerprints), where the junk ranks, and the flags over fences beside the audit's.

Targets (the issue): near-duplicates recall >= 0.95 and precision >= 0.95 at the default threshold, exact
duplicates 100%; label errors recall >= 0.8 at precision >= 0.7.

Usage: python benchmarks/bench_curation.py [--n 1000] [--seed 0] [--checkpoint alexlabel-demo/model/model.pt]
                                           [--workers N] [--workdir DIR] [--keep]
"""
import argparse
import csv
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image, ImageFilter
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from alexlabel.sample_data import CLASSES, SIZES, background, jpeg_bytes, near_copies, sample_image  # noqa: E402
from output_tools import neighbors, outlying  # noqa: E402
from output_tools.neighbors import DEFAULT_THRESHOLD, FINGERPRINT_THRESHOLD  # noqa: E402
from schemas.checkpoint import load_checkpoint, refit_advice  # noqa: E402

ALEXLABEL = os.path.join(os.path.dirname(sys.executable), "alexlabel")
COPY_KINDS = ("requality", "resized", "cropped", "flipped", "text")
JUNK_KINDS = ("noise", "flat", "blank")
JUNK_EACH = 3  # a few of each: fewer than the audit's k = 10 neighbours, else a kind is its own cluster
K = 10  # the audit's neighbours (output_tools/audit.py NEIGHBORS)
COPIED, EXACT, FLIPPED = 0.25, 0.05, 0.10  # shares: originals near-copied, originals copied exactly, labels flipped
SEED_OFFSET = 7919  # the demo's sample set is generated from seed 0: these images come from another stream
FENCES = (1.5, 1.7, 2.0, 2.5, 3.0, 4.0)  # outlier fences swept, in IQRs: Tukey's 1.5 and 3, Datalab's 1.7
THRESHOLDS = [*np.round(np.arange(0.80, 0.995, 0.01), 2), 0.995, 0.999]  # the last two: past the issue's range
TARGET_DUP_RECALL = TARGET_DUP_PRECISION = 0.95
TARGET_ERR_RECALL, TARGET_ERR_PRECISION = 0.8, 0.7


# ---------------------------------------------------------------- 1. the image set and its truth

def build_images(folder: str, n: int, seed: int) -> list[dict]:
    """Write the images into `folder`; one record per file: path, kind, truth set (-1: none), class (None: junk)."""
    rng = np.random.default_rng([seed, SEED_OFFSET])
    os.makedirs(folder, exist_ok=True)
    records = []

    def put(name: str, data: bytes, kind: str, group: int, label: str | None) -> None:
        path = os.path.join(folder, name)
        with open(path, "wb") as f:
            f.write(data)
        records.append({"uri": path, "kind": kind, "set": group, "label": label})

    copied = set(rng.choice(n, round(COPIED * n), replace=False).tolist())
    exact = set(rng.choice(n, round(EXACT * n), replace=False).tolist())
    for i in range(n):
        label = CLASSES[i % len(CLASSES)]
        img = sample_image(rng, label)
        data = jpeg_bytes(img)
        group = i if i in copied or i in exact else -1
        put(f"img_{i:05d}.jpg", data, "original", group, label)
        if i in copied:
            for kind, copy in near_copies(img).items():
                put(f"img_{i:05d}_{kind}.jpg", copy, kind, group, label)
        if i in exact:
            put(f"dup_{i:05d}.jpg", data, "exact", group, label)
    for kind in JUNK_KINDS:
        for j in range(JUNK_EACH):
            w, h = SIZES[rng.integers(len(SIZES))]
            if kind == "noise":
                img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
            elif kind == "flat":
                img = Image.new("RGB", (w, h), tuple(int(v) for v in rng.integers(0, 256, 3)))
            else:  # the set's own kind of background, blurred and noised like a sample image, with no shape on it
                img = background(rng, w, h).filter(ImageFilter.GaussianBlur(1.0))
            put(f"junk_{kind}_{j:03d}.jpg", jpeg_bytes(img), f"junk-{kind}", -1, None)
    return records


def write_given_labels(path: str, records: list[dict], seed: int) -> set[str]:
    """The uri,label CSV: every labeled image's true class, 10% of them flipped to another; returns those uris."""
    rng = np.random.default_rng([seed, SEED_OFFSET, 1])
    labeled = [r for r in records if r["label"]]
    flip = set(rng.choice(len(labeled), round(FLIPPED * len(labeled)), replace=False).tolist())
    flipped = set()
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(("uri", "label"))
        for i, r in enumerate(labeled):
            label = r["label"]
            if i in flip:
                label = CLASSES[(CLASSES.index(label) + int(rng.integers(1, len(CLASSES)))) % len(CLASSES)]
                flipped.add(r["uri"])
            r["given"] = label
            out.writerow((r["uri"], label))
    return flipped


# ---------------------------------------------------------------- 2-3. the commands

def run(args: list[str], what: str) -> str:
    t0 = time.perf_counter()
    p = subprocess.run([ALEXLABEL, *args], capture_output=True, text=True)
    if p.returncode:
        sys.exit(f"{what} failed (exit {p.returncode}): alexlabel {' '.join(args)}\n{p.stdout[-3000:]}"
                 f"{p.stderr[-3000:]}")
    print(f"{what}: {time.perf_counter() - t0:.0f} s")
    return p.stdout


def read_table(out: str, table: str) -> pa.Table:
    files = sorted(glob.glob(f"{out}/{table}/*/*.parquet"))
    if not files:
        sys.exit(f"{out} has no {table} table")
    return pa.concat_tables([pq.read_table(f, partitioning=None) for f in files])


def error_counts(out: str) -> dict[str, int]:
    files = glob.glob(f"{out}/errors/*/*.parquet")
    rows = pa.concat_tables([pq.read_table(f, partitioning=None) for f in files]).to_pylist() if files else []
    counts: dict[str, int] = {}
    for r in rows:
        key = f"{r['stage']} {r['error_type']} {r['message'][:160]}"
        counts[key] = counts.get(key, 0) + 1
    return counts


def in_record_order(records: list[dict], at: dict[str, int], rows: pa.Table, column: str) -> np.ndarray:
    """A vector column as float32 [len(records), D], each row at its record's index."""
    lists = rows[column].combine_chunks()
    if lists.null_count:
        sys.exit(f"{lists.null_count} rows have no {column}: label again with this version of alexlabel")
    values = pc.list_flatten(lists).to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(lists), -1)
    out = np.zeros((len(records), values.shape[1]), np.float32)
    out[[at[u] for u in rows["uri"].to_pylist()]] = values
    return out


def all_pairs(vectors: np.ndarray) -> np.ndarray:
    """The exact cosine similarities of all pairs; a zero vector is similar to nothing (0), as in the audit."""
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return unit @ unit.T


# ---------------------------------------------------------------- scoring helpers

def table(headers: list[str], rows: list[list], title: str = "") -> None:
    cells = [[str(c) for c in headers]] + [[fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    if title:
        print(f"\n{title}")
    for k, row in enumerate(cells):
        print("  " + "  ".join(c.rjust(w) if k and i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths,
                                                                                                        strict=True))))
        if not k:
            print("  " + "  ".join("-" * w for w in widths))


def fmt(c) -> str:
    if isinstance(c, float | np.floating):
        return "-" if np.isnan(c) else f"{c:.3f}"
    return str(c)


def ratio(a: int, b: int) -> float:
    return a / b if b else float("nan")


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def pair_keys(a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    return lo.astype(np.int64) * n + hi


def pairs_within(members: dict[int, list[int]], n: int) -> np.ndarray:
    keys = [pair_keys(np.array([i]), np.array([j]), n)[0]
            for m in members.values() for x, i in enumerate(m) for j in m[x + 1:]]
    return np.unique(np.array(keys, np.int64))


# ---------------------------------------------------------------- 4. near-duplicates

def near_duplicates(records: list[dict], at: dict[str, int], signals: dict[str, np.ndarray],
                    issues: list[dict]) -> None:
    """signals: "embedding" and "fingerprint" -> the exact cosine similarities of all pairs."""
    n = len(records)
    kind = np.array([r["kind"] for r in records])
    group = np.array([r["set"] for r in records])
    junk = np.char.startswith(kind.astype(str), "junk")
    # The truth: every pair within a set, and which kind of pair it is (original-copy pairs by the copy's kind).
    members: dict[int, list[int]] = {}
    for i in np.flatnonzero(group >= 0):
        members.setdefault(int(group[i]), []).append(int(i))
    ta, tb, tkind = [], [], []
    for m in members.values():
        for x, i in enumerate(m):
            for j in m[x + 1:]:
                ki, kj = kind[i], kind[j]
                ta.append(i)
                tb.append(j)
                tkind.append(kj if ki == "original" else ki if kj == "original" else "copy-copy")
    ta, tb, tkind = np.array(ta), np.array(tb), np.array(tkind)
    truth = pair_keys(ta, tb, n)

    # What the audit found: the pairs within its near_duplicate and exact_duplicate groups.
    found: dict[str, dict[int, list[int]]] = {"near_duplicate": {}, "exact_duplicate": {}}
    for r in issues:
        if r["issue"] in found:
            found[r["issue"]].setdefault(r["group_id"], []).append(at[r["uri"]])
    predicted = np.union1d(pairs_within(found["near_duplicate"], n), pairs_within(found["exact_duplicate"], n))
    touches_junk = junk[predicted // n] | junk[predicted % n]
    real_pred, junk_pred = predicted[~touches_junk], predicted[touches_junk]
    hit = np.isin(truth, real_pred)
    tp = int(hit.sum())
    recall, precision = ratio(tp, len(truth)), ratio(tp, len(real_pred))
    rows = [["all pairs", len(truth), tp, recall]]
    for k in (*COPY_KINDS, "exact", "copy-copy"):
        sel = tkind == k
        rows.append([f"original-{k}" if k != "copy-copy" else k, int(sel.sum()), int(hit[sel].sum()),
                     ratio(int(hit[sel].sum()), int(sel.sum()))])
    table(["truth pairs", "pairs", "found", "recall"], rows,
          f"near-duplicates at the default thresholds (embeddings {DEFAULT_THRESHOLD}, fingerprints "
          f"{FINGERPRINT_THRESHOLD}; audit groups: near_duplicate + exact_duplicate), recall by pair kind")
    exact_truth = pair_keys(ta[tkind == "exact"], tb[tkind == "exact"], n)
    exact_found = np.isin(exact_truth, pairs_within(found["exact_duplicate"], n)).sum()
    wrong = real_pred[~np.isin(real_pred, truth)]
    groups = found["near_duplicate"]
    sizes = [len(m) for m in groups.values()]
    table(["measure", "value", "target", ""], [
        ["pair recall", recall, f">= {TARGET_DUP_RECALL}", verdict(recall >= TARGET_DUP_RECALL)],
        ["pair precision (pairs of real images)", precision, f">= {TARGET_DUP_PRECISION}",
         verdict(precision >= TARGET_DUP_PRECISION)],
        ["exact duplicates found", f"{exact_found}/{len(exact_truth)}", "100%",
         verdict(exact_found == len(exact_truth))],
        ["pairs found / of them wrong", f"{len(real_pred)} / {len(wrong)}", "", ""],
        ["near_duplicate sets (largest)", f"{len(groups)} ({max(sizes, default=0)})",
         f"truth: {len(members)} sets", ""],
        ["pairs found that touch junk", len(junk_pred), "", ""],
    ], "near-duplicates at the default threshold: the targets")
    if len(wrong):
        show = [[records[k // n]["uri"].rsplit("/", 1)[1], records[k % n]["uri"].rsplit("/", 1)[1],
                 *(float(sims[k // n, k % n]) for sims in signals.values())] for k in wrong[:8]]
        table(["wrong pair", "", *signals], show, f"some of the {len(wrong)} wrong pairs, their cosines")

    # The same from the vectors themselves, all pairs exactly, over thresholds.
    truth_pairs = TruthPairs(ta, tb, tkind, truth, junk)
    thresholds = {"embedding": DEFAULT_THRESHOLD, "fingerprint": FINGERPRINT_THRESHOLD}
    for signal, sims in signals.items():
        similarities(records, truth_pairs, signal, sims, thresholds[signal])
        sweep(truth_pairs, signal, lambda t, sims=sims: sims >= t)
    at_default = signals["embedding"] >= DEFAULT_THRESHOLD
    sweep(truth_pairs, f"embeddings at {DEFAULT_THRESHOLD} or fingerprints at the threshold (as the audit)",
          lambda t: at_default | (signals["fingerprint"] >= t))


@dataclass
class TruthPairs:
    a: np.ndarray      # the pairs of the truth sets, a < b
    b: np.ndarray
    kind: np.ndarray   # original-<copy kind> by the copy's kind, "exact" or "copy-copy"
    keys: np.ndarray   # pair_keys(a, b, n)
    junk: np.ndarray   # bool [n]: the image is junk


def similarities(records: list[dict], truth: TruthPairs, signal: str, sims: np.ndarray, threshold: float) -> None:
    """The cosine similarities of the truth pairs by kind, and of distinct images (junk left out)."""
    n = len(records)
    iu = np.triu_indices(n, 1)
    real_pair = ~(truth.junk[iu[0]] | truth.junk[iu[1]])
    a, b = iu[0][real_pair], iu[1][real_pair]
    upper = sims[a, b]
    negative = ~np.isin(pair_keys(a, b, n), truth.keys)
    same_class = np.array([r["label"] for r in records], object)
    same_class = same_class[a] == same_class[b]
    distinct = [("distinct images, same class", upper[negative & same_class]),
                ("distinct images, other class", upper[negative & ~same_class])]
    truth_sims = sims[truth.a, truth.b]
    table(["pairs", "count", "min", "p5", "median", "p95", "max", f">= {threshold}"],
          [[f"original-{k}" if k != "copy-copy" else k, int((truth.kind == k).sum()),
            *quantiles(truth_sims[truth.kind == k], threshold)] for k in (*COPY_KINDS, "exact", "copy-copy")]
          + [[name, len(x), *quantiles(x, threshold)] for name, x in distinct],
          f"{signal}s: cosine similarity of the truth pairs and of distinct images (exact, all pairs; junk left out)")


def sweep(truth: TruthPairs, what: str, close) -> None:
    """Precision and recall over THRESHOLDS of the pairs `close(threshold)` (bool [n, n]) finds, and of the sets
    they join into (connected components, as the audit groups them), with the sets' recall per transformation."""
    n = len(truth.junk)
    real = ~(truth.junk[:, None] | truth.junk[None])
    rows = []
    for t in THRESHOLDS:
        pairs = np.triu(close(t), 1)
        found_truth = int(pairs[truth.a, truth.b].sum())
        pairs_p, pairs_r = ratio(found_truth, int((pairs & real).sum())), ratio(found_truth, len(truth.keys))
        comp = components(pairs, n)
        same = comp[truth.a] == comp[truth.b]
        counts = np.bincount(comp[~truth.junk])
        sets_p = ratio(int(same.sum()), int((counts * (counts - 1) // 2).sum()))
        sets_r = ratio(int(same.sum()), len(truth.keys))
        per_kind = [ratio(int(same[truth.kind == k].sum()), int((truth.kind == k).sum())) for k in COPY_KINDS]
        name = f"{t:.3f}" if t > 0.99 else f"{t:.2f}"
        rows.append([name, pairs_p, pairs_r, f1(pairs_p, pairs_r), sets_p, sets_r, f1(sets_p, sets_r),
                     *per_kind])
    table(["threshold", "pairs P", "pairs R", "pairs F1", "sets P", "sets R", "sets F1",
           *[f"R {k}" for k in COPY_KINDS]], rows, f"precision (P) and recall (R) over thresholds, {what}")
    best = max(rows, key=lambda r: (np.nan_to_num(r[6], nan=-1), r[0]))
    best_pairs = max(rows, key=lambda r: (np.nan_to_num(r[3], nan=-1), r[0]))
    meets = [r[0] for r in rows if r[4] >= TARGET_DUP_PRECISION and r[5] >= TARGET_DUP_RECALL]
    print(f"best threshold by the sets' F1 (what the audit reports): {best[0]} (P {best[4]:.3f}, R {best[5]:.3f}); "
          f"by the pairs' F1: {best_pairs[0]} (P {best_pairs[1]:.3f}, R {best_pairs[2]:.3f}); thresholds meeting "
          f"both targets (sets): {', '.join(meets) if meets else 'none'}")


def check_embeddings(records: list[dict], emb: np.ndarray) -> None:
    """Byte-identical images must have the same embedding: where they do not, the embeddings table does not
    describe its uris, and every figure below measures that, not the audit."""
    pairs = [(i, j) for i, r in enumerate(records) if r["kind"] == "exact"
             for j, s in enumerate(records) if s["kind"] == "original" and s["set"] == r["set"]]
    differ = [(i, j) for i, j in pairs if cosine(emb, i, j) < 0.999]
    print(f"\nembeddings check: {len(pairs) - len(differ)}/{len(pairs)} byte-identical pairs have the same embedding"
          + ("" if not differ else
             f"\nWARNING: {len(differ)} byte-identical pairs have different embeddings (cosine as low as "
             f"{min(cosine(emb, i, j) for i, j in differ):.3f}): the embeddings table gives images embeddings "
             "of other images, so the near-duplicate and outlier figures below are not the audit's own quality "
             "(--workers 1 measures the audit alone)"))


def cosine(emb: np.ndarray, i: int, j: int) -> float:
    a, b = emb[i], emb[j]
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))


def quantiles(x: np.ndarray, threshold: float) -> list:
    """min, p5, median, p95, max, and the share at or above the threshold."""
    if not len(x):
        return [float("nan")] * 6
    return [*(float(v) for v in np.percentile(x, [0, 5, 50, 95, 100])), f"{(x >= threshold).mean():.1%}"]


def f1(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p + r > 0 else float("nan")


def components(pairs: np.ndarray, n: int) -> np.ndarray:
    a, b = np.nonzero(pairs)
    graph = coo_matrix((np.ones(len(a), np.int8), (a, b)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


# ---------------------------------------------------------------- 5. label errors

def label_errors(records: list[dict], at: dict[str, int], flipped: set[str], probs: np.ndarray,
                 class_names: list[str], issues: list[dict]) -> None:
    from cleanlab.rank import get_label_quality_scores

    labeled = [r for r in records if r.get("given")]
    rows_at = np.array([at[r["uri"]] for r in labeled])
    index = {c: i for i, c in enumerate(class_names)}
    given = np.array([index[r["given"]] for r in labeled])
    is_flipped = np.array([r["uri"] in flipped for r in labeled])
    p = probs[rows_at]
    classes = np.unique(given)  # as the audit: the classes given, renormalized
    p = p[:, classes] / np.maximum(p[:, classes].sum(1, keepdims=True), 1e-12)
    dense = np.searchsorted(classes, given)
    quality = get_label_quality_scores(dense, p, method="self_confidence")
    model_wrong = np.array([class_names[classes[k]] != r["label"] for k, r in zip(p.argmax(1), labeled,
                                                                                   strict=True)])

    flagged = {r["uri"]: r for r in issues if r["issue"] == "label_error"}
    is_flagged = np.array([r["uri"] in flagged for r in labeled])
    tp = int((is_flagged & is_flipped).sum())
    recall, precision = ratio(tp, int(is_flipped.sum())), ratio(tp, int(is_flagged.sum()))
    fixed = sum(flagged[r["uri"]]["suggested_label"] == r["label"] for r in labeled if r["uri"] in flagged
                and r["uri"] in flipped)
    table(["measure", "value"], [
        ["labeled images / flipped", f"{len(labeled)} / {int(is_flipped.sum())}"],
        ["model top-1 wrong on the true label", f"{int(model_wrong.sum())} ({model_wrong.mean():.1%})"],
        ["label_error rows", int(is_flagged.sum())],
        ["of them flipped (true positives)", tp],
        ["recall", recall], ["precision", precision],
        ["suggested label = the true one, of the true positives", f"{fixed}/{tp}"],
        ["false positives where the model is wrong", int((is_flagged & ~is_flipped & model_wrong).sum())],
        ["flipped but missed, the model agreeing with the flip",
         int((~is_flagged & is_flipped & (p.argmax(1) == dense)).sum())],
    ], "label errors: the audit's label_error rows against the flipped labels")

    # The ranking the audit scores rows by: 1 - self_confidence, computed here from the probabilities table.
    scores = 1 - quality
    mismatch = [abs(flagged[r["uri"]]["score"] - scores[k]) for k, r in enumerate(labeled) if r["uri"] in flagged]
    if mismatch and max(mismatch) > 1e-3:
        print(f"NOTE: the label_error scores differ from 1 - self_confidence by up to {max(mismatch):.4f}")
    order = np.argsort(-scores, kind="stable")
    hits = np.cumsum(is_flipped[order])
    ranks = np.arange(1, len(order) + 1)
    prec, rec = hits / ranks, hits / max(int(is_flipped.sum()), 1)
    rows = []
    for want in (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 1.0):
        k = int(np.searchsorted(rec, want - 1e-9))
        if k < len(order):
            rows.append([f"{want:.2f}", int(ranks[k]), float(prec[k]), f"{quality[order[k]]:.1e}"])
    table(["recall", "top rows", "precision", "p(given) <="], rows,
          "label errors: precision-recall over the ranking (score = 1 - cleanlab self_confidence, i.e. the given "
          "label's probability, computed here from the probabilities table as the audit computes its scores)")
    ok = prec >= TARGET_ERR_PRECISION
    best = float(rec[ok].max()) if ok.any() else 0.0
    print(f"recall at precision >= {TARGET_ERR_PRECISION}: ranking {best:.3f}, the audit's rows {recall:.3f} at "
          f"{precision:.3f} (target recall >= {TARGET_ERR_RECALL}): ranking "
          f"{verdict(best >= TARGET_ERR_RECALL)}, audit rows "
          f"{verdict(recall >= TARGET_ERR_RECALL and precision >= TARGET_ERR_PRECISION)}")


# ---------------------------------------------------------------- 6. outliers

def outliers(records: list[dict], emb: np.ndarray, prints: np.ndarray, top1: np.ndarray, issues: list[dict]) -> None:
    """The outlier rows by kind of image, beside each kind's median of both measures (computed here by
    output_tools/outlying.py from the tables, as the audit computes them), how far past the upper quartile the junk
    ranks, and the flags at other fences than the audit's."""
    out = {r["uri"]: r for r in issues if r["issue"] == "outlier"}
    low = {r["uri"] for r in issues if r["issue"] == "low_confidence"}
    found = outlying.distances(emb, top1, neighbors.nearest(prints, K)[0])
    past, furthest = outlying.furthest(found)
    kinds = np.array([r["kind"] for r in records])
    junk = np.char.startswith(kinds.astype(str), "junk")
    rows = []
    for kind in [f"junk-{k}" for k in JUNK_KINDS] + ["original", *COPY_KINDS, "exact"]:
        of = np.flatnonzero(kinds == kind)
        flagged = sum(records[i]["uri"] in out for i in of)
        medians = [float(np.nanmedian(found[m][of])) for m in found] + [float(np.median(past[m][of])) for m in found]
        rows.append([kind, len(of), flagged, ratio(flagged, len(of)), *medians,
                     sum(records[i]["uri"] in low for i in of)])
    caught = sum(records[i]["uri"] in out for i in np.flatnonzero(junk))
    table(["images", "count", "outlier", "share", *(f"{m} dist" for m in found), *(f"{m} IQRs" for m in found),
           "low_confidence"], rows,
          f"outliers: {len(out)} outlier rows; junk caught {caught}/{junk.sum()}, other images flagged "
          f"{len(out) - caught}; dist = a measure's median distance, IQRs = how far past the upper quartile (the "
          f"audit's fence: {outlying.FENCE})")
    rank = np.argsort(np.argsort(-furthest))
    print(f"junk ranked by the furthest of the two measures (0 = the most outlying of {len(records)}): "
          f"{sorted(rank[junk].tolist())}")
    sweep = []
    for fence in FENCES:
        flags = furthest > fence
        hit = int((flags & junk).sum())
        sweep.append([f"{fence}{' *' if fence == outlying.FENCE else ''}", int(flags.sum()), hit,
                      ratio(hit, flags.sum()), ratio(hit, junk.sum()),
                      *(f"{int((p > fence).sum())} ({int(((p > fence) & junk).sum())})" for p in past.values())])
    table(["fence (IQRs)", "flagged", "junk", "precision", "recall", *(f"by {m} (junk)" for m in found)], sweep,
          "outliers over fences (* the audit's)")


# ---------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000, help="originals (default 1000: about 2,300 images in all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--checkpoint", default="alexlabel-demo/model/model.pt")
    ap.add_argument("--workers", type=int, help="passed to `alexlabel label --workers` (default: label's own)")
    ap.add_argument("--workdir", help="where to build the set and the output (default: a temp folder, removed)")
    ap.add_argument("--keep", action="store_true", help="keep the temp folder and say where it is")
    args = ap.parse_args()
    if not os.path.exists(args.checkpoint):
        sys.exit(f"{args.checkpoint} does not exist; train one first (`alexlabel demo`)")
    if not load_checkpoint(args.checkpoint)[1].embedding:
        sys.exit(f"{args.checkpoint} has no embedding projection for `label --embeddings`; fit one with "
                 f"`{refit_advice(args.checkpoint)}`")
    work = os.path.abspath(args.workdir) if args.workdir else tempfile.mkdtemp(prefix="bench-curation-")
    try:
        measure(args, work)
    finally:
        if args.keep or args.workdir:
            print(f"\nkept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def measure(args, work: str) -> None:
    t0 = time.perf_counter()
    images, out, labels_csv = (os.path.join(work, d) for d in ("images", "out", "given_labels.csv"))
    shutil.rmtree(images, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    records = build_images(images, args.n, args.seed)
    flipped = write_given_labels(labels_csv, records, args.seed)
    count = {k: sum(r["kind"] == k for r in records) for k in dict.fromkeys(r["kind"] for r in records)}
    print(f"{len(records)} images in {images}: {', '.join(f'{v} {k}' for k, v in count.items())}; "
          f"{len(flipped)} of {sum(bool(r['label']) for r in records)} given labels flipped")
    run(["label", "--input", f"{images}/**", "--checkpoint", args.checkpoint, "--output", out, "--embeddings",
         "--probabilities", *(["--workers", str(args.workers)] if args.workers else [])], "label")
    summary = run(["audit", out, "--labels", labels_csv], "audit")
    print(summary.rstrip())

    labels = read_table(out, "labels")
    emb_table, prob_table = read_table(out, "embeddings"), read_table(out, "probabilities")
    (issues_file,) = glob.glob(f"{out}/issues/*/*.parquet")
    issues = pq.read_table(issues_file, partitioning=None).to_pylist()
    at = {r["uri"]: i for i, r in enumerate(records)}
    missing = set(at) - set(labels["uri"].to_pylist())
    if missing:
        errors = [f"{k}: {v} images" for k, v in error_counts(out).items()]
        sys.exit(f"{len(missing)} images have no label row, e.g. {sorted(missing)[:2]}; the errors table says:\n  "
                 + "\n  ".join(errors or ["nothing"]) + "\n(infer errors from a shared model: try --workers 1)")
    emb, prints = (in_record_order(records, at, emb_table, column) for column in ("embedding", "fingerprint"))
    probs = in_record_order(records, at, prob_table, "probabilities")
    names = {}
    for idx, lab in zip(pc.list_flatten(labels["topk_indices"]).to_pylist(),
                        pc.list_flatten(labels["topk_labels"]).to_pylist(), strict=True):
        names[idx] = lab
    class_names = [names.get(i, "") for i in range(probs.shape[1])]

    check_embeddings(records, emb)
    signals = {"embedding": all_pairs(emb), "fingerprint": all_pairs(prints)}
    near_duplicates(records, at, signals, issues)
    label_errors(records, at, flipped, probs, class_names, issues)
    classes = np.zeros(len(records), np.int64)  # the model's top-1, in record order
    top1 = pc.list_element(labels["topk_indices"], 0).to_numpy(zero_copy_only=False)
    classes[[at[u] for u in labels["uri"].to_pylist()]] = top1
    outliers(records, emb, prints, classes, issues)
    print(f"\nbench-curation done in {time.perf_counter() - t0:.0f} s ({len(records)} images, embedding dim "
          f"{emb.shape[1]}, checkpoint {args.checkpoint})")


if __name__ == "__main__":
    main()
