"""Kept for resolve.py until issue 10's readers land; the forms and their prefixes now live in
:mod:`snapshot_tools.providers.registry` (import from there)."""

from __future__ import annotations

from snapshot_tools.providers.registry import ENCRYPTED_PREFIX, FORMATS, storage_form

__all__ = ["ENCRYPTED_PREFIX", "PREFIXES", "storage_form"]

# prefix -> form name, as resolve.py reads them
PREFIXES: tuple[tuple[bytes, str], ...] = tuple((f.prefix, f.name) for f in FORMATS)
