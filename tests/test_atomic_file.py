"""``snapshot_tools.atomic_file``: what it refuses to replace, on entry and again at commit.

Real nodes in a temporary directory (tests/support/files.py): a character device (the same
numbers as ``/dev/null``, made with ``mknod``, so root only), a FIFO, a symlink to a regular file
and a dangling symlink. ``--force`` means "replace an existing regular file", never "replace whatever is
there": issue 9 found ``--force`` turning ``/dev/null`` into a file of plaintext.
"""

from __future__ import annotations

import os
import stat
from typing import TYPE_CHECKING

import pytest

from snapshot_tools.atomic_file import AtomicFile, check_target
from snapshot_tools.errors import OutputError
from tests.support.files import NODES, leftovers, make_node

if TYPE_CHECKING:
    from pathlib import Path


@pytest.mark.parametrize("force", [False, True])
@pytest.mark.parametrize("kind", NODES)
def test_refuses_a_target_that_is_not_a_regular_file(kind: str, force: bool, tmp_path: Path) -> None:
    target = tmp_path / "out.db"
    ident = make_node(kind, target)
    before = ident()
    with pytest.raises(OutputError, match="not a regular file") as info:
        AtomicFile(target, force=force)
    assert str(target) in str(info.value)
    assert "\n" not in str(info.value)
    assert ident() == before
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("kind", NODES)
def test_refuses_a_node_that_appears_before_commit(kind: str, tmp_path: Path) -> None:
    target = tmp_path / "out.db"
    with AtomicFile(target, force=True) as out:
        assert out.file is not None
        out.file.write(b"secret plaintext")
        ident = make_node(kind, target)  # swapped in while we wrote
        before = ident()
        with pytest.raises(OutputError, match="not a regular file"):
            out.commit()
    assert ident() == before
    assert leftovers(tmp_path) == []


def test_force_replaces_a_regular_file_and_keeps_its_other_links(tmp_path: Path) -> None:
    target = tmp_path / "out.db"
    target.write_bytes(b"old")
    os.link(target, tmp_path / "other-name")
    with AtomicFile(target, force=True) as out:
        assert out.file is not None
        out.file.write(b"new")
        out.commit()
    assert target.read_bytes() == b"new"
    assert (tmp_path / "other-name").read_bytes() == b"old"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert leftovers(tmp_path) == []


def test_inputs_are_refused_by_path_symlink_and_hard_link(tmp_path: Path) -> None:
    src = tmp_path / "in.db"
    src.write_bytes(b"input")
    os.link(src, tmp_path / "hard.db")
    (tmp_path / "soft.db").symlink_to(src)
    (tmp_path / "sub").mkdir()
    for out in (src, tmp_path / "." / "in.db", tmp_path / "sub" / ".." / "in.db", tmp_path / "hard.db",
                tmp_path / "soft.db"):  # fmt: skip
        with pytest.raises(OutputError, match="the output is the input"):
            check_target(out, force=True, inputs=[src])
        # And the input named through a symlink or the hard link, the output by its own name.
        with pytest.raises(OutputError, match="the output is the input"):
            check_target(src, force=True, inputs=[out])
    assert src.read_bytes() == b"input"


def test_an_absent_target_and_a_missing_directory(tmp_path: Path) -> None:
    assert check_target(tmp_path / "new.db", force=False) == tmp_path / "new.db"
    with pytest.raises(OutputError, match="does not exist"):
        check_target(tmp_path / "nope" / "new.db", force=True)
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(OutputError, match="does not exist"):
        check_target(tmp_path / "file" / "new.db", force=True)
    (tmp_path / "dir").mkdir()
    with pytest.raises(OutputError, match="is a directory"):
        check_target(tmp_path / "dir", force=True)
