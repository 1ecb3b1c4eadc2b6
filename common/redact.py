"""Keep credentials out of everything we print or store: error messages, logs, runs options."""
import re

SECRET_WORDS = r"(?:token|secret|password|passwd|signature|credential|api[_-]?key|private[_-]?key|sig|key)"
_PATTERNS = [
    # key=value in query strings and flags: X-Goog-Signature=..., access_token=..., --api_key=...
    re.compile(rf"(?i)((?:[\w.-]*{SECRET_WORDS}[\w.-]*)\s*[=:]\s*)([^\s&\"',;]+)"),
    re.compile(r"(?i)(bearer\s+)([\w.~+/=-]+)"),  # Authorization headers
    re.compile(r"(?i)(://[^/\s:@]+:)([^@\s/]+)(@)"),  # user:password@host
]
MASK = "***"
_ANY = re.compile(rf"(?i){SECRET_WORDS}|bearer|@")  # each pattern needs one of these: most texts end here


def redact(text: str) -> str:
    if not _ANY.search(text):
        return text
    text = _PATTERNS[0].sub(lambda m: m.group(1) + MASK, text)
    text = _PATTERNS[1].sub(lambda m: m.group(1) + MASK, text)
    return _PATTERNS[2].sub(lambda m: m.group(1) + MASK + m.group(3), text)
