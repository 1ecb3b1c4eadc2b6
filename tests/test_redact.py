"""Credentials never reach what we print or store; texts without any are returned as they are, fast."""
import pytest

from common.redact import redact

SECRET_TEXTS = [
    ("gs://b/x.jpg?X-Goog-Signature=abc123&X-Goog-Date=1", "gs://b/x.jpg?X-Goog-Signature=***&X-Goog-Date=1"),
    ("https://h/p?access_token=tok&alt=media", "https://h/p?access_token=***&alt=media"),
    ("--API_KEY=k1 --private-key: k2", "--API_KEY=*** --private-key: ***"),
    ("PASSWD=x sig=y Credential=z secret=w", "PASSWD=*** sig=*** Credential=*** secret=***"),
    ("Authorization: Bearer eyJhbGciOi.x-y", "Authorization: Bearer ***"),
    ("https://alice:hunter2@host/path", "https://alice:***@host/path"),
]


@pytest.mark.parametrize("text,masked", SECRET_TEXTS)
def test_secrets_are_masked(text, masked):
    assert redact(text) == masked


@pytest.mark.parametrize("text", ["/data/bucket/img_00001.jpg", "gs://bucket/prefix/cat 2.png", "model=ab12cd/x",
                                  "https://host/a.jpg?alt=media&generation=7", "user@host"])
def test_texts_without_secrets_are_unchanged(text):
    assert redact(text) == text
