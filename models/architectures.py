"""The registry of model architectures: a name -> (module, config, featuriser) triple.

Everything that builds, saves or reloads a model goes through here, so training, export and the
registry's ``model.pt`` work the same for every architecture. ``model.pt`` names its architecture;
files written before the transformer existed have none and are the default model.

The bag of n-grams and the transformer start from random weights; the encoder starts
from a pretrained checkpoint (``EncoderConfig``, from
``encoder_config(models.encoder)``) and its featuriser is that checkpoint's tokenizer.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .base import IntentClassifier
from .checkpoints import resolve_checkpoint
from .classifier import BagOfNgramsClassifier, ClassifierConfig
from .encoder import EncoderClassifier, EncoderConfig, encoder_config
from .featurize import Featurizer, HashingFeaturizer, HashingTokenizer
from .gate import DEFAULT_LATENCY_BUDGET_MS
from .transformer import TransformerClassifier, TransformerConfig

__all__ = [
    "ARCHITECTURES",
    "DEFAULT_ARCHITECTURE",
    "Architecture",
    "EncoderSource",
    "get_architecture",
    "load_weights",
    "new_model_config",
    "save_weights",
]


@dataclass(frozen=True)
class Architecture:
    name: str
    model: type[IntentClassifier]
    config: type
    featurizer: Callable[[Any], Featurizer]  # the model config -> a new featuriser for it
    lr: float  # the learning rate it trains well at from scratch (AdamW), at 64 examples per step
    epochs: int
    batch_size: int = 64  # examples per micro-batch when TrainSettings leaves it open
    head_lr: float | None = None  # the same for the head alone, on a frozen encoder's embeddings
    head_epochs: int | None = None  # and its epochs (each a few matrix products: cheap)
    # a new model loads its checkpoint (its config says which): no config, no model
    pretrained: bool = False
    # the gate's p99 budget at batch 1 (INT8, one thread)
    latency_budget_ms: float = DEFAULT_LATENCY_BUDGET_MS
    # batches of texts of similar lengths (less padding through attention)
    bucket_by_length: bool = False

    def new_model(self, config: Any, num_labels: int) -> IntentClassifier:
        if self.pretrained:
            if config is None:
                raise _needs_an_encoder(self.name)
            return self.model.from_checkpoint(
                config, resolve_checkpoint(config.checkpoint, config.weights_sha256), num_labels
            )
        return self.model(config or self.config(), num_labels)

    def new_featurizer(self, config: Any) -> Featurizer:
        return self.featurizer(config)


def _needs_an_encoder(architecture: str) -> ValueError:
    return ValueError(
        f"architecture {architecture!r} starts from a pretrained checkpoint: set models.encoder"
    )


def _encoder_tokenizer(config: EncoderConfig) -> Featurizer:
    checkpoint = resolve_checkpoint(config.checkpoint, config.weights_sha256)
    return EncoderClassifier.tokenizer_of(checkpoint, config.max_len)


DEFAULT_ARCHITECTURE = "bag_of_ngrams"
ARCHITECTURES: dict[str, Architecture] = {
    "bag_of_ngrams": Architecture(
        "bag_of_ngrams",
        BagOfNgramsClassifier,
        ClassifierConfig,
        lambda c: HashingFeaturizer(buckets=c.buckets),
        lr=5e-3,
        epochs=20,
        batch_size=128,
    ),
    "transformer": Architecture(
        "transformer",
        TransformerClassifier,
        TransformerConfig,
        lambda c: HashingTokenizer(buckets=c.buckets, max_features=c.max_len),
        lr=1e-3,
        epochs=12,
    ),
    # lr: 1e-4 at its batch of 32 (x sqrt(32/64)). Fine-tuning MiniLM from its head for 3
    # epochs on CLINC150 in scope, 3.5e-5 gave 96.44% and 1e-4 96.73% (bench/encoder.py).
    "encoder": Architecture(
        "encoder",
        EncoderClassifier,
        EncoderConfig,
        _encoder_tokenizer,
        lr=1e-4 * math.sqrt(2),
        epochs=4,
        batch_size=32,
        head_lr=1e-3,
        head_epochs=40,
        pretrained=True,
        latency_budget_ms=25.0,
        bucket_by_length=True,
    ),
}


@dataclass(frozen=True)
class EncoderSource:
    """Which pretrained checkpoint a new "encoder" model
    starts from (``models.encoder`` and its companions)."""

    checkpoint: str
    # required weights hash of a checkpoint given by path; empty: recorded, not checked
    sha256: str = ""
    max_len: int = 64

    def config(self) -> EncoderConfig:
        return encoder_config(self.checkpoint, self.sha256, self.max_len)[0]


def new_model_config(architecture: str, encoder: EncoderSource | None = None) -> Any:
    """The config of a new model of ``architecture``: its
    default (None), or for the encoder its checkpoint's."""
    if not get_architecture(architecture).pretrained:
        return None
    if encoder is None:
        raise _needs_an_encoder(architecture)
    return encoder.config()


def get_architecture(name: str) -> Architecture:
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown model architecture {name!r}; known: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[name]


def save_weights(model: IntentClassifier) -> bytes:
    buffer = io.BytesIO()
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save(
        {"architecture": model.architecture, "config": model.config.to_dict(), "state_dict": state},
        buffer,
    )
    return buffer.getvalue()


def load_weights(data: bytes) -> IntentClassifier:
    """A model from ``model.pt`` bytes (weights only:
    ``weights_only=True`` never runs pickled code)."""
    saved = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    arch = get_architecture(saved.get("architecture", DEFAULT_ARCHITECTURE))
    config = saved["config"]
    if "char_ngrams" in config:  # tuples come back as lists
        config["char_ngrams"] = tuple(config["char_ngrams"])
    state = saved["state_dict"]
    model = arch.model(arch.config(**config), state["output.weight"].shape[0])
    model.load_state_dict(state)
    model.eval()
    return model
