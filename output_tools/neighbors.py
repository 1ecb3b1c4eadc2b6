"""The nearest-neighbour pass of `alexlabel audit`: each embedding's k most similar others, the near-duplicate
sets they form and how far each image sits from its neighbours (numpy and faiss only; no tables here).

Similarity is cosine: the vectors are L2-normalized and compared by inner product, so the length of an embedding
(which follows image contrast more than content) does not matter. The matrix stays float16 as the embeddings table
stores it (256 MB at 1M x 128); each batch is converted to float32 only while faiss needs it.
"""
import os
import sys

import faiss
import numpy as np
from faiss.contrib.ivf_tools import add_preassigned
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from tqdm import tqdm

DEFAULT_K = 10  # neighbours per image: what cleanlab's Datalab uses for its kNN outlier and duplicate scores
# Cosine similarity from which two images are near-duplicates. Placed with bench_audit.py's 1M synthetic embeddings
# in the gap between the injected copies (0.95-0.995: the range assumed for re-encodes, resizes and small crops of
# one photo) and distinct images' nearest neighbours (99.9th percentile 0.93): precision 0.9998, recall 0.9999
# there; 0.94 lets in 0.3% false ones, 0.96 misses 17% of the copies. To be re-tuned on real embeddings with the
# same sweep (bench_audit.py prints it) over pairs people have checked.
DEFAULT_THRESHOLD = 0.95
# The same for the pixel fingerprints (beam_pipeline/fingerprint.py), placed with bench_curation.py's near copies:
# there their copies sat at medians of 0.98-1.0 (5th percentiles 0.95-1.0, the 90% crops lowest) and distinct images
# at most at 0.92; every threshold from 0.90 to 0.96 met both targets.
FINGERPRINT_THRESHOLD = 0.95
EXACT_MAX = 20_000  # brute force up to here (N^2: ~5 s on 2 cores at 20k, ~5 hours at 1M); above it IVF
BATCH = 16_384  # vectors converted to float32 at a time: 8 MB a batch at D = 128
NPROBE = 8  # IVF cells searched per query (see `approximate`)


def nearest(vectors: np.ndarray, k: int = DEFAULT_K, *, exact: bool | None = None, nlist: int | None = None,
            nprobe: int = NPROBE, batch: int = BATCH) -> tuple[np.ndarray, np.ndarray]:
    """Each vector's k nearest other vectors by cosine similarity: (sims [N, k] float32, ids [N, k] int64),
    most similar first, the vector itself left out; id -1 and sim -inf fill rows with fewer than k others.

    Exact (IndexFlatIP) up to EXACT_MAX vectors, else approximate (see `approximate`); `exact` forces either.
    Zero or non-finite vectors are compared as zeros: similarity 0 to everything, never NaN. Memory beside the
    matrix: the index's fp16 codes (N x D x 2 bytes), each vector's cells and the results (N x (nprobe + k) x 12
    bytes); at 1M x 128 the whole pass peaked at 961 MB RSS and took 87 s on 2 cores (bench_audit.py).
    """
    vectors = np.asarray(vectors)
    n, d = len(vectors), simd_width(vectors.shape[1])
    if n == 0:
        return np.empty((0, k), np.float32), np.empty((0, k), np.int64)
    faiss.omp_set_num_threads(len(os.sched_getaffinity(0)))
    sims = np.empty((n, k), np.float32)
    ids = np.empty((n, k), np.int64)
    want = min(k + 1, n)  # k + 1: the vector itself is (nearly always) among them
    if exact is None:
        exact = n <= EXACT_MAX
    if exact:
        index = faiss.IndexFlatIP(d)
        for lo in progress(n, batch, "indexing"):
            index.add(unit(vectors[lo:lo + batch], d))
        for lo in progress(n, batch, "neighbours"):
            rows = np.arange(lo, min(lo + batch, n))
            sims[rows], ids[rows] = drop_self(*index.search(unit(vectors[rows], d), want), rows, k)
        return sims, ids
    index, cells, cell_sims = approximate(vectors, nlist or default_nlist(n), nprobe, batch)
    order = np.argsort(cells[:, 0], kind="stable")  # queries by cell: each batch rereads the same few lists
    for lo in progress(n, batch, "neighbours"):
        rows = order[lo:lo + batch]
        found = index.search_preassigned(unit(vectors[rows], d), want, cells[rows], cell_sims[rows])
        sims[rows], ids[rows] = drop_self(*found, rows, k)
    return sims, ids


def approximate(vectors: np.ndarray, nlist: int, nprobe: int, batch: int):
    """An IVF index of the vectors, IVF<nlist>,SQfp16 by inner product, and each vector's nprobe nearest cells
    (ids [N, nprobe], similarities): the queries are the indexed vectors, so their cells, computed once to add
    them, serve the search as well (search_preassigned) and halve the coarse quantization.

    Why this index: measured at 1M x 128 on 2 (shared) cores, bench_audit.py's data, recall against exact
    search (IndexFlatIP) for 3,000 of the images; the exact all-vs-all pass would take ~5 hours there.
    - IVF: cheap to build for a one-off pass (k-means on 40 vectors a cell, one BLAS assignment), and
      near-duplicates (cosine >= 0.95, under 18 degrees apart) almost always share a cell or the next, so few
      probes find them all. 2048 cells, nprobe 8: recall 1.0 of the exact pairs >= 0.9, 0.999 of the whole top
      10; nprobe 4: 0.998 and 0.994 in half the scan time (8 keeps a margin for real embeddings' cells).
    - Queries in cell order, not table order: consecutive queries probe the same few lists, which then stay in
      cache; the scan is bound by memory, not arithmetic, and this made it ~4x faster (IVF-Flat nprobe 4:
      171 s -> 41 s).
    - SQfp16, not Flat: fp16 codes halve the bytes the scan reads (and the index: 256 MB instead of 512 at
      1M); scan at nprobe 8 62 s instead of 151. fp16 of a float16 embedding loses nothing it had.
    - Not HNSW (HNSW32, efConstruction 40): its build alone took 136 s, its search 91-141 s (efSearch 16-32)
      and it found only 0.82-0.85 of the exact top 10, 0.85 of the pairs >= 0.95, in 3x the memory.
    """
    n, d = len(vectors), simd_width(vectors.shape[1])
    index = faiss.IndexIVFScalarQuantizer(faiss.IndexFlatIP(d), d, nlist, faiss.ScalarQuantizer.QT_fp16,
                                          faiss.METRIC_INNER_PRODUCT)
    index.by_residual = False  # codes of the unit vectors themselves: fp16 of a float16 vector is lossless enough
    index.cp.niter = 10  # k-means iterations: the cells only need to be compact, not optimal
    nprobe = index.nprobe = min(nprobe, nlist)
    sample = np.sort(np.random.default_rng(0).choice(n, min(n, 40 * nlist), replace=False))
    with tqdm(total=1, desc=f"training {nlist} cells", disable=not sys.stderr.isatty()) as bar:
        index.train(unit(vectors[sample], d))
        bar.update()
    cells = np.empty((n, nprobe), np.int64)
    cell_sims = np.empty((n, nprobe), np.float32)
    for lo in progress(n, batch, "indexing"):
        x = unit(vectors[lo:lo + batch], d)
        cell_sims[lo:lo + batch], cells[lo:lo + batch] = index.quantizer.search(x, nprobe)
        add_preassigned(index, x, np.ascontiguousarray(cells[lo:lo + batch, 0]))  # ids follow: lo, lo + 1, ...
    return index, cells, cell_sims


def default_nlist(n: int) -> int:
    """IVF cells: the power of two nearest 2 sqrt(N) (2048 at 1M, ~500 vectors a cell), balancing the k-means
    and BLAS assignment, which grow with nlist, against the scan of nprobe cells, which shrinks with it; at least
    40 training vectors a cell (faiss warns under 39)."""
    return int(max(1, min(2 ** round(np.log2(2 * np.sqrt(n))), n // 40)))


def simd_width(d: int) -> int:
    """d rounded up to a multiple of 8: faiss's scalar-quantizer scan runs its SIMD kernels only then, and fell back
    to one 4.5x slower for the 105 values of a fingerprint (70 s against 15 s at 200k). Zero columns leave every
    cosine as it was."""
    return -(-d // 8) * 8


def unit(block: np.ndarray, width: int | None = None) -> np.ndarray:
    """A float32 copy of the rows, each scaled to length 1, with zero columns up to `width`; zero and non-finite rows
    become zeros."""
    x = np.zeros((len(block), width or block.shape[1]), np.float32)
    x[:, :block.shape[1]] = block
    x[~np.isfinite(x).all(axis=1)] = 0
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    np.divide(x, norms, out=x, where=norms > 0)
    return x


def drop_self(sims: np.ndarray, ids: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The first k results of each query that are not the query itself (vector rows[r]), padded with -1 / -inf.
    The search asks for k + 1, so a query whose own id is missing (ties among identical vectors, or the
    approximate search) keeps its first k."""
    ids = np.where(ids == rows[:, None], -1, ids)
    order = np.argsort(ids < 0, axis=1, kind="stable")[:, :k]  # stable: the others in rank order, then the gaps
    sims, ids = np.take_along_axis(sims, order, 1), np.take_along_axis(ids, order, 1)
    if ids.shape[1] < k:  # fewer than k others in all
        pad = ((0, 0), (0, k - ids.shape[1]))
        sims, ids = np.pad(sims, pad), np.pad(ids, pad, constant_values=-1)
    sims = np.clip(sims, -1, 1)  # rounding can pass 1 by ~1e-7
    sims[ids < 0] = -np.inf
    return sims, ids


def progress(n: int, batch: int, what: str):
    """Batch starts, with a vectors/s bar on stderr when it is a terminal."""
    with tqdm(total=n, desc=what, unit="vec", unit_scale=True, disable=not sys.stderr.isatty()) as bar:
        for lo in range(0, n, batch):
            yield lo
            bar.update(min(batch, n - lo))


def close_pairs(sims: np.ndarray, ids: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image, neighbour, similarity) of every neighbour found at or above the threshold, as three arrays."""
    pair = (sims >= threshold) & (ids >= 0)
    return np.nonzero(pair)[0], ids[pair], sims[pair]


def closest_partners(sims: np.ndarray, ids: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Each image's most similar partner among the pairs at or above the threshold, either way round: an
    approximate search can find a pair from one side only. -1 (and similarity 0) for images in no pair."""
    a, b, s = close_pairs(sims, ids, threshold)
    a, b, s = np.concatenate([a, b]), np.concatenate([b, a]), np.concatenate([s, s])
    order = np.lexsort((-s, a))  # by image, its most similar partner first
    first = order[np.unique(a[order], return_index=True)[1]]
    similarity, partner = np.zeros(len(sims), np.float32), np.full(len(sims), -1, np.int64)
    similarity[a[first]], partner[a[first]] = s[first], b[first]
    return similarity, partner


def groups(sims: np.ndarray, ids: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """Near-duplicate sets: the connected components of the pairs with similarity >= threshold, as one id per
    vector (int64 [N]), -1 for vectors in no such pair. Groups are numbered 0..G-1 in the order of their lowest
    member, so the same neighbours give the same ids.

    Components make the sets transitive (copies of one original that are less alike each other than the
    threshold still join through it), and a set larger than k + 1 is still found through chains of neighbours;
    the price is that a chain of close images can join two that are not alike.
    """
    return joined_groups(len(ids), [(sims, ids, threshold)])


def joined_groups(n: int, passes: list[tuple[np.ndarray, np.ndarray, float]]) -> np.ndarray:
    """`groups` of the pairs that any pass (its sims, ids and threshold, over the same n vectors) finds."""
    pairs = [close_pairs(*found) for found in passes]
    rows, cols = np.concatenate([a for a, _, _ in pairs]), np.concatenate([b for _, b, _ in pairs])
    graph = coo_matrix((np.ones(len(rows), np.int8), (rows, cols)), shape=(n, n)).tocsr()
    _, component = connected_components(graph, directed=True, connection="weak")
    members = np.unique(np.concatenate([rows, cols]))  # ascending
    _, first, inverse = np.unique(component[members], return_index=True, return_inverse=True)
    out = np.full(n, -1, np.int64)
    out[members] = np.argsort(np.argsort(first))[inverse]  # components ranked by their lowest member
    return out


def mean_distance(sims: np.ndarray) -> np.ndarray:
    """Mean cosine distance (1 - similarity) to the neighbours found, float64 [N]; NaN for a row with none."""
    found = np.isfinite(sims)
    count = found.sum(axis=1)
    total = np.where(found, 1 - sims.astype(np.float64), 0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, np.maximum(total, 0) / count, np.nan)
