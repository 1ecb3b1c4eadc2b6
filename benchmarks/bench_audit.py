"""`make bench-audit`: the nearest-neighbour pass of `alexlabel audit` over 1 million embeddings (targets: under
10 minutes, peak memory under 4 GB, on the machine it runs on), its near-duplicate recall and precision, and exact
search beside it.

1. Embeddings that look like real ones: 1,000 classes of uneven size in 50 families, each image its class centre
   plus a spread in a 16-dimensional class subspace plus a little noise everywhere (so neighbours within a class
   are much closer than random pairs, as in a CNN's embedding), 0.1% far-off images, and the truth: 1.5% of the
   images have 1-3 near copies at cosine 0.95-0.995, 0.1% an exact copy (same bytes, same content_sha256).
   Each image's pixel fingerprint (beam_pipeline/fingerprint.py, 105 floats) is its embedding through a fixed random
   projection, so a copy is close in both; how well real fingerprints separate copies is bench_curation.py's to
   measure, this one times the pass over them. Written as a real output folder: labels, embeddings and runs
   tables, schemas/tables.py, the pipeline's layout.
2. The pass as the audit runs it (neighbors.nearest over the embeddings and over the fingerprints, the sets of
   their pairs, the outlier measures of output_tools/outlying.py) in a fresh process: wall time and peak RSS (VmHWM).
3. Exact search (IndexFlatIP) for a sample of the images against all of them: the approximate index's recall, and
   the exact all-vs-all cost, extrapolated from the sample (linear in the queries). A sample of queries against
   all n, rather than all-vs-all within a 100k subsample, so the recall is that of the pass as run at n, for the
   same cost (5,000 x 1M = 100k x 50k pairs).
4. The whole `alexlabel audit OUT` command, timed as a subprocess, once the command exists.

Usage: python benchmarks/bench_audit.py [--n 1000000] [--dim 128] [--k 10] [--exact-queries 5000]
                                        [--workdir bench-out] [--fresh]
"""
import argparse
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from beam_pipeline.fingerprint import DIM as FINGERPRINT_DIM  # noqa: E402
from output_tools import neighbors, outlying  # noqa: E402
from schemas.tables import TABLES  # noqa: E402

MODEL, RUN = "0123456789ab", "20250101T000000Z-bench"
CLASSES = [f"n{i:08d}" for i in range(1000)]  # ImageNet's synset ids look like this
FAMILIES, RANK = 50, 16  # class families (similar classes), dimensions of a class's own spread
SPREAD, NOISE = 0.85, 0.06  # squared length of the class spread and of the isotropic noise (the centre's is 1)
COPIED, EXACT, FAR = 0.015, 0.001, 0.001  # shares of the images: near-copied originals, exact copies, far-off
COPY_COS = (0.95, 0.995)
TARGET_S, TARGET_MIB = 600, 4096
ALEXLABEL = os.path.join(os.path.dirname(sys.executable), "alexlabel")


def embeddings(n: int, dim: int, seed: int = 0) -> dict[str, np.ndarray]:
    """n float16 embeddings, their class, their injected near-duplicate set (-1: none), whether they are far off,
    and the index of the image whose bytes they are (themselves, but for exact copies)."""
    rng = np.random.default_rng(seed)
    copies_of = rng.integers(1, 4, int(COPIED * n))  # originals' copy counts
    n_exact, n_far = int(EXACT * n), int(FAR * n)
    n_base = n - copies_of.sum() - n_exact
    where = rng.permutation(n)  # the position in the table of each generated image: copies are not at the end
    base, copies, exact = where[:n_base], where[n_base:n_base + copies_of.sum()], where[n_base + copies_of.sum():]

    families = rng.standard_normal((FAMILIES, dim))
    centres = 0.6 * families[np.arange(len(CLASSES)) % FAMILIES] + 0.8 * rng.standard_normal((len(CLASSES), dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    share = rng.lognormal(0, 0.5, len(CLASSES))
    cls = np.empty(n, np.int32)
    cls[base] = rng.choice(len(CLASSES), n_base, p=share / share.sum())
    vectors = np.empty((n, dim), np.float16)
    order = base[np.argsort(cls[base], kind="stable")]
    bounds = np.searchsorted(cls[order], np.arange(len(CLASSES) + 1))
    for c in range(len(CLASSES)):
        rows = order[bounds[c]:bounds[c + 1]]
        basis = rng.standard_normal((RANK, dim)) * np.sqrt(SPREAD / (RANK * dim))
        own = rng.standard_normal((len(rows), RANK)) @ basis * rng.lognormal(0, 0.2, (len(rows), 1))
        vectors[rows] = centres[c] + own + rng.standard_normal((len(rows), dim)) * np.sqrt(NOISE / dim)
    far = rng.choice(base, n_far, replace=False)
    vectors[far] = rng.standard_normal((n_far, dim)) * np.sqrt(1 + SPREAD + NOISE) / np.sqrt(dim)

    group = np.full(n, -1, np.int64)
    sources = rng.choice(np.setdiff1d(base, far), len(copies_of) + n_exact, replace=False)
    originals, exact_sources = sources[:len(copies_of)], sources[len(copies_of):]
    of = np.repeat(originals, copies_of)  # each copy's original
    group[originals] = np.arange(len(originals))
    group[copies] = group[of]
    cls[copies] = cls[of]
    u = vectors[of].astype(np.float32)
    length = np.linalg.norm(u, axis=1, keepdims=True)
    u /= length
    w = rng.standard_normal(u.shape).astype(np.float32)
    w -= (w * u).sum(axis=1, keepdims=True) * u
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    cos = rng.uniform(*COPY_COS, (len(of), 1)).astype(np.float32)
    vectors[copies] = (cos * u + np.sqrt(1 - cos ** 2) * w) * length * rng.uniform(0.9, 1.1, (len(of), 1))

    vectors[exact] = vectors[exact_sources]
    cls[exact] = cls[exact_sources]
    group[exact_sources] = group[exact] = len(originals) + np.arange(n_exact)
    bytes_of = np.arange(n)
    bytes_of[exact] = exact_sources
    is_far = np.zeros(n, bool)
    is_far[far] = True
    return {"vectors": vectors, "cls": cls, "group": group, "far": is_far, "bytes_of": bytes_of}


def fingerprints_of(vectors: np.ndarray, seed: int = 0) -> np.ndarray:
    """float16 [n, FINGERPRINT_DIM]: the vectors through one random orthonormal projection, a block at a time."""
    basis = np.linalg.qr(np.random.default_rng(seed).standard_normal((vectors.shape[1], FINGERPRINT_DIM)))[0]
    out = np.empty((len(vectors), FINGERPRINT_DIM), np.float16)
    for lo in range(0, len(vectors), neighbors.BATCH):
        out[lo:lo + neighbors.BATCH] = neighbors.unit(vectors[lo:lo + neighbors.BATCH]) @ basis
    return out


def list_column(matrix: np.ndarray) -> pa.ListArray:
    n, dim = matrix.shape
    return pa.ListArray.from_arrays(pa.array(np.arange(0, dim * n + 1, dim, dtype=np.int32)), pa.array(matrix.ravel()))


def write_output(out: str, data: dict[str, np.ndarray], seed: int = 0) -> None:
    """labels, embeddings and runs rows for the images, laid out as beam_pipeline/write.py does."""
    rng = np.random.default_rng(seed)
    vectors, cls = data["vectors"], data["cls"]
    n, dim = vectors.shape
    names = np.array(CLASSES, dtype=object)
    sha = np.array([hashlib.sha256(int(i).to_bytes(8, "little")).hexdigest() for i in data["bytes_of"]], object)
    uri = [f"gs://bench-bucket/train/{CLASSES[c]}/{CLASSES[c]}_{i}.JPEG" for i, c in enumerate(cls)]
    # The model: right 93% of the time, else a class of the same family; sure when right, less when wrong.
    right = rng.random(n) < 0.93
    wrong = (cls + FAMILIES * rng.integers(1, len(CLASSES) // FAMILIES, n)) % len(CLASSES)
    top = np.stack([np.where(right, cls, wrong), rng.integers(0, len(CLASSES), n), rng.integers(0, len(CLASSES), n)], 1)
    top1 = np.where(right, rng.beta(8, 2, n), rng.beta(3, 4, n)).astype(np.float32)
    top2 = np.minimum(top1, (1 - top1) * rng.uniform(0.5, 1, n).astype(np.float32))
    top3 = np.minimum(top2, (1 - top1 - top2) * rng.uniform(0, 1, n).astype(np.float32))
    conf = np.stack([top1, top2, top3], 1)
    offsets = pa.array(np.arange(0, 3 * n + 1, 3, dtype=np.int32))
    at = pa.array(np.full(n, int(datetime(2025, 1, 1, tzinfo=UTC).timestamp() * 1e6)), pa.int64())
    labels = pa.table({
        "uri": uri, "content_sha256": sha, "size_bytes": rng.integers(20_000, 300_000, n),
        "width": np.full(n, 500, np.int32), "height": np.full(n, 375, np.int32), "label": names[top[:, 0]],
        "label_index": top[:, 0].astype(np.int32), "confidence": top1,
        "topk_labels": pa.ListArray.from_arrays(offsets, pa.array(names[top.ravel()], pa.string())),
        "topk_indices": pa.ListArray.from_arrays(offsets, pa.array(top.ravel().astype(np.int32))),
        "topk_confidences": pa.ListArray.from_arrays(offsets, pa.array(conf.ravel())), "margin": top1 - top2,
        "decision": np.where(top1 >= 0.5, "accept", "review").astype(object),
        "model_version": np.full(n, MODEL, object), "run_id": np.full(n, RUN, object),
        "labeled_at": at.cast(pa.timestamp("us", tz="UTC")),
    }).cast(TABLES["labels"])
    emb = pa.table({
        "uri": uri, "content_sha256": sha, "embedding": list_column(vectors),
        "model_version": np.full(n, MODEL, object), "run_id": np.full(n, RUN, object),
        "fingerprint": list_column(data["fingerprints"]),
    }).cast(TABLES["embeddings"])
    now = datetime.now(UTC)
    runs = pa.Table.from_pylist([{
        # No checkpoint there (the audit then takes the classes from the top-k lists): a gs:// one cost the audit
        # 80 s of retries to reach storage.googleapis.com from a machine offline.
        "run_id": RUN, "model_version": MODEL, "checkpoint": f"{out}/no-checkpoint/model.pt", "inputs": ["gs://x/**"],
        "output": out, "runner": "DataflowRunner", "matched": n, "labeled": n, "errored": 0, "skipped": 0,
        "wall_seconds": 1000.0, "images_per_second": n / 1000, "started_at": now, "finished_at": now,
        "options_json": json.dumps({"embeddings": True})}], schema=TABLES["runs"])
    for table, rows in (("labels", labels), ("embeddings", emb), ("runs", runs)):
        os.makedirs(f"{out}/{table}/model={MODEL}", exist_ok=True)
        name = f"{RUN}.parquet" if table == "runs" else f"{RUN}-00000-of-00001.parquet"
        pq.write_table(rows, f"{out}/{table}/model={MODEL}/{name}", compression="zstd", row_group_size=128 * 1024)


def prepare(workdir: str, n: int, dim: int, fresh: bool) -> tuple[str, str, dict[str, np.ndarray]]:
    """The output folder, the matrix as .npy (for the pass's own process) and the truth; made once per size."""
    root = os.path.join(workdir, f"audit-{n}x{dim}")
    out, matrix, truth = f"{root}/out", f"{root}/vectors.npy", f"{root}/truth.npz"
    prints = f"{root}/fingerprints.npy"
    if fresh or not os.path.exists(truth) or not os.path.exists(prints):
        shutil.rmtree(root, ignore_errors=True)
        t0 = time.perf_counter()
        data = embeddings(n, dim)
        data["fingerprints"] = fingerprints_of(data["vectors"])
        write_output(out, data)
        np.save(matrix, data.pop("vectors"))
        np.save(prints, data.pop("fingerprints"))
        np.savez(truth, **data)
        print(f"wrote {n:,} embeddings (D={dim}) with labels and a runs row under {out} "
              f"in {time.perf_counter() - t0:.0f} s", flush=True)
    return out, matrix, dict(np.load(truth))


def pass_worker(matrix: str, result: str, k: int) -> None:
    """The pass as `alexlabel audit` runs it, in this fresh process: the float16 matrices in memory, then nearest
    over each, the sets of both passes' pairs and the outliers; prints the timings and the peak RSS (VmHWM:
    this process only, unlike RUSAGE_CHILDREN, which Linux seeds with the parent's peak at fork)."""
    folder = os.path.dirname(matrix)
    vectors, prints = np.load(matrix), np.load(os.path.join(folder, "fingerprints.npy"))
    classes = model_top1(os.path.join(folder, "out"))
    before = vm("VmRSS")
    t0 = time.perf_counter()
    sims, ids = neighbors.nearest(vectors, k)
    t_emb = time.perf_counter() - t0
    passes = [(sims, ids, neighbors.DEFAULT_THRESHOLD),
              (*neighbors.nearest(prints, k), neighbors.FINGERPRINT_THRESHOLD)]
    t1 = time.perf_counter()
    group = neighbors.joined_groups(len(vectors), passes)
    t2 = time.perf_counter()
    _, furthest = outlying.furthest(outlying.distances(vectors, classes, passes[1][0]))
    t3 = time.perf_counter()
    peak = vm("VmHWM")
    np.savez(result, sims=sims, ids=ids, group=group, scores=outlying.score(furthest),
             outliers=furthest > outlying.FENCE)
    print(json.dumps({"nearest_s": t1 - t0, "embeddings_s": t_emb, "groups_s": t2 - t1, "outliers_s": t3 - t2,
                      "loaded_mib": before, "peak_mib": peak}))


def model_top1(out: str) -> np.ndarray:
    """The labels table's top-1 class per image, in image order, as the audit takes it: the simulated model's, which
    is another class of the same family for 7% of the images (their embeddings stay their own class's)."""
    labels = pq.read_table(f"{out}/labels/model={MODEL}/{RUN}-00000-of-00001.parquet", columns=["topk_indices"])
    return pc.list_element(labels["topk_indices"], 0).to_numpy()


def vm(field: str) -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field)) / 1024


def pair_scores(pred: np.ndarray, true: np.ndarray) -> tuple[float, float]:
    """Precision and recall of the pairs put in one set: of the pairs in a found group, how many share an
    injected set, and the other way round (a merge of two sets costs precision, a split recall)."""
    def pairs(*labels):
        keep = np.all([lab >= 0 for lab in labels], axis=0)
        _, counts = np.unique(np.stack([lab[keep] for lab in labels]), axis=1, return_counts=True)
        return float((counts * (counts - 1) // 2).sum())
    both = pairs(pred, true)
    return both / max(pairs(pred), 1), both / max(pairs(true), 1)


def quality(group: np.ndarray, truth: np.ndarray) -> dict:
    flagged, dup = group >= 0, truth >= 0
    hit = (flagged & dup).sum()
    pair_p, pair_r = pair_scores(group, truth)
    return {"precision": hit / max(flagged.sum(), 1), "recall": hit / max(dup.sum(), 1), "pair_precision": pair_p,
            "pair_recall": pair_r, "flagged": int(flagged.sum()), "groups": int(group.max() + 1)}


def exact_reference(vectors: np.ndarray, k: int, queries: int) -> dict:
    """Exact search (IndexFlatIP over all the vectors) for a random sample of them: its seconds and results."""
    rows = np.sort(np.random.default_rng(1).choice(len(vectors), min(queries, len(vectors)), replace=False))
    t0 = time.perf_counter()
    index = faiss.IndexFlatIP(d := neighbors.simd_width(vectors.shape[1]))
    for lo in range(0, len(vectors), neighbors.BATCH):
        index.add(neighbors.unit(vectors[lo:lo + neighbors.BATCH], d))
    sims, ids = neighbors.drop_self(*index.search(neighbors.unit(vectors[rows], d), k + 1), rows, k)
    return {"seconds": time.perf_counter() - t0, "rows": rows, "sims": sims, "ids": ids}


def recall_against(exact: dict, ids: np.ndarray, threshold: float) -> dict:
    """Of the exact neighbours of the sample, how many the approximate pass found: all k, and the close ones."""
    found = (ids[exact["rows"]][:, :, None] == exact["ids"][:, None, :]).any(axis=1)  # [sample, k]
    real = exact["ids"] >= 0
    close = real & (exact["sims"] >= threshold)
    near = real & (exact["sims"] >= 0.9)
    return {"all": found[real].mean(), "close": found[close].mean() if close.any() else float("nan"),
            "close_n": int(close.sum()), "near": found[near].mean() if near.any() else float("nan"),
            "near_n": int(near.sum())}


def audit_command(out: str) -> dict | None:
    """The whole `alexlabel audit OUT`, when the command exists: wall seconds and peak RSS, measured by GNU time
    (its own child, so not seeded with this process's peak as RUSAGE_CHILDREN here would be)."""
    if subprocess.run([ALEXLABEL, "audit", "--help"], capture_output=True).returncode != 0:
        return None
    cmd = [ALEXLABEL, "audit", out]
    shutil.rmtree(f"{out}/issues", ignore_errors=True)  # the folder as generated, not the last run's audit
    timer = ["/usr/bin/time", "-f", "PEAK_KB=%M"] if os.path.exists("/usr/bin/time") else []
    t0 = time.perf_counter()
    result = subprocess.run(timer + cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    text, _, peak = (result.stdout + result.stderr).rpartition("PEAK_KB=")
    if timer and peak:
        peak_mib = int(peak.split()[0]) / 1024
    else:  # no GNU time: the children's peak, an upper bound (Linux seeds it with this process's)
        peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"rc": result.returncode, "wall_s": wall, "peak_mib": peak_mib, "tail": text[-2000:]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="embeddings in all")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--k", type=int, default=neighbors.DEFAULT_K, help="neighbours per image")
    parser.add_argument("--exact-queries", type=int, default=5000,
                        help="images whose exact neighbours among all n are the reference")
    parser.add_argument("--workdir", default="bench-out")
    parser.add_argument("--fresh", action="store_true", help="generate the data again even if it is there")
    parser.add_argument("--worker", nargs=2, metavar=("MATRIX", "RESULT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        pass_worker(*args.worker, args.k)
        return 0

    out, matrix, truth = prepare(args.workdir, args.n, args.dim, args.fresh)
    n, threshold = args.n, neighbors.DEFAULT_THRESHOLD
    print(f"faiss {faiss.__version__}, {len(os.sched_getaffinity(0))} cores, load {os.getloadavg()[0]:.1f}; "
          f"k={args.k}, threshold {threshold}", flush=True)

    result = os.path.join(os.path.dirname(matrix), "neighbours.npz")
    done = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", matrix, result, "--k",
                           str(args.k)], stdout=subprocess.PIPE, text=True, check=True)
    cost = json.loads(done.stdout.strip().splitlines()[-1])
    found = dict(np.load(result))
    pass_s = cost["nearest_s"] + cost["groups_s"]

    vectors = np.load(matrix)
    exact = exact_reference(vectors, args.k, args.exact_queries)
    exact_1m = exact["seconds"] * n / len(exact["rows"])  # queries x n: linear in the queries
    vs_exact = recall_against(exact, found["ids"], threshold)

    q = quality(found["group"], truth["group"])
    truth_sets = truth["group"][truth["group"] >= 0]
    plain = (truth["group"] < 0) & ~truth["far"]
    nn = found["sims"][:, 0]
    print(f"\nground truth: {len(np.unique(truth_sets)):,} injected sets, {len(truth_sets):,} images "
          f"({len(truth_sets) / n:.1%}); nearest-neighbour cosine of the other images: median "
          f"{np.median(nn[plain]):.3f}, 99.9th percentile {np.percentile(nn[plain], 99.9):.3f}, "
          f"max {nn[plain].max():.3f}")
    sweep = [t for t in (0.90, 0.92, 0.93, 0.94, 0.95, 0.96, 0.97, 0.98) if t != threshold] + [threshold]
    print("\nthreshold  flagged  precision  recall  pair precision  pair recall")
    for t in sorted(sweep):
        s = quality(neighbors.groups(found["sims"], found["ids"], t), truth["group"])
        print(f"{t:9.2f}{'*' if t == threshold else ' '} {s['flagged']:7,}  {s['precision']:9.4f}  {s['recall']:6.4f}"
              f"  {s['pair_precision']:14.4f}  {s['pair_recall']:11.4f}")

    ok_time, ok_mem = pass_s <= TARGET_S, cost["peak_mib"] <= TARGET_MIB
    rows = [
        ("neighbour pass, wall (nearest + groups)", f"{pass_s:.1f} s", f"target {TARGET_S} s: "
         f"{'PASS' if ok_time else 'FAIL'}; nearest {cost['nearest_s']:.1f} s (embeddings "
         f"{cost['embeddings_s']:.1f} s, fingerprints {cost['nearest_s'] - cost['embeddings_s']:.1f} s), groups "
         f"{cost['groups_s']:.1f} s, outliers {cost['outliers_s']:.1f} s"),
        ("neighbour pass, peak RSS", f"{cost['peak_mib']:,.0f} MiB", f"target {TARGET_MIB:,} MiB: "
         f"{'PASS' if ok_mem else 'FAIL'}; {cost['loaded_mib']:,.0f} MiB with the matrix loaded, before the pass"),
        (f"near-duplicates at {threshold}: precision / recall", f"{q['precision']:.4f} / {q['recall']:.4f}",
         f"images; pairs in one set: {q['pair_precision']:.4f} / {q['pair_recall']:.4f}; "
         f"{q['groups']:,} groups, {q['flagged']:,} images"),
        ("recall against exact, whole top k", f"{vs_exact['all']:.4f}", f"{len(exact['rows']):,} images' exact "
         f"top {args.k} among all {n:,}"),
        (f"recall against exact, cosine >= {threshold}", f"{vs_exact['close']:.4f}",
         f"{vs_exact['close_n']:,} pairs; >= 0.9: {vs_exact['near']:.4f} of {vs_exact['near_n']:,}"),
        (f"exact search, {len(exact['rows']):,} queries", f"{exact['seconds']:.1f} s", "IndexFlatIP, measured"),
        (f"exact search, all {n:,} (extrapolated)", f"{exact_1m:,.0f} s",
         f"x {n / len(exact['rows']):,.0f} of the measured; {exact_1m / cost['embeddings_s']:,.0f}x the "
         f"approximate nearest over the embeddings ({cost['embeddings_s']:.1f} s)"),
    ]
    far, flagged = truth["far"], found["outliers"]
    mislabeled = model_top1(out) != truth["cls"]
    top = np.argsort(-found["scores"])[:far.sum()]
    rows.append(("outliers: injected far-off images flagged", f"{flagged[far].mean():.4f}",
                 f"{far.sum():,} of them, {far[top].mean():.0%} of the top {far.sum():,} scores; "
                 f"{flagged.sum():,} flagged in all ({flagged.mean():.1%}): {(flagged & mislabeled).sum():,} of them "
                 f"given a wrong class by the simulated model ({flagged[mislabeled].mean():.1%} of those), "
                 f"{(flagged & ~far & ~mislabeled).sum():,} others"))
    audit = audit_command(out)
    if audit is None:
        rows.append(("alexlabel audit OUT (subprocess)", "-", "no `audit` command yet: not timed"))
    else:
        rows.append(("alexlabel audit OUT (subprocess)", f"{audit['wall_s']:.1f} s",
                     f"rc {audit['rc']}, peak RSS {audit['peak_mib']:,.0f} MiB; pass share "
                     f"{pass_s / audit['wall_s']:.0%}"))
    width = max(len(r[0]) for r in rows)
    print(f"\n{'':<{width}}  {'measured':>12}  notes")
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:>12}  {note}")
    if audit is not None and audit["rc"] != 0:
        print(f"\nalexlabel audit failed:\n{audit['tail']}")
    return 0 if ok_time and ok_mem and (audit is None or audit["rc"] == 0) else 1


if __name__ == "__main__":
    sys.exit(main())
