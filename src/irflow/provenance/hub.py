"""The hub models a job used, with the revision each resolved to.

A config names a hub model by ``hf_id`` and (pinned or not) ``revision``; what a job actually
loaded is the commit the local Hugging Face cache holds for that revision. Read from the cache
only (never the network), so it is cheap and works offline.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")


def _model_entries(value: Any) -> list[Mapping]:
    if isinstance(value, Mapping):
        found = [value] if isinstance(value.get("hf_id"), str) else []
        for item in value.values():
            found += _model_entries(item)
        return found
    if isinstance(value, list | tuple):
        return [entry for item in value for entry in _model_entries(item)]
    return []


def resolved_revision(hf_id: str, revision: str | None) -> str | None:
    """The commit the local cache holds for ``hf_id`` at ``revision`` (None if not cached)."""
    if revision and COMMIT_RE.match(revision):
        return revision
    try:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(hf_id, revision=revision, local_files_only=True)
    except Exception:  # not in the cache, or no huggingface_hub: nothing was loaded from it
        return None
    name = folder.rstrip("/").rsplit("/", 1)[-1]
    return name if COMMIT_RE.match(name) else None


def hub_models(params: Mapping) -> list[dict]:
    """[{hf_id, revision, resolved}] of every hub model named in a job's params."""
    out, seen = [], set()
    for entry in _model_entries(params):
        key = (entry["hf_id"], entry.get("revision"))
        if key in seen:
            continue
        seen.add(key)
        out.append(
            {
                "hf_id": key[0],
                "revision": key[1],
                "resolved": resolved_revision(key[0], key[1]),
            }
        )
    return out
