"""Ids that sort by their start time and stay unique across concurrent launches: run ids, review sessions."""
import uuid
from datetime import UTC, datetime


def new_id() -> str:
    return f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"
