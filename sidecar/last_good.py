"""The last good state on disk, so a restarted sidecar still has something to roll back to.

After every successful apply the documents that produced it and what was applied are written
to one JSON file (a temporary file, then a rename: a crash leaves the old file or the new one,
never half of one), owner-only: broker.yaml may hold write-only values such as passwords. The
sidecar keeps it in its own cache volume, which the broker container does not mount and which,
like the plugin directory, survives a container restart. An unreadable or foreign file is
ignored with a warning: the sidecar then starts as it did before, with nothing to roll back to.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from plugforge.contract import Document
from sidecar.plan import Applied

log = logging.getLogger(__name__)
FORMAT = "plugforge-sidecar-last-good/1"


def save(path: Path, documents: Sequence[Document], applied: Applied) -> None:
    body = {"format": FORMAT,
            "documents": [[d.origin, d.key, d.text] for d in documents],
            "applied": {"config": dict(applied.config), "plugins": dict(applied.plugins),
                        "content_hash": applied.content_hash}}
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(body, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        log.warning("decision=last-good-not-saved path=%s error=%r", path, str(e))


def load(path: Path) -> tuple[list[Document], Applied] | None:
    try:
        body: Any = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        log.warning("decision=last-good-ignored path=%s error=%r", path, str(e))
        return None
    try:
        if body["format"] != FORMAT:
            raise ValueError(f"format {body['format']!r}")
        documents = [Document(str(o), str(k), str(t)) for o, k, t in body["documents"]]
        applied = body["applied"]
        return documents, Applied({str(k): str(v) for k, v in applied["config"].items()},
                                  {str(k): str(v) for k, v in applied["plugins"].items()},
                                  str(applied["content_hash"]))
    except (KeyError, TypeError, ValueError) as e:
        log.warning("decision=last-good-ignored path=%s error=%r", path, str(e))
        return None
