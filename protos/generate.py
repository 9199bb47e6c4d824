#!/usr/bin/env python3
"""Regenerate the committed protobuf/gRPC modules from the .proto sources in this folder.

Usage: python protos/generate.py [--check]

Each source is compiled on its own (no imports between our protos) into the package that owns
it, with a ``.pyi`` stub of its messages for type checkers; gRPC stubs get a relative import so the
packages stay importable from anywhere.
``--check`` regenerates into a temporary folder and exits 1 when any committed file differs.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"

# source -> (output package folder, with gRPC stubs)
TARGETS: dict[str, tuple[str, bool]] = {
    "etcd_kv.proto": ("snapshot_tools/proto", False),
    "kmsv2_encrypted_object.proto": ("snapshot_tools/proto", False),
    "kms_v2.proto": ("kms_plugin/proto", True),
    "kms_v1beta1.proto": ("kms_plugin/proto", True),
}


def _compile(source: str, out_dir: Path, grpc: bool) -> list[Path]:
    from grpc_tools import protoc

    # The .pyi files give mypy the message classes (the _pb2 modules build them at run time).
    args = ["protoc", f"-I{PROTOS}", f"--python_out={out_dir}", f"--pyi_out={out_dir}"]
    if grpc:
        args.append(f"--grpc_python_out={out_dir}")
    args.append(str(PROTOS / source))
    if protoc.main(args) != 0:
        raise SystemExit(f"protoc failed on {source}")
    stem = source.removesuffix(".proto")
    produced = [out_dir / f"{stem}_pb2.py", out_dir / f"{stem}_pb2.pyi"]
    if grpc:
        stub = out_dir / f"{stem}_pb2_grpc.py"
        text = stub.read_text()
        text = re.sub(rf"^import {stem}_pb2 as", f"from . import {stem}_pb2 as", text, flags=re.M)
        stub.write_text(text)
        produced.append(stub)
    return produced


def generate(dest_root: Path) -> list[Path]:
    """Compile every target under ``dest_root``; return the paths written, relative to it."""
    written = []
    for source, (package, grpc) in sorted(TARGETS.items()):
        out_dir = dest_root / package
        out_dir.mkdir(parents=True, exist_ok=True)
        for path in _compile(source, out_dir, grpc):
            written.append(path.relative_to(dest_root))
    return written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the committed files")
    args = parser.parse_args()
    if not args.check:
        for rel in generate(ROOT):
            print(f"wrote {rel}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        stale = []
        for rel in generate(Path(tmp)):
            fresh = (Path(tmp) / rel).read_text()
            committed = (ROOT / rel).read_text() if (ROOT / rel).exists() else ""
            if fresh != committed:
                stale.append(str(rel))
                sys.stdout.writelines(
                    difflib.unified_diff(
                        committed.splitlines(True), fresh.splitlines(True), str(rel), "regenerated"
                    )
                )
    if stale:
        print(f"out of date: {', '.join(stale)}; run python protos/generate.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
