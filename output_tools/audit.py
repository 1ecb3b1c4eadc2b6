"""`alexlabel audit OUT`: what is wrong with a labeled image set, as an `issues` table (schemas/tables.py ISSUES).

    exact_duplicate  the same bytes (content_sha256) under different uris
    near_duplicate   embeddings or pixel fingerprints closer than a cosine threshold, grouped into sets
                     (neighbors.py, faiss)
    outlier          images far from their class's embeddings, or unlike any other image in their pixels
                     (outlying.py)
    label_error      given labels the model's probabilities contradict, by confident learning (cleanlab)
    low_confidence   the model's own uncertainty: its margin over the runner-up, with the entropy beside it

It reads the `vectors` view (label rows with their embedding: `alexlabel label --embeddings`) of one model
version, and writes OUT/issues/model=<version>/<audit_id>.parquet in one atomic write: an audit is all there or
not at all. Every issue row is built in `issue_row`.
"""
import io
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from common.errors import UserError, first_line
from common.ids import new_id
from common.storage import atomic_write_bytes
from output_tools import neighbors, outlying, query
from schemas.tables import ISSUES
from schemas.views import connect, latest_checkpoint

LOW_MARGIN = 0.1  # low_confidence: top-1 probability at most this far above the runner-up
COLUMNS = "uri, content_sha256, label, confidence, margin, topk_labels, topk_indices, topk_confidences"


class AuditError(UserError):
    """An audit that cannot run as asked: no embeddings, mixed model versions, labels that match nothing."""


@dataclass
class Images:
    """The audited rows of one model version, in uri order: their label columns and vectors."""

    model_version: str
    rows: pa.Table                              # COLUMNS
    embeddings: np.ndarray                      # [N, D] float16
    fingerprints: np.ndarray | None = None      # [N, fingerprint.DIM] float16, where every row has one
    probabilities: np.ndarray | None = None     # [N, classes] float16, where every row has them
    class_names: list[str] = field(default_factory=list)
    stamp: dict = field(default_factory=dict)   # what every issue row of this audit carries: version, id, time


@dataclass
class Audit:
    audit_id: str
    images: Images
    issues: list[dict]
    notes: list[str]                            # how the audit went: what it used, what it left out
    url: str = ""


def run_audit(output: str, labels: str | None = None, model: str | None = None,
              threshold: float = neighbors.DEFAULT_THRESHOLD, max_margin: float = LOW_MARGIN,
              fingerprint_threshold: float = neighbors.FINGERPRINT_THRESHOLD) -> Audit:
    """Find every issue in the newest label rows of one model version and write them as one issues file."""
    con = connect(output, model)
    images, notes = load_images(con, output), []
    audit_id = new_id()
    images.stamp = {"model_version": images.model_version, "audit_id": audit_id, "audited_at": datetime.now(UTC)}
    images.class_names = model_classes(con, images, notes)
    if left_out := con.execute("SELECT count(*) FROM analyzed WHERE model_version = $1",
                               [images.model_version]).fetchall()[0][0] - images.rows.num_rows:
        notes.append(f"{left_out} label rows of this version have no embedding and were not audited; label them "
                     "again with --embeddings --skip-existing")
    issues = exact_duplicates(images)
    passes = {"embedding": (*neighbors.nearest(images.embeddings), threshold)}
    if images.fingerprints is not None:
        passes["fingerprint"] = (*neighbors.nearest(images.fingerprints), fingerprint_threshold)
    else:
        notes.append("near-duplicates and outliers by embedding only: some rows have no pixel fingerprint (labeled "
                     "before fingerprints were stored); label them again with --embeddings to find flipped and "
                     "cropped copies, and images like no other, too")
    issues += near_duplicates(images, passes, first_group=group_count(issues))
    issues += outliers(images, passes["fingerprint"][0] if "fingerprint" in passes else None, notes)
    if labels:
        issues += label_errors(con, images, labels, notes)
    issues += low_confidence(images, max_margin)
    audit = Audit(audit_id, images, issues, notes)
    audit.url = write_issues(output, audit)
    return audit


def load_images(con: duckdb.DuckDBPyConnection, output: str) -> Images:
    """The vectors view of the one model version audited (refusing to mix versions), sorted by uri."""
    versions = [v for (v,) in con.sql("SELECT DISTINCT model_version FROM vectors ORDER BY 1").fetchall()]
    if not versions:
        raise AuditError(f"{output} has no embeddings to audit; label with `alexlabel label --embeddings` "
                         "(add --probabilities too for exact label-error scores)")
    if len(versions) > 1:
        raise AuditError(f"{output} holds embeddings of {len(versions)} model versions ({', '.join(versions)}), "
                         "which are not comparable; pick one with --model")
    reader = con.sql(f"SELECT {COLUMNS}, embedding, fingerprint, probabilities FROM vectors").to_arrow_reader(65536)
    parts, vectors = [], {"embedding": [], "fingerprint": [], "probabilities": []}
    for batch in reader:  # float16 batch by batch: the float32 lists DuckDB hands over never exist all at once
        parts.append(batch.select(COLUMNS.split(", ")))
        for column, blocks in vectors.items():
            lists = batch.column(column)
            if blocks is not None and lists.null_count == 0:
                blocks.append(pc.list_flatten(lists).to_numpy(zero_copy_only=False).astype(np.float16)
                              .reshape(len(lists), -1))
            else:
                vectors[column] = None  # some rows have none: not used at all
    order = pc.sort_indices(rows := pa.Table.from_batches(parts), [("uri", "ascending")])
    rows, order = rows.take(order), order.to_numpy()
    embeddings, fingerprints, probabilities = (np.concatenate(blocks)[order] if blocks else None
                                               for blocks in vectors.values())
    return Images(versions[0], rows, embeddings, fingerprints, probabilities)


def model_classes(con: duckdb.DuckDBPyConnection, images: Images, notes: list[str]) -> list[str]:
    """The model's classes in logit order, from the checkpoint the latest run named; where it cannot be read, as
    far as the rows' top-k lists name them (which a small audit of many classes leaves gaps in)."""
    from schemas.checkpoint import load_checkpoint  # torch: seconds of importing, only for an audit

    checkpoint = latest_checkpoint(con, images.model_version)
    try:
        return load_checkpoint(checkpoint)[1].class_names
    except (UserError, OSError, ValueError, TypeError) as e:  # TypeError: no run names one
        notes.append(f"the classes come from the rows' top-k lists: checkpoint {checkpoint} is unreadable "
                     f"({first_line(e)})")
    pairs = dict(zip(pc.list_flatten(images.rows["topk_indices"]).to_pylist(),
                     pc.list_flatten(images.rows["topk_labels"]).to_pylist(), strict=True))
    names = [""] * (max(pairs) + 1)
    for i, name in pairs.items():
        names[i] = name
    return names


def issue_row(images: Images, i: int, issue: str, score: float, group_id: int | None = None,
              suggested_label: str | None = None, **details) -> dict:
    return {"uri": images.rows["uri"][i].as_py(), "issue": issue, "score": float(np.clip(score, 0, 1)),
            "group_id": group_id, "suggested_label": suggested_label,
            "details": json.dumps(details, sort_keys=True, default=float), **images.stamp}


def group_count(issues: list[dict]) -> int:
    return 1 + max((r["group_id"] for r in issues if r["group_id"] is not None), default=-1)


def exact_duplicates(images: Images) -> list[dict]:
    """Sets of uris with the same bytes; a set's group id is shared with no other set in the audit."""
    hashes = images.rows["content_sha256"].to_numpy(zero_copy_only=False)
    _, first, inverse, counts = np.unique(hashes, return_index=True, return_inverse=True, return_counts=True)
    sets = np.flatnonzero(counts > 1)
    group_of = {s: g for g, s in enumerate(sorted(sets, key=lambda s: first[s]))}
    return [issue_row(images, i, "exact_duplicate", 1.0, group_of[inverse[i]], copies=int(counts[inverse[i]]))
            for i in np.flatnonzero(counts[inverse] > 1)]


def near_duplicates(images: Images, passes: dict[str, tuple[np.ndarray, np.ndarray, float]],
                    first_group: int) -> list[dict]:
    """Sets of images that some pass (name -> its neighbours' sims, ids and threshold) finds at or above its
    threshold, joined transitively across passes. A set whose members all have the same bytes is an exact
    duplicate only, and is not repeated here. Each row names its closest partner, and the passes that paired it."""
    group = neighbors.joined_groups(images.rows.num_rows, list(passes.values()))
    hashes = images.rows["content_sha256"].to_numpy(zero_copy_only=False)
    members: dict[int, list[int]] = {}
    for i in np.flatnonzero(group >= 0):
        members.setdefault(int(group[i]), []).append(int(i))
    sets = [m for m in members.values() if len({hashes[i] for i in m}) > 1]
    partners = {name: neighbors.closest_partners(*found) for name, found in passes.items()}
    uris = images.rows["uri"]

    def row(i: int, g: int, size: int) -> dict:
        by = {name: (float(similarity[i]), int(partner[i])) for name, (similarity, partner) in partners.items()
              if partner[i] >= 0}
        best, at = max(by.values())  # every member of a set is in a pair of some pass
        return issue_row(images, i, "near_duplicate", best, g, similarity=best, nearest=uris[at].as_py(),
                         by=sorted(by), size=size)

    return [row(i, g, len(members_of))
            for g, members_of in enumerate(sorted(sets, key=min), start=first_group) for i in members_of]


def outliers(images: Images, fingerprint_sims: np.ndarray | None, notes: list[str]) -> list[dict]:
    """Images past the fence by either of outlying.py's measures: far from the embeddings of the class the model
    gave them, or (with fingerprints) from every other image's pixels. Details give each measure's distance and
    which measures (`by`) are past their fence; a note counts the images whose class was too small to measure."""
    top1 = pc.list_element(images.rows["topk_indices"], 0).to_numpy(zero_copy_only=False)
    found = outlying.distances(images.embeddings, top1, fingerprint_sims)
    if unmeasured := int(np.isnan(found["class"]).sum()):
        notes.append(f"outliers by class: {unmeasured} images are in classes (the model's top-1) of fewer than "
                     f"{outlying.MIN_CLASS} and were not measured by it; audit more images of those classes")
    past, furthest = outlying.furthest(found)
    scores = outlying.score(furthest)
    classes = pc.list_element(images.rows["topk_labels"], 0)
    return [issue_row(images, i, "outlier", scores[i], by=[m for m in past if past[m][i] > outlying.FENCE],
                      **{"class": classes[i].as_py()}, **{f"{m}_distance": finite(found[m][i]) for m in found})
            for i in np.flatnonzero(furthest > outlying.FENCE)]


def finite(x: float) -> float | None:
    """A distance for the details JSON, where NaN (nothing to measure by) is not valid: null."""
    return float(x) if np.isfinite(x) else None


def label_errors(con: duckdb.DuckDBPyConnection, images: Images, labels: str, notes: list[str]) -> list[dict]:
    """Given labels the model's out-of-sample probabilities contradict (cleanlab's find_label_issues).

    The probabilities are the run's own (--probabilities) or, without them, rebuilt from the top-k: its
    probabilities as they are and the rest spread evenly over the other classes, which ranks the same way
    whenever the given label is in the top-k and is an approximation otherwise."""
    from cleanlab.filter import find_label_issues  # seconds of importing sklearn and pandas: only when asked
    from cleanlab.rank import get_label_quality_scores

    given = given_labels(con, images, labels)
    index = {name: i for i, name in enumerate(images.class_names)}
    known = [(i, index[g]) for i, g in given if g in index]
    if unknown := len(given) - len(known):
        notes.append(f"{unknown} given labels name no class of the model and were left out")
    rows_at, label_at = np.array([i for i, _ in known], np.int64), np.array([c for _, c in known], np.int64)
    probs = probabilities(images, rows_at)
    notes.append(f"label errors: {len(known)} given labels checked against "
                 + ("the stored probabilities" if images.probabilities is not None else
                    "probabilities rebuilt from the top-k (label with --probabilities for exact ones)"))
    classes = np.unique(label_at)  # cleanlab wants every class it sees given at least once
    if len(classes) < 2:
        notes.append("label errors need given labels of two classes at least; none were looked for")
        return []
    keep = np.isin(np.arange(probs.shape[1]), classes)
    probs = probs[:, keep] / np.maximum(probs[:, keep].sum(1, keepdims=True), 1e-12)
    dense = np.searchsorted(classes, label_at)
    issues = find_label_issues(dense, probs, filter_by="prune_by_noise_rate")
    quality = get_label_quality_scores(dense, probs, method="self_confidence")
    names = [images.class_names[c] for c in classes]
    best = probs.argmax(1)
    return [issue_row(images, int(rows_at[j]), "label_error", 1 - quality[j],
                      suggested_label=names[best[j]] if best[j] != dense[j] else None, given_label=names[dense[j]],
                      given_probability=float(probs[j, dense[j]])) for j in np.flatnonzero(issues)]


def given_labels(con: duckdb.DuckDBPyConnection, images: Images, labels: str) -> list[tuple[int, str]]:
    """(row, given label) for each audited row the labels name: a uri,label CSV or Parquet file, an ImageFolder
    tree, or `reviews` (what people said), the forms `query --truth` takes."""
    try:
        query.load_truth(con, labels)
    except query.QueryError as e:
        raise AuditError(f"--labels: {e}") from None
    at = {uri: i for i, uri in enumerate(images.rows["uri"].to_pylist())}
    given = con.execute("SELECT uri, truth FROM judged WHERE model_version = $1", [images.model_version]).fetchall()
    found = [(at[uri], label) for uri, label in given if uri in at]
    if not found:
        raise AuditError(f"--labels {labels} matches no uri with an embedding; give labels for the images "
                         "`alexlabel label --embeddings` labeled")
    return sorted(found)


def probabilities(images: Images, rows_at: np.ndarray) -> np.ndarray:
    """[len(rows_at), classes] float32: the stored probabilities, or those rebuilt from the top-k."""
    if images.probabilities is not None:
        return images.probabilities[rows_at].astype(np.float32)
    k_classes = len(images.class_names)
    if not len(rows_at):
        return np.zeros((0, k_classes), np.float32)
    top_p = images.rows["topk_confidences"].take(pa.array(rows_at, pa.int64()))
    top_i = images.rows["topk_indices"].take(pa.array(rows_at, pa.int64()))
    p, idx = (pc.list_flatten(c).to_numpy().reshape(len(rows_at), -1) for c in (top_p, top_i))
    rest = np.maximum(1 - p.sum(1, keepdims=True), 0) / max(k_classes - p.shape[1], 1)
    out = np.repeat(rest, k_classes, axis=1).astype(np.float32)
    np.put_along_axis(out, idx.astype(np.int64), p, axis=1)
    return out


def low_confidence(images: Images, max_margin: float) -> list[dict]:
    """Rows whose top-1 is within `max_margin` of the runner-up; scored 1 - margin, with the entropy beside."""
    margin = images.rows["margin"].to_numpy()
    rows_at = np.flatnonzero(margin <= max_margin)
    entropy = np.concatenate([normalized_entropy(probabilities(images, part))
                              for part in np.array_split(rows_at, max(1, len(rows_at) // 8192))])
    confidence = images.rows["confidence"].to_numpy()
    return [issue_row(images, int(i), "low_confidence", 1 - margin[i], margin=float(margin[i]),
                      entropy=float(h), confidence=float(confidence[i])) for i, h in zip(rows_at, entropy, strict=True)]


def normalized_entropy(probs: np.ndarray) -> np.ndarray:
    """Entropy over log(classes): 0 when sure of one class, 1 when all are equally likely."""
    return -(probs * np.log(np.clip(probs, 1e-12, 1))).sum(1) / np.log(max(probs.shape[1], 2))


def write_issues(output: str, audit: Audit) -> str:
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(audit.issues, schema=ISSUES), buf, compression="zstd")
    url = f"{output.rstrip('/')}/issues/model={audit.images.model_version}/{audit.audit_id}.parquet"
    atomic_write_bytes(url, buf.getvalue())
    return url


def summary(audit: Audit) -> str:
    """What the audit found: images and sets per issue, the worst few of each, and its notes."""
    n = audit.images.rows.num_rows
    lines = [f"audit {audit.audit_id} of model version {audit.images.model_version}: {n} images -> {audit.url}"]
    for kind in ("exact_duplicate", "near_duplicate", "outlier", "label_error", "low_confidence"):
        found = sorted((r for r in audit.issues if r["issue"] == kind), key=lambda r: (-r["score"], r["uri"]))
        sets = len({r["group_id"] for r in found if r["group_id"] is not None})
        lines.append(f"  {kind:<15} {len(found):>8} images ({len(found) / max(n, 1):.1%})"
                     + (f" in {sets} sets" if sets else ""))
        lines += [f"      {r['score']:.3f}  {r['uri']}" + (f"  -> {r['suggested_label']}" if r["suggested_label"]
                                                            else "") for r in found[:3]]
    return "\n".join(lines + [f"note: {note}" for note in audit.notes])

