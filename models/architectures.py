"""The registry of model architectures: a name -> (module, config, featuriser) triple.

Everything that builds, saves or reloads a model goes through here, so training, export and the
registry's ``model.pt`` work the same for every architecture. ``model.pt`` names its architecture;
files written before the transformer existed have none and are the default model.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import torch

from .base import IntentClassifier
from .classifier import BagOfNgramsClassifier, ClassifierConfig
from .featurize import Featurizer, HashingFeaturizer, HashingTokenizer
from .transformer import TransformerClassifier, TransformerConfig

__all__ = ["ARCHITECTURES", "DEFAULT_ARCHITECTURE", "Architecture", "build_model", "get_architecture", "load_weights", "save_weights"]


@dataclass(frozen=True)
class Architecture:
    name: str
    model: type[IntentClassifier]
    config: type
    featurizer: type
    lr: float  # the learning rate it trains well at from scratch (AdamW), at 64 examples per step
    epochs: int
    batch_size: int = 64  # examples per micro-batch when TrainSettings leaves it open

    def new_featurizer(self, config: Any) -> Featurizer:
        if self.featurizer is HashingTokenizer:
            return HashingTokenizer(buckets=config.buckets, max_features=config.max_len)
        return HashingFeaturizer(buckets=config.buckets)


DEFAULT_ARCHITECTURE = "bag_of_ngrams"
ARCHITECTURES: dict[str, Architecture] = {
    "bag_of_ngrams": Architecture("bag_of_ngrams", BagOfNgramsClassifier, ClassifierConfig, HashingFeaturizer, lr=5e-3, epochs=20, batch_size=128),
    "transformer": Architecture("transformer", TransformerClassifier, TransformerConfig, HashingTokenizer, lr=1e-3, epochs=12),
}


def get_architecture(name: str) -> Architecture:
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown model architecture {name!r}; known: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[name]


def build_model(name: str, num_labels: int, config: Any = None) -> IntentClassifier:
    arch = get_architecture(name)
    return arch.model(config or arch.config(), num_labels)


def save_weights(model: IntentClassifier) -> bytes:
    buffer = io.BytesIO()
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"architecture": model.architecture, "config": model.config.to_dict(), "state_dict": state}, buffer)
    return buffer.getvalue()


def load_weights(data: bytes) -> IntentClassifier:
    """A model from ``model.pt`` bytes (weights only: ``weights_only=True`` never runs pickled code)."""
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
