"""The registry on shared object storage (``s3://``
or any fsspec URL), for replicas on several hosts.

``MirroredRegistry`` is a ``Registry`` whose local directory is a working
copy (ONNX Runtime loads files from it) and whose truth is remote::

    <url>/v000001/{model.onnx, ..., manifest.json}
    <url>/CURRENT

Object stores have no rename, so completeness is marked by order: a version's files are
uploaded first and its ``manifest.json`` last; a version without a manifest is invisible.
``CURRENT`` is one object, replaced whole by a PUT. Publishing writes the local version
(atomic, as ever), then uploads it; ``set_current`` writes the remote ``CURRENT``, then the
local one. Reading a version present only remotely downloads it into a staging directory,
checks every file against the manifest, and renames it into the local root: a corrupt or
partial download is refused (``CorruptVersion``) and never lands in the working copy.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import fsspec

from .registry import (
    _VERSION_RE,
    CODE_VERSION,
    CURRENT,
    MANIFEST,
    CorruptVersion,
    Manifest,
    Registry,
    _hash_file,
)

__all__ = ["MirroredRegistry", "open_registry"]


def open_registry(
    root: Path | str, url: str = "", storage_options: dict[str, Any] | None = None
) -> Registry:
    """The local registry at ``root``, mirrored to ``url`` when one is given."""
    return MirroredRegistry(root, url, storage_options) if url else Registry(root)


class MirroredRegistry(Registry):
    """A local working copy of the versions under ``url``
    (read through fsspec with ``storage_options``)."""

    def __init__(
        self, root: Path | str, url: str, storage_options: dict[str, Any] | None = None
    ) -> None:
        super().__init__(root)
        self.url = url.rstrip("/")
        self.fs, self._base = fsspec.core.url_to_fs(self.url, **(storage_options or {}))
        self._base = self._base.rstrip("/")

    # --- the remote side
    # ---------------------------------------------------------------------------

    def _remote(self, *parts: str) -> str:
        return "/".join((self._base, *parts))

    def remote_versions(self) -> list[str]:
        """Complete remote versions (their manifest uploaded), oldest first."""
        # listings are cached per filesystem; another host publishes
        self.fs.invalidate_cache(self._base)
        try:
            manifests = self.fs.glob(self._remote("v*", MANIFEST))
        except FileNotFoundError:
            return []
        names = {Path(p).parent.name for p in manifests}
        return sorted(n for n in names if _VERSION_RE.fullmatch(n))

    def fetch(self, version: str) -> bool:
        """Make ``version`` local if only the remote has it; returns whether it downloaded. Raises
        ``CorruptVersion`` when the remote copy does
        not match its manifest (nothing lands locally)."""
        self._check_version(version)
        if (self.root / version).is_dir():
            return False
        try:
            manifest_bytes = self.fs.cat_file(self._remote(version, MANIFEST))
        except FileNotFoundError:
            # not published (or not complete) remotely either: the caller reports "no version"
            return False
        try:
            manifest = Manifest.from_json(manifest_bytes)
        except ValueError as exc:
            raise CorruptVersion(version, [f"remote {MANIFEST} is unreadable ({exc})"]) from None
        staging = self.staging_dir()
        try:
            problems: list[str] = []
            for name, entry in sorted(manifest.files.items()):
                target = staging / name
                try:
                    self.fs.get_file(self._remote(version, name), str(target))
                except FileNotFoundError:
                    problems.append(f"{name} is listed in {MANIFEST} but missing remotely")
                    continue
                sha, size = _hash_file(target)
                if (sha, size) != (entry["sha256"], entry["bytes"]):
                    problems.append(
                        f"remote {name} has sha256 {sha} ({size} bytes), {MANIFEST} "
                        f"says {entry['sha256']} ({entry['bytes']} bytes)"
                    )
            if problems:
                raise CorruptVersion(version, problems, manifest)
            (staging / MANIFEST).write_bytes(manifest_bytes)
            try:
                os.rename(staging, self.root / version)
            except OSError:  # another reader of this working copy fetched it first
                if not (self.root / version).is_dir():
                    raise
                return False
            return True
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def push(self, version: str) -> None:
        """Upload a local version: its files, then its manifest (which makes it visible)."""
        manifest = super().verify(version)
        local_manifest = (self.root / version / MANIFEST).read_bytes()
        try:
            remote_manifest = self.fs.cat_file(self._remote(version, MANIFEST))
        except FileNotFoundError:
            remote_manifest = None
        if remote_manifest == local_manifest:
            return  # already there
        # two publishers took one number: never overwrite what others may serve
        if remote_manifest is not None:
            raise FileExistsError(
                f"{version} is already published at {self.url} with other contents; "
                "is a second replica training?"
            )
        for name in sorted(manifest.files):
            self.fs.put_file(str(self.path(version, name)), self._remote(version, name))
        self.fs.put_file(str(self.root / version / MANIFEST), self._remote(version, MANIFEST))

    # --- Registry, with the remote as the truth ---------------------------------------------------

    def versions(self) -> list[str]:
        return sorted(set(super().versions()) | set(self.remote_versions()))

    def current(self) -> str | None:
        try:
            text = self.fs.cat_file(self._remote(CURRENT)).decode("utf-8").strip()
        except FileNotFoundError:
            return None
        return text or None

    def verify(self, version: str, hash_only: Collection[str] | None = None) -> Manifest:
        self.fetch(version)
        return super().verify(version, hash_only)

    def publish(
        self,
        files: Mapping[str, bytes | Path],
        *,
        parent: str | None,
        info: dict[str, Any],
        code_version: str = CODE_VERSION,
    ) -> Manifest:
        if parent is not None:
            self.fetch(parent)
        manifest = super().publish(files, parent=parent, info=info, code_version=code_version)
        self.push(manifest.version)
        return manifest

    def set_current(self, version: str, hash_only: Collection[str] | None = None) -> None:
        self.verify(version, hash_only)
        if version not in self.remote_versions():
            self.push(version)  # published before the mirror was configured
        self.fs.pipe_file(self._remote(CURRENT), (version + "\n").encode())
        super().set_current(version, hash_only=())  # verified just above

    def _next_number(self) -> int:
        versions = self.versions()  # remote included: a new trainer never reuses a number
        return int(versions[-1][1:]) + 1 if versions else 1

    def _read_manifest(self, version: str) -> Manifest:
        self.fetch(version)
        return super()._read_manifest(version)
