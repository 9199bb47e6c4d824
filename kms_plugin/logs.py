"""Logging to stderr as text or one JSON object per line (``--log-format``).

Messages never carry key material or plaintext: callers log ids, hashed key_ids and reasons.
"""

from __future__ import annotations

import json
import logging
import sys
import time

_EXTRA = ("uid", "code")


class JSONFormatter(logging.Formatter):
    """One JSON object per record, with the request uid and gRPC code when present."""

    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name in _EXTRA:
            value = getattr(record, name, None)
            if value:
                doc[name] = value
        return json.dumps(doc, separators=(",", ":"))


def setup_logging(fmt: str = "text", level: str = "info") -> None:
    """Configure the ``kms_plugin`` loggers; ``fmt`` is ``text`` or ``json``."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
        )
    root = logging.getLogger("kms_plugin")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
