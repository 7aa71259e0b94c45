"""Secrets never reach a record, a log or a report that goes through :func:`redact`.

Values of keys named like credentials, values of environment variables named like credentials,
and strings shaped like well-known token formats are replaced with ``[REDACTED]``. Environment
variables themselves are not recorded.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping

REDACTED = "[REDACTED]"

# Names of keys / environment variables whose values are credentials.
SECRET_NAME_RE = re.compile(
    r"(^|_)TOKEN$|_KEY$|^API_?KEY$|SECRET|PASSWORD|PASSWD|CREDENTIAL|AUTHORIZATION",
    re.IGNORECASE,
)
# Well-known token shapes (Hugging Face, GitHub, OpenAI-style, AWS access key ids, JWTs).
TOKEN_VALUE_RE = re.compile(
    r"\b(hf_[A-Za-z0-9]{20,}|gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}"
    r"|sk-[A-Za-z0-9_-]{20,}|AKIA[0-9A-Z]{16}|eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]+)"
)
# Environment values shorter than this are not treated as secrets to search for: a variable
# such as SOME_KEY=1 would otherwise blank every "1" in a record.
MIN_SECRET_LENGTH = 8


def is_secret_name(name: str) -> bool:
    return bool(SECRET_NAME_RE.search(str(name)))


def environment_secrets(environ: Mapping[str, str] | None = None) -> list[str]:
    """Values of environment variables named like credentials (longest first, for replacing)."""
    environ = os.environ if environ is None else environ
    values = {
        value
        for name, value in environ.items()
        if is_secret_name(name) and len(value) >= MIN_SECRET_LENGTH
    }
    return sorted(values, key=len, reverse=True)


def redact_text(text: str, secrets: Iterable[str] | None = None) -> str:
    for secret in environment_secrets() if secrets is None else secrets:
        text = text.replace(secret, REDACTED)
    return TOKEN_VALUE_RE.sub(REDACTED, text)


def redact(value, secrets: Iterable[str] | None = None):
    """A copy of a JSON-like value with credentials replaced (by key name, env value, or shape)."""
    secrets = environment_secrets() if secrets is None else list(secrets)
    if isinstance(value, Mapping):
        return {
            str(k): REDACTED if is_secret_name(k) and v not in (None, "") else redact(v, secrets)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact(v, secrets) for v in value]
    if isinstance(value, str):
        return redact_text(value, secrets)
    return value
