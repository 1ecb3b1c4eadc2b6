"""Every output row is built here, from what the job learned of each input: adding a column touches its
schema in schemas/tables.py and this module only.

    labels         label_row(image, prediction, ...)      a file the model labeled
    embeddings     vector_row(image, {embedding, ...})    its embedding and pixel fingerprint (label --embeddings)
    probabilities  vector_row(image, {probabilities})     its whole softmax (label --probabilities)
    errors         error_row(image, failure, ...)         a file that failed to read, decode or go through the model
    runs           run_row(opts, ...)                     one per run (a slice, a sliced job), from the launcher's
                                                          accounting

Each row carries the model version of the model that handled it, which changes mid-job when a streaming
job swaps one in (--watch-model). Error messages are redacted here, as URIs are once PrepareImage has read
the file: a signed URL carries a credential.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import numpy as np
from apache_beam.metrics import Metrics

from beam_pipeline.progress import TALLY
from common.redact import redact

if TYPE_CHECKING:
    from beam_pipeline.decode import ImageFile
    from beam_pipeline.options import LabelOptions

LABELED = Metrics.counter("alexlabel", "labeled")
ERRORED = Metrics.counter("alexlabel", "errored")
MAX_MESSAGE = 1000


@dataclass(frozen=True)
class Failure:
    """Why an input has no label: the stage that failed (read / decode / infer) and what was raised."""

    stage: str
    error_type: str
    message: str

    @classmethod
    def of(cls, stage: str, exc: BaseException) -> Failure:
        return cls(stage, type(exc).__name__, str(exc))


@dataclass(frozen=True)
class Prediction:
    """The model's top-k for one image, best first: class indices, calibrated probabilities, class names."""

    indices: list[int]
    confidences: list[float]
    labels: list[str]
    embedding: np.ndarray | None = None      # float16 [D], with --embeddings
    fingerprint: np.ndarray | None = None    # float16 [fingerprint.DIM], with --embeddings
    probabilities: np.ndarray | None = None  # float16 [classes], with --probabilities


def label_row(image: ImageFile, prediction: Prediction, model_version: str, run_id: str,
              accept_threshold: float) -> dict:
    LABELED.inc()
    TALLY.add("labeled")
    confidences = prediction.confidences
    confidence = confidences[0]
    return {"uri": image.uri, "content_sha256": image.content_sha256, "size_bytes": image.size_bytes,
            "width": image.width, "height": image.height, "label": prediction.labels[0],
            "label_index": prediction.indices[0], "confidence": confidence, "topk_labels": prediction.labels,
            "topk_indices": prediction.indices, "topk_confidences": confidences,
            "margin": confidence - confidences[1] if len(confidences) > 1 else confidence,
            "decision": "accept" if confidence >= accept_threshold else "review", "model_version": model_version,
            "run_id": run_id, "labeled_at": datetime.now(UTC)}


def vector_row(image: ImageFile, vectors: dict[str, np.ndarray], model_version: str, run_id: str) -> dict:
    """An embeddings or probabilities row: `vectors` are its table's vector columns; joined to the labels row on
    (uri, model_version, run_id)."""
    return {"uri": image.uri, "content_sha256": image.content_sha256, **vectors, "model_version": model_version,
            "run_id": run_id}


def error_row(image: ImageFile, failure: Failure, model_version: str, run_id: str) -> dict:
    ERRORED.inc()
    TALLY.add("errored")
    message = redact(" ".join(failure.message.split()) or failure.error_type)
    return {"uri": image.uri, "stage": failure.stage, "error_type": failure.error_type,
            "message": message[:MAX_MESSAGE], "size_bytes": image.size_bytes, "model_version": model_version,
            "run_id": run_id, "at": datetime.now(UTC)}


def run_row(opts: LabelOptions, model_version: str, counts: dict[str, int], started: datetime,
            wall_seconds: float, job_id: str | None = None) -> dict:
    """`counts`: matched, labeled, errored, skipped; `job_id`: on a slice's row, its job's run id (None on a whole
    run's: see RUNS). The checkpoint, the patterns and the options are redacted: a signed URL among them carries a
    credential."""
    return {"run_id": opts.run_id, "model_version": model_version, "checkpoint": redact(opts.checkpoint),
            "inputs": [redact(p) for p in opts.inputs], "output": opts.output, "runner": opts.runner, **counts,
            "wall_seconds": wall_seconds,
            "images_per_second": (counts["labeled"] + counts["errored"]) / wall_seconds, "started_at": started,
            "finished_at": datetime.now(UTC), "options_json": redact(opts.to_json()), "job_id": job_id}
