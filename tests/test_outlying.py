"""output_tools/outlying.py: the audit's outlier measures and their fence, on synthetic embeddings whose truth is
known, beside the kNN measure they replaced."""
import numpy as np
import pytest

from output_tools import neighbors, outlying


@pytest.fixture(scope="module")
def with_junk():
    """450 embeddings in 3 classes, then 15 junk ones of one kind (close to each other, near no class) that the
    model put in class 0; returns (vectors, classes, is_junk)."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((3, 32))
    classes = np.repeat(np.arange(3), 150)
    vectors = centres[classes] + 0.7 * rng.standard_normal((450, 32))
    junk = rng.standard_normal(32) + 0.1 * rng.standard_normal((15, 32))
    vectors = np.concatenate([vectors, junk]).astype(np.float16)
    classes = np.concatenate([classes, np.zeros(15, np.int64)])
    return vectors, classes, np.arange(len(vectors)) >= 450


def test_junk_of_one_kind_is_far_from_its_class_though_near_its_own_kind(with_junk):
    vectors, classes, junk = with_junk
    past = outlying.past_fence(outlying.class_distance(vectors, classes))
    assert (past[junk] > outlying.FENCE).all()
    assert (past[~junk] > outlying.FENCE).mean() < 0.01
    # The kNN measure the audit used before: each junk image's nearest neighbours are the other junk, so it is not
    # far from them, and none is past the fence.
    sims, _ = neighbors.nearest(vectors, 10)
    assert (outlying.past_fence(neighbors.mean_distance(sims))[junk] < outlying.FENCE).all()


def test_class_distance_is_the_cosine_to_the_mean_direction_of_the_others():
    vectors = np.array([[1, 0]] * 4 + [[0, 1], [0, 0], [5, 5], [1, 1]], np.float16)
    got = outlying.class_distance(vectors, np.array([0] * 6 + [1] * 2), batch=3)
    assert got[:4] == pytest.approx([1 - 3 / np.sqrt(10)] * 4, abs=1e-3)  # the others sum to (3, 1)
    assert got[4:6] == pytest.approx([1, 1], abs=1e-3)  # the others (4, 0); a zero vector: similarity 0
    assert np.isnan(got[6:]).all()  # a class of 2: no mean to measure by
    assert outlying.class_distance(vectors[:0], np.array([], np.int64)).shape == (0,)


def test_classes_too_small_to_measure_leave_the_fence_to_the_others():
    """1000 classes and a few hundred images (an ImageNet model on a small bucket): most classes hold one or two
    images, each its own mean; only the classes of MIN_CLASS or more are measured, and their quartiles set the
    fence."""
    rng = np.random.default_rng(1)
    centres = rng.standard_normal((1000, 32))
    classes = np.concatenate([rng.integers(3, 1000, 250), np.repeat([0, 1, 2], 40)])
    vectors = (centres[classes] + 0.5 * rng.standard_normal((len(classes), 32))).astype(np.float16)
    vectors[-1] = rng.standard_normal(32)  # in class 2, like nothing in it
    counts = np.bincount(classes)[classes]
    got = outlying.class_distance(vectors, classes)
    assert np.isnan(got[counts < outlying.MIN_CLASS]).all() and np.isfinite(got[counts >= outlying.MIN_CLASS]).all()
    past = outlying.past_fence(got)
    assert np.flatnonzero(past > outlying.FENCE).tolist() == [len(classes) - 1]


def test_fence_is_in_iqrs_above_the_upper_quartile():
    d = np.array([0, 1, 2, 3, 4, np.nan])  # Q1 1, Q3 3: IQR 2
    assert outlying.past_fence(d).tolist() == [-1.5, -1, -0.5, 0, 0.5, 0]
    assert outlying.past_fence(np.full(5, 0.3)).tolist() == [0] * 5  # no spread: no fence
    assert outlying.past_fence(np.full(3, np.nan)).tolist() == [0] * 3
    assert outlying.score(np.array([-1, 0, outlying.FENCE, 1e9])) == pytest.approx([0, 0, 0.5, 1])


def test_a_zero_fingerprint_is_past_the_fingerprint_fence(with_junk):
    vectors, classes, _ = with_junk
    prints = vectors.copy()
    prints[7] = 0  # a flat colour: no structure for the fingerprint's frequencies
    found = outlying.distances(vectors, classes, neighbors.nearest(prints, 10)[0])
    assert set(found) == {"class", "fingerprint"}
    past = outlying.past_fence(found["fingerprint"])
    assert found["fingerprint"][7] == pytest.approx(1) and past[7] > outlying.FENCE and past.argmax() == 7
    assert set(outlying.distances(vectors, classes)) == {"class"}  # no fingerprints: the class measure alone
