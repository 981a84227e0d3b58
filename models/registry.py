"""Versioned model registry on a local filesystem: immutable
version directories plus a ``CURRENT`` pointer.

Layout::

    <root>/v000001/{model.onnx, labels.json, ..., manifest.json}
    <root>/v000002/...
    <root>/CURRENT          "v000002\\n": the live version

A version becomes visible in one ``os.rename`` of a fully written and fsynced temp directory
(``<root>/.tmp-<uuid>``), so a reader never sees half a version, whatever kills the publisher.
``manifest.json`` records the sha256 and size of every file, so damage after the fact (a truncated
copy, a flipped bit, a stray file) is caught by ``verify`` before a version can go live.
Version numbers are never reused: the next one is 1 + the highest directory present, corrupt or not.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["CODE_VERSION", "CorruptVersion", "Manifest", "Registry"]

MANIFEST = "manifest.json"
CURRENT = "CURRENT"
TMP_PREFIX = ".tmp-"
_VERSION_RE = re.compile(r"v\d{6}")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_CHUNK = 1 << 20


def _driftd_version() -> str:
    try:
        return metadata.version("driftd")
    except metadata.PackageNotFoundError:
        return "unknown"


CODE_VERSION = _driftd_version()


class CorruptVersion(Exception):
    """A version directory that does not match its manifest. ``problems``
    lists every mismatch found; ``manifest`` is the manifest as read,
    when it could be read (so a listing can still show its dates)."""

    def __init__(self, version: str, problems: list[str], manifest: Manifest | None = None) -> None:
        super().__init__(f"{version} is corrupt: {'; '.join(problems)}")
        self.version = version
        self.problems = problems
        self.manifest = manifest


@dataclass(frozen=True)
class Manifest:
    """What a version holds and where it came from. ``files`` maps a file name to its sha256 and
    byte count; ``info`` is free-form (training window, data counts, metrics, gate verdict)."""

    version: str
    parent: str | None
    created_at: float
    code_version: str
    files: dict[str, dict[str, Any]]
    info: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        """Parse and check the shape strictly; raises ``ValueError``
        (``json.JSONDecodeError`` is one) saying what is off."""
        raw = json.loads(text)
        if not isinstance(raw, dict):
            raise ValueError(f"expected an object, got {type(raw).__name__}")
        expected = {"version", "parent", "created_at", "code_version", "files", "info"}
        if missing := expected - raw.keys():
            raise ValueError(f"missing keys {sorted(missing)}")
        if extra := raw.keys() - expected:
            raise ValueError(f"unknown keys {sorted(extra)}")
        if not isinstance(raw["version"], str) or not _VERSION_RE.fullmatch(raw["version"]):
            raise ValueError(f"version {raw['version']!r} is not like v000001")
        if raw["parent"] is not None and (
            not isinstance(raw["parent"], str) or not _VERSION_RE.fullmatch(raw["parent"])
        ):
            raise ValueError(f"parent {raw['parent']!r} is neither null nor like v000001")
        if isinstance(raw["created_at"], bool) or not isinstance(raw["created_at"], (int, float)):
            raise ValueError(f"created_at {raw['created_at']!r} is not a number")
        if not isinstance(raw["code_version"], str):
            raise ValueError(f"code_version {raw['code_version']!r} is not a string")
        if not isinstance(raw["info"], dict):
            raise ValueError("info is not an object")
        if not isinstance(raw["files"], dict):
            raise ValueError("files is not an object")
        for name, entry in raw["files"].items():
            if not isinstance(entry, dict) or entry.keys() != {"sha256", "bytes"}:
                raise ValueError(f"files[{name!r}] is not {{sha256, bytes}}")
            if not isinstance(entry["sha256"], str) or not _SHA256_RE.fullmatch(entry["sha256"]):
                raise ValueError(f"files[{name!r}].sha256 is not 64 lowercase hex digits")
            if (
                isinstance(entry["bytes"], bool)
                or not isinstance(entry["bytes"], int)
                or entry["bytes"] < 0
            ):
                raise ValueError(f"files[{name!r}].bytes is not a non-negative integer")
        return cls(
            version=raw["version"],
            parent=raw["parent"],
            created_at=float(raw["created_at"]),
            code_version=raw["code_version"],
            files=raw["files"],
            info=raw["info"],
        )


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: Path, source: bytes | Path) -> dict[str, Any]:
    """Write ``source`` to ``path`` (streamed when it is
    a file), fsync, and return its manifest entry."""
    digest, size = hashlib.sha256(), 0
    with open(path, "xb") as out:
        if isinstance(source, (bytes, bytearray, memoryview)):
            data = bytes(source)
            digest.update(data)
            out.write(data)
            size = len(data)
        else:
            with open(source, "rb") as src:
                while chunk := src.read(_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
        out.flush()
        os.fsync(out.fileno())
    return {"sha256": digest.hexdigest(), "bytes": size}


def _hash_file(path: Path) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _check_name(name: str) -> None:
    if not name or name in {".", "..", MANIFEST} or "/" in name or "\\" in name or "\0" in name:
        raise ValueError(
            f"{name!r} cannot be a file name in a version (plain names only, not {MANIFEST})"
        )


class Registry:
    """The versions under ``root``. Safe for several
    publishers and readers at once on one local filesystem."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    # --- reading -------------------------------------------------------------------------------

    def versions(self) -> list[str]:
        """Every version directory, oldest first, corrupt ones included; temp directories never."""
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:
            return []
        return sorted(n for n in names if _VERSION_RE.fullmatch(n) and (self.root / n).is_dir())

    def path(self, version: str, name: str) -> Path:
        self._check_version(version)
        _check_name(name)
        return self.root / version / name

    def verify(self, version: str, hash_only: Collection[str] | None = None) -> Manifest:
        """Check the version against its manifest; raises ``CorruptVersion`` listing every mismatch,
        ``ValueError`` when there is no such version. Every file's presence and size are checked;
        its sha256 is recomputed unless ``hash_only`` names the files to hash (a loader that
        hashes what it reads passes ``()`` rather than hashing the large files it never uses)."""
        self._check_version(version)
        vdir = self.root / version
        if not vdir.is_dir():
            raise ValueError(f"no version {version} in {self.root}")
        manifest = self._read_manifest(version)
        problems: list[str] = []
        if manifest.version != version:
            problems.append(f"{MANIFEST} says it is {manifest.version}")
        for name, entry in sorted(manifest.files.items()):
            path = vdir / name
            if not path.is_file():
                problems.append(f"{name} is listed in {MANIFEST} but missing")
                continue
            size = path.stat().st_size
            if size != entry["bytes"]:
                problems.append(f"{name} is {size} bytes, {MANIFEST} says {entry['bytes']}")
                continue
            if hash_only is not None and name not in hash_only:
                continue
            sha, _ = _hash_file(path)
            if sha != entry["sha256"]:
                problems.append(f"{name} has sha256 {sha}, {MANIFEST} says {entry['sha256']}")
        for name in sorted(set(os.listdir(vdir)) - set(manifest.files) - {MANIFEST}):
            problems.append(f"{name} is present but not listed in {MANIFEST}")
        if problems:
            raise CorruptVersion(version, problems, manifest)
        return manifest

    def entries(self) -> list[tuple[str, Manifest | CorruptVersion]]:
        """Every version with its verified manifest or the reason it is corrupt; never raises
        on a bad one. Re-hashes everything, so it costs a read of the whole registry."""
        out: list[tuple[str, Manifest | CorruptVersion]] = []
        for version in self.versions():
            try:
                out.append((version, self.verify(version)))
            except CorruptVersion as exc:
                out.append((version, exc))
        return out

    def current(self) -> str | None:
        """The live version as ``CURRENT`` names it, or None before the first ``set_current``."""
        try:
            text = (self.root / CURRENT).read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        return text or None

    # --- writing -------------------------------------------------------------------------------

    def publish(
        self,
        files: Mapping[str, bytes | Path],
        *,
        parent: str | None,
        info: dict[str, Any],
        code_version: str = CODE_VERSION,
    ) -> Manifest:
        """Write ``files`` as a new version and return its manifest. Does not make it current.

        Everything is written and fsynced in a temp directory, ``manifest.json`` last, then the
        directory is renamed into place: a version is visible complete or not at all. A publisher
        that loses the race for a number (the rename finds the target taken) takes the next one.
        """
        for name in files:
            _check_name(name)
        if parent is not None:
            self._check_version(parent)
            if not (self.root / parent).is_dir():
                raise ValueError(f"parent {parent} is not a version in {self.root}")
        json.dumps(info)  # fail before writing anything if info cannot be stored
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f"{TMP_PREFIX}{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            entries = {name: _write_file(tmp / name, source) for name, source in files.items()}
            created_at = time.time()
            number = self._next_number()
            while True:
                version = f"v{number:06d}"
                manifest = Manifest(version, parent, created_at, code_version, entries, dict(info))
                # rewritten with the new number on a retry
                with open(tmp / MANIFEST, "w", encoding="utf-8") as f:
                    f.write(manifest.to_json())
                    f.flush()
                    os.fsync(f.fileno())
                _fsync_dir(tmp)
                target = self.root / version
                # rename(2) would silently replace an *empty* directory;
                # ours never are, but a hand-made one might be.
                if not target.exists():
                    try:
                        os.rename(tmp, target)
                    except OSError as exc:
                        if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                            raise
                    else:
                        _fsync_dir(self.root)
                        return manifest
                number = max(number + 1, self._next_number())
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def set_current(self, version: str, hash_only: Collection[str] | None = None) -> None:
        """Make ``version`` live. Verifies it first (``hash_only`` as for ``verify``):
        a corrupt one raises ``CorruptVersion`` and CURRENT stays. A hot swap
        passes ``()``: its load has just hashed the files it serves, and hashing
        the training files (~35 MB) again on every swap took CPU the request path
        needs; a fine-tune verifies those before it warm-starts from them."""
        self.verify(version, hash_only)
        tmp = self.root / f"{TMP_PREFIX}{uuid.uuid4().hex}.{CURRENT}"
        try:
            with open(tmp, "x", encoding="utf-8") as f:
                f.write(version + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.root / CURRENT)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(self.root)

    def rollback(self, to: str | None = None) -> str:
        """Make ``to`` live, or the current version's parent
        when ``to`` is None; returns the new current.

        The parent is read from the current manifest without re-hashing, so a rollback
        away from a corrupt current version still works; the target is always verified.
        """
        if to is None:
            cur = self.current()
            if cur is None:
                raise ValueError(
                    f"no current version in {self.root}: name the version to roll back to"
                )
            to = self._read_manifest(cur).parent
            if to is None:
                raise ValueError(
                    f"current version {cur} has no parent: name the version to roll back to"
                )
        self.set_current(to)
        return to

    def staging_dir(self) -> Path:
        """A new empty directory inside the registry root for files about to
        be published (same filesystem; a leftover is swept by
        ``remove_stale_temp`` like any ``.tmp-*``). The caller removes it."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / f"{TMP_PREFIX}{uuid.uuid4().hex}.staging"
        path.mkdir()
        return path

    def remove_stale_temp(self, older_than_s: float = 3600) -> list[str]:
        """Delete ``.tmp-*`` leftovers of crashed publishers
        untouched for ``older_than_s``; returns their names.

        A leftover is first renamed aside, so a live (merely slow) publisher
        either wins its own rename, and the leftover is skipped, or fails
        its rename loudly, never publishing a directory being deleted.
        """
        try:
            names = [n for n in os.listdir(self.root) if n.startswith(TMP_PREFIX)]
        except FileNotFoundError:
            return []
        removed: list[str] = []
        now = time.time()
        for name in names:
            path = self.root / name
            try:
                if now - _last_touched(path) < older_than_s:
                    continue
                if path.is_dir() and not path.is_symlink():
                    doomed = self.root / f"{TMP_PREFIX}{uuid.uuid4().hex}.stale"
                    os.rename(path, doomed)
                    shutil.rmtree(doomed)
                else:
                    path.unlink()
            except FileNotFoundError:  # published or removed by someone else meanwhile
                continue
            removed.append(name)
        return removed

    # --- helpers -------------------------------------------------------------------------------

    def _next_number(self) -> int:
        versions = self.versions()
        return int(versions[-1][1:]) + 1 if versions else 1

    def _read_manifest(self, version: str) -> Manifest:
        try:
            text = (self.root / version / MANIFEST).read_bytes()
        except FileNotFoundError:
            raise CorruptVersion(version, [f"missing {MANIFEST}"]) from None
        try:
            return Manifest.from_json(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CorruptVersion(version, [f"{MANIFEST} is not valid JSON ({exc})"]) from None
        except ValueError as exc:
            raise CorruptVersion(version, [f"{MANIFEST} has the wrong shape ({exc})"]) from None

    @staticmethod
    def _check_version(version: str) -> None:
        if not isinstance(version, str) or not _VERSION_RE.fullmatch(version):
            raise ValueError(f"{version!r} is not a version name (like v000001)")


def _last_touched(path: Path) -> float:
    """Newest mtime of ``path`` and its direct entries: a
    publisher streaming one big file keeps it fresh."""
    latest = path.lstat().st_mtime
    if path.is_dir() and not path.is_symlink():
        for entry in os.scandir(path):
            with contextlib.suppress(FileNotFoundError):
                latest = max(latest, entry.stat(follow_symlinks=False).st_mtime)
    return latest
