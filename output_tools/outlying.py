"""How far each image lies from the rest, for the audit's outlier rows. Two measures, each a distance per image:

    class        the cosine distance of its embedding to the mean direction of the other embeddings of its class (the
                 class the model gave it, top-1): an image the model put in a class it looks little like
    fingerprint  the mean cosine distance of its pixel fingerprint to its k nearest others' (neighbors.nearest):
                 an image unlike any other in appearance, such as noise or a flat colour (whose fingerprint is zero)

An image is an outlier when either distance is past its Tukey fence, FENCE interquartile ranges above the upper
quartile of everyone's. A class of fewer than MIN_CLASS images has no mean to measure by: with 1,000 classes and a
few hundred images, most would be alone or with one other, each measured against a mean of one image or none,
and the quartiles would be those of the tiny classes.

Not the embeddings' own nearest neighbours (cleanlab Datalab's kNN score, which the audit used first): junk comes
in kinds, and the images of one kind are each other's nearest neighbours, so none of them is far from its own.
In bench-curation 5 to 8 of each junk image's 10 nearest were junk, and that score flagged none of the 9. The mean
direction of a class of hundreds is set by its many members, which a few junk images cannot move.
"""
import numpy as np
from scipy.sparse import csr_matrix

from output_tools.neighbors import BATCH, mean_distance, unit

# Fences in IQRs above the upper quartile: Tukey's "far out" (1.5 is his "outside"). Precision first, as for the
# near-duplicates: in bench-curation's three seeded sets 1.7 (Datalab's) caught 6-9 of 9 junk images among 22-31
# flagged, 3.0 caught 3-6 with nothing else flagged (BENCHMARKS.md, "Curation").
FENCE = 3.0
MIN_CLASS = 5  # images of one class (top-1) for the class measure: each then has a mean of 4 others at least


def distances(embeddings: np.ndarray, classes: np.ndarray, fingerprint_sims: np.ndarray | None = None
              ) -> dict[str, np.ndarray]:
    """Each measure's distance per image, float64 [N]: `class` always, `fingerprint` given the fingerprints'
    neighbour similarities (neighbors.nearest); NaN where there is nothing to measure by (a class of fewer than
    MIN_CLASS, no neighbour)."""
    found = {"class": class_distance(embeddings, classes)}
    if fingerprint_sims is not None:
        found["fingerprint"] = mean_distance(fingerprint_sims)
    return found


def class_distance(vectors: np.ndarray, classes: np.ndarray, batch: int = BATCH) -> np.ndarray:
    """Cosine distance of each vector to the mean direction of the other unit vectors of its class (int [N]), float64
    [N]; NaN in classes of fewer than MIN_CLASS. Leaving the vector out of its own mean keeps small classes from
    measuring low. Two passes of float32 batches, so the matrix stays as it is (float16 at 1M x 128: 256 MB)."""
    classes = np.asarray(classes, np.int64)
    count = int(classes.max(initial=-1)) + 1
    sums = np.zeros((count, vectors.shape[1]))
    for lo in range(0, len(vectors), batch):  # a one-hot matrix product sums the batch by class (np.add.at: 10x slower)
        rows = classes[lo:lo + batch]
        one_hot = csr_matrix((np.ones(len(rows)), (rows, np.arange(len(rows)))), shape=(count, len(rows)))
        sums += one_hot @ unit(vectors[lo:lo + batch])
    out = np.empty(len(vectors))
    for lo in range(0, len(vectors), batch):
        at, u = slice(lo, lo + batch), unit(vectors[lo:lo + batch])
        out[at] = 1 - np.einsum("ij,ij->i", u, unit(sums[classes[at]] - u))
    out[np.bincount(classes, minlength=count)[classes] < MIN_CLASS] = np.nan
    return out


def furthest(found: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Each measure's past_fence, and the furthest of them per image: an outlier past FENCE, its score from it."""
    past = {measure: past_fence(distance) for measure, distance in found.items()}
    return past, np.max(list(past.values()), axis=0)


def past_fence(distance: np.ndarray) -> np.ndarray:
    """How far each distance lies above the upper quartile, in interquartile ranges, float64 [N]: an outlier past
    FENCE. 0 for NaN, and for all where the distances have no spread (an IQR of 0: a fence needs one)."""
    if not np.isfinite(distance).any():
        return np.zeros(len(distance))
    q1, q3 = np.nanpercentile(distance, [25, 75])
    if q3 <= q1:
        return np.zeros(len(distance))
    return np.nan_to_num((distance - q3) / (q3 - q1), nan=0.0)


def score(multiple: np.ndarray) -> np.ndarray:
    """An outlier's score in 0-1 from how far past the upper quartile it lies: 0.5 at the fence, towards 1 beyond."""
    multiple = np.maximum(multiple, 0)
    return multiple / (multiple + FENCE)
