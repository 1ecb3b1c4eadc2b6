"""output_tools/neighbors.py: the audit's nearest-neighbour pass, exact and approximate, on small synthetic sets."""
import numpy as np
import pytest

from output_tools import neighbors


def clustered(n: int = 3000, dim: int = 32, clusters: int = 30, copies: int = 60, seed: int = 0):
    """float16 vectors around `clusters` centres, the last `copies` of them near copies (cosine 0.96-0.99) of
    as many others; returns the vectors and the (original, copy) pairs."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    x = centres[rng.integers(0, clusters, n)] + rng.standard_normal((n, dim))
    originals = rng.choice(n - copies, copies, replace=False)
    copy_rows = np.arange(n - copies, n)
    u = x[originals] / np.linalg.norm(x[originals], axis=1, keepdims=True)
    w = rng.standard_normal(u.shape)
    w -= (w * u).sum(1, keepdims=True) * u
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    cos = rng.uniform(0.96, 0.99, (copies, 1))
    x[copy_rows] = cos * u + np.sqrt(1 - cos ** 2) * w
    return x.astype(np.float16), np.stack([originals, copy_rows], 1)


def pairs_found(ids: np.ndarray, pairs: np.ndarray) -> float:
    """Share of the pairs where either side lists the other among its neighbours."""
    return np.mean([b in ids[a] or a in ids[b] for a, b in pairs])


@pytest.fixture(scope="module")
def data():
    return clustered()


@pytest.fixture(scope="module")
def exact(data):
    return neighbors.nearest(data[0], 10, exact=True)


@pytest.fixture(scope="module")
def approximate(data):
    return neighbors.nearest(data[0], 10, exact=False)  # default_nlist: 75 cells at 3,000, 8 probed


def test_exact_and_approximate_agree_on_near_pairs(data, exact, approximate):
    (_, pairs), (es, ei), (as_, ai) = data, exact, approximate
    assert pairs_found(ei, pairs) == 1.0
    assert pairs_found(ai, pairs) == 1.0
    close = (es >= 0.9) & (ei >= 0)  # every exact pair above 0.9 is found by the approximate search too
    assert np.mean([ei[r, c] in ai[r] for r, c in zip(*np.nonzero(close), strict=True)]) == 1.0
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(ai, ei, strict=True)])
    assert recall > 0.9
    found = ai == ei  # where they agree on the neighbour, they agree on its similarity (fp16 codes: ~1e-3)
    assert np.abs(as_[found] - es[found]).max() < 2e-3


@pytest.mark.parametrize("exact", [True, False])
def test_self_excluded_and_sorted(data, exact):
    vectors = np.concatenate([data[0], data[0][:5], data[0][:5]])  # three identical copies of five vectors
    sims, ids = neighbors.nearest(vectors, 10, exact=exact)
    n = len(vectors)
    assert sims.shape == ids.shape == (n, 10) and sims.dtype == np.float32 and ids.dtype == np.int64
    assert not (ids == np.arange(n)[:, None]).any()
    assert (np.diff(sims, axis=1) <= 1e-6).all()
    for i in range(5):  # each copy finds the other two at similarity 1
        copies = {i, len(data[0]) + i, len(data[0]) + 5 + i}
        for c in copies:
            assert copies - {c} <= set(ids[c, :2].tolist())
            assert sims[c, :2].min() > 0.999


@pytest.mark.parametrize("exact", [True, False])
def test_zero_and_broken_vectors_give_no_nan(data, exact):
    vectors = data[0].copy()
    vectors[[3, 7]] = 0
    vectors[11, 0] = np.nan
    vectors[12, 1] = np.inf
    sims, ids = neighbors.nearest(vectors, 10, exact=exact)
    assert not np.isnan(sims).any() and (ids >= 0).all()
    assert (sims[[3, 7, 11, 12]] == 0).all()  # compared as zeros: similarity 0 to everything
    assert np.isfinite(neighbors.mean_distance(sims)).all()


def test_fewer_than_k_others():
    vectors = np.array([[1, 0], [1, 0.1], [0, 1]], np.float16)
    sims, ids = neighbors.nearest(vectors, 5)
    assert (ids[:, 2:] == -1).all() and np.isneginf(sims[:, 2:]).all()
    assert ids[0, 0] == 1 and ids[2, 1] == 0
    assert neighbors.groups(sims, ids, 0.99).tolist() == [0, 0, -1]
    empty_sims, empty_ids = neighbors.nearest(vectors[:0], 3)
    assert empty_sims.shape == empty_ids.shape == (0, 3)
    single_sims, single_ids = neighbors.nearest(vectors[:1], 3)
    assert (single_ids == -1).all()
    assert np.isnan(neighbors.mean_distance(single_sims)).all()  # no neighbour: no distance


def test_groups_are_transitive_sets_numbered_by_lowest_member():
    # 5-6 and 6-7 close, 5-7 not: one set; 1-3 another; 0, 2, 4 in none. Pairs listed from one side only.
    ids = np.array([[2], [3], [0], [0], [1], [6], [7], [0]])
    sims = np.array([[0.5], [0.97], [0.5], [0.2], [0.1], [0.96], [0.955], [0.3]], np.float32)
    assert neighbors.groups(sims, ids, 0.95).tolist() == [-1, 0, -1, 0, -1, 1, 1, 1]
    assert neighbors.groups(sims, ids, 0.99).tolist() == [-1] * 8


def test_groups_of_the_injected_copies(data, approximate):
    (_, pairs), (sims, ids) = data, approximate
    group = neighbors.groups(sims, ids)
    assert (group[pairs[:, 0]] == group[pairs[:, 1]]).all() and (group[pairs] >= 0).all()
    assert set(np.flatnonzero(group >= 0)) == set(pairs.ravel())  # nothing else is that close here
    assert sorted(set(group.tolist()) - {-1}) == list(range(len(pairs)))
    first = [np.flatnonzero(group == g).min() for g in range(len(pairs))]
    assert first == sorted(first)


def test_default_nlist():
    assert neighbors.default_nlist(1_000_000) == 2048
    assert neighbors.default_nlist(3000) == 75  # 128, but 40 training vectors a cell
    assert neighbors.default_nlist(100) == 2
    assert neighbors.default_nlist(10) == 1


def test_quiet_without_a_terminal(data, capsys):
    neighbors.nearest(data[0][:500], 5, exact=False)
    assert capsys.readouterr().err == ""
