"""Logging to stderr as text or one JSON object per line (``--log-format``).

Messages never carry key material or plaintext: callers log ids, hashed key_ids and reasons.

Every gRPC call is one record on :data:`CALLS_LOGGER` (``kms_plugin.service.calls``) with the
fields ``api``, ``method``, ``code``, ``latency_ms``, ``key_id_hash`` and ``request_id``: as JSON
they are top-level keys. In text format successful calls are shown only at ``--log-level debug``
(a busy apiserver makes hundreds a second); failed ones always are.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import time

_EXTRA = ("api", "method", "code", "latency_ms", "key_id_hash", "request_id")
CALLS_LOGGER = "kms_plugin.service.calls"

_HASHES: dict[str, str] = {}


def key_id_hash(key_id: str) -> str:
    """``sha256:<hex>`` of a key_id: the form kube-apiserver uses in its envelope metrics
    (``key_id_hash`` label) and errors, so the plugin's lines join with the apiserver's."""
    found = _HASHES.get(key_id)
    if found is None:
        found = "sha256:" + hashlib.sha256(key_id.encode()).hexdigest()
        if len(_HASHES) >= 256:  # key_ids are few; made-up ones must not grow this
            _HASHES.clear()
        _HASHES[key_id] = found
    return found


class JSONFormatter(logging.Formatter):
    """One JSON object per record, with the call's fields (:data:`_EXTRA`) when present."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name in _EXTRA:
            value = getattr(record, name, None)
            if value is not None and value != "":
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
    # One line per successful call: always as JSON, only when debugging as text.
    quiet = fmt != "json" and level.lower() != "debug"
    logging.getLogger(CALLS_LOGGER).setLevel(logging.WARNING if quiet else logging.NOTSET)
