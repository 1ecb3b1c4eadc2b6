"""The `informative` review order: the uncertain images first, but not many of one kind in a row.

Uncertainty alone (the smallest margin first) hands a person near-identical images one after another: a burst
of shots, or a duplicated folder the model is unsure of, fills a whole batch, and each verdict after the first
teaches little. So the most uncertain rows of the queue (uncertainty = 1 - margin) form a pool, a few batches
big, and k-center greedy orders it over the L2-normalized embeddings: first the most uncertain row, then each
time the row whose uncertainty times its cosine distance to the nearest row already chosen is greatest. A
near-duplicate of a chosen row scores about 0 until the distinct ones run out, so a batch covers as many kinds
of image as the pool holds, and doubt still decides among them. The rows outside the pool follow in margin
order: only the pool goes through numpy (O(pool x picked x dim)), however many rows the queue holds.
"""
import duckdb
import numpy as np
import pyarrow as pa

from common.errors import UserError
from output_tools import neighbors

POOL_PER_PICK = 10  # candidates per row picked: room to skip near-duplicates without reaching confident rows
POOL_CAP = 2000  # the most the pool holds: the review app orders a whole pool (2000 x 2000 x dim: ~0.1 s)


class InformativeError(UserError):
    """An informative order without what it compares: embeddings of one model version."""


def pool_size(picks: int) -> int:
    return min(POOL_PER_PICK * picks, POOL_CAP)


def k_center(embeddings: np.ndarray, uncertainty: np.ndarray, picks: int) -> np.ndarray:
    """Indices of `picks` rows in the order chosen: the most uncertain, then each time the greatest uncertainty x
    cosine distance to the nearest chosen one. Ties go to the lower index: the earlier row in margin order
    (margin, confidence, uri), so the order is the same every time."""
    x = neighbors.unit(embeddings)
    nearest, taken = np.full(len(x), np.inf, np.float32), np.zeros(len(x), bool)
    chosen = np.empty(min(picks, len(x)), np.int64)
    score = uncertainty
    for i in range(len(chosen)):
        chosen[i] = j = int(np.argmax(score))
        taken[j] = True
        nearest = np.minimum(nearest, 1 - x @ x[j])
        score = np.where(taken, -np.inf, uncertainty * nearest)
    return chosen


def reorder(con: duckdb.DuckDBPyConnection, table: str, pool: int, picks: int) -> None:
    """Give the first `pool` rows of `table` (pos 0, 1, ... in margin order; uri, model_version, run_id, margin)
    their informative positions: `picks` of them chosen by k_center, then the rest of the pool in margin order,
    those without an embedding last. Rows from pos = pool on keep theirs."""
    rows = pool_rows(con, table, pool)
    if not len(rows):
        return
    has = rows["embedding"].is_valid().to_numpy(zero_copy_only=False)
    embedded = np.flatnonzero(has)
    vectors = rows["embedding"].combine_chunks().filter(pa.array(has)).flatten().to_numpy()
    uncertainty = 1 - rows["margin"].to_numpy()[embedded]
    first = embedded[k_center(vectors.reshape(len(embedded), -1), uncertainty, picks)]
    order = rows["pos"].to_numpy()[np.concatenate([first, np.setdiff1d(embedded, first), np.flatnonzero(~has)])]
    con.register("informative_order", pa.table({"old": order, "new": np.arange(len(order))}))
    con.execute(f"UPDATE {table} SET pos = o.new FROM informative_order o WHERE {table}.pos = o.old")
    con.unregister("informative_order")


def pool_rows(con: duckdb.DuckDBPyConnection, table: str, pool: int) -> pa.Table:
    """pos, margin and embedding (null where the run stored none) of the pool, refused without any embedding or
    across model versions, whose embeddings do not compare. The vectors view's join, on the pool's rows only."""
    rows = con.sql(f"""SELECT q.pos, q.margin, q.model_version, e.embedding FROM {table} q
                       LEFT JOIN embeddings e USING (uri, model_version, run_id)
                       WHERE q.pos < {int(pool)} ORDER BY q.pos""").to_arrow_table()
    versions = sorted(set(rows["model_version"].to_pylist()))
    if len(versions) > 1:
        raise InformativeError(f"the informative order compares embeddings of one model version, and the rows to "
                               f"order are of {', '.join(versions)}: pick one with --model")
    if versions and rows["embedding"].null_count == len(rows):
        raise InformativeError(f"the informative order needs embeddings of model version {versions[0]}, and this "
                               "output has none for the rows to review: label with `alexlabel label --embeddings`")
    return rows
