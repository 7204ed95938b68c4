"""The on-disk protocol that makes checkpoints survive a kill at any moment.

A checkpoint directory holds complete checkpoints under tags `v<version>` (`v<version>.<n>`
when that version was saved before: periodic and final saves never write over a complete
checkpoint), a `latest` file naming the one to resume, and possibly leftovers of an
interrupted save (`.tmp-<tag>`) or deletion (`.trash-<tag>`), which nothing reads.

A save writes under `.tmp-<tag>` and renames the directory into place once every file is on
disk; that rename is the moment the checkpoint exists. `latest` is replaced atomically (temp
file, fsync, rename, fsync of the directory). A deletion renames the tag away first, so a
half-deleted directory never looks complete. `latest` is the truth; when it names nothing
complete (a hand-edited or foreign directory), the newest complete tag is used instead.
No torch here: this is plain files, tested as such.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

logger = logging.getLogger(__name__)

POINTER = "latest"
TMP_PREFIX = ".tmp-"
TRASH_PREFIX = ".trash-"
_TAG = re.compile(r"v(\d+)(?:\.(\d+))?")


def tag_key(tag: str) -> tuple[int, int] | None:
    """(version, repeat) of a tag, None for anything that is not one."""
    m = _TAG.fullmatch(tag)
    if m is None:
        return None
    return int(m.group(1)), int(m.group(2) or 0)


def tag_version(tag: str) -> int:
    key = tag_key(tag)
    if key is None:
        raise ValueError(f"not a checkpoint tag: {tag!r}")
    return key[0]


def complete_tags(root: Path) -> list[str]:
    """Complete checkpoints in `root`, oldest first."""
    if not root.is_dir():
        return []
    tags = [p.name for p in root.iterdir() if p.is_dir() and tag_key(p.name) is not None]
    return sorted(tags, key=lambda t: tag_key(t))


def next_tag(root: Path, version: int) -> str:
    """A tag for a new save at `version` that names no existing directory, complete or not."""
    taken = {p.name for p in root.iterdir()} if root.is_dir() else set()
    tag, n = f"v{version}", 0
    while tag in taken or f"{TMP_PREFIX}{tag}" in taken or f"{TRASH_PREFIX}{tag}" in taken:
        n += 1
        tag = f"v{version}.{n}"
    return tag


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: Path) -> None:
    """Every file and directory below `path` on disk (what a power loss must not lose once the
    tag is renamed into place; a process kill alone would not need it)."""
    for dirpath, _, files in os.walk(path):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))


def commit(root: Path, tag: str) -> None:
    """Make the finished `.tmp-<tag>` the complete checkpoint `<tag>`."""
    tmp = root / f"{TMP_PREFIX}{tag}"
    fsync_tree(tmp)
    os.rename(tmp, root / tag)
    fsync_dir(root)


def read_pointer(root: Path) -> str | None:
    try:
        text = (root / POINTER).read_text().strip()
    except FileNotFoundError:
        return None
    return text or None


def write_pointer(root: Path, tag: str) -> None:
    tmp = root / f"{TMP_PREFIX}{POINTER}"
    with open(tmp, "w") as f:
        f.write(tag)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, root / POINTER)
    fsync_dir(root)


def resolve(root: Path) -> str | None:
    """The tag to resume from: the one `latest` names if it is complete, else the newest
    complete tag, else None."""
    tags = complete_tags(root)
    pointed = read_pointer(root)
    if pointed in tags:
        return pointed
    if not tags:
        return None
    logger.warning(
        "checkpoint pointer %s names %s, which is not a complete checkpoint; using %s",
        root / POINTER,
        pointed,
        tags[-1],
    )
    return tags[-1]


def remove(root: Path, name: str) -> None:
    """Delete `root/name`, first renamed out of the set of complete tags."""
    src = root / name
    if not src.exists():
        return
    trash = root / (name if name.startswith(TRASH_PREFIX) else f"{TRASH_PREFIX}{name}")
    if trash != src:
        if trash.exists():
            shutil.rmtree(trash)
        os.rename(src, trash)
    shutil.rmtree(trash)


def clean_stale(root: Path) -> list[str]:
    """Remove what interrupted saves and deletions left; returns the names removed. Only while
    no save is under way (rank 0, before a save or a resume)."""
    if not root.is_dir():
        return []
    stale = [p.name for p in root.iterdir() if p.name.startswith((TMP_PREFIX, TRASH_PREFIX))]
    for name in stale:
        path = root / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    if stale:
        logger.info("removed %d leftovers of an interrupted save in %s", len(stale), root)
    return stale


def prune(root: Path, keep: list[str]) -> list[str]:
    """Delete every complete tag in `root` that is not in `keep`; returns those deleted."""
    gone = [t for t in complete_tags(root) if t not in keep]
    for tag in gone:
        remove(root, tag)
    return gone
