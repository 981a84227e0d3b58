"""A tiny, randomly initialised BERT checkpoint written to disk as Hugging Face lays one
out: the encoder architecture's code paths run on it in seconds, with no download.
Its WordPiece vocabulary covers the toy intents' words (tests/toy_intents.py) plus a
few sub-words, so texts tokenise to real ids, not [UNK]."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import BertConfig, BertModel

from tests.toy_intents import FILLERS, TEMPLATES

__all__ = ["TINY_BERT", "write_tiny_bert"]

TINY_BERT = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 64,
}
_SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# as BERT's pre-tokeniser splits lower-cased ASCII text (punctuation is added apart)
_WORD = re.compile(r"[a-z0-9]+")


def _vocabulary(texts: Iterable[str]) -> list[str]:
    words = {
        w
        for templates in TEMPLATES.values()
        for t in templates
        for w in _WORD.findall(t.format(x="").lower())
    }
    words |= {w for t in texts for w in _WORD.findall(t.lower())}
    words |= set(FILLERS) | set("abcdefghijklmnopqrstuvwxyz0123456789") | {",", ".", "!", "?", "'"}
    return _SPECIAL + sorted(words) + ["##s", "##ed", "##ing", "##er"]


def write_tiny_bert(
    root: Path, *, texts: Iterable[str] = (), sentence_transformers: bool = False, seed: int = 0
) -> Path:
    """A checkpoint directory at ``root`` (config.json, vocab.txt, tokenizer_config.json,
    model.safetensors), whose vocabulary also holds every word of ``texts``.
    ``sentence_transformers``: the same files in a sentence-transformers layout
    (modules.json, a pooling config, the transformer in the root folder)."""
    root.mkdir(parents=True, exist_ok=True)
    vocab = _vocabulary(texts)
    (root / "vocab.txt").write_text("\n".join(vocab) + "\n")
    (root / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True}))
    config = BertConfig(vocab_size=len(vocab), pad_token_id=0, **TINY_BERT)
    torch.manual_seed(seed)
    # a pooler, as published checkpoints have: mean pooling ignores it
    network = BertModel(config, add_pooling_layer=True)
    save_file(
        {k: v.contiguous() for k, v in network.state_dict().items()},
        str(root / "model.safetensors"),
    )
    (root / "config.json").write_text(config.to_json_string())
    if sentence_transformers:
        (root / "modules.json").write_text(
            json.dumps(
                [
                    {
                        "idx": 0,
                        "name": "0",
                        "path": "",
                        "type": "sentence_transformers.models.Transformer",
                    },
                    {
                        "idx": 1,
                        "name": "1",
                        "path": "1_Pooling",
                        "type": "sentence_transformers.models.Pooling",
                    },
                ]
            )
        )
        (root / "1_Pooling").mkdir(exist_ok=True)
        (root / "1_Pooling" / "config.json").write_text(
            json.dumps(
                {
                    "word_embedding_dimension": TINY_BERT["hidden_size"],
                    "pooling_mode_mean_tokens": True,
                    "pooling_mode_cls_token": False,
                }
            )
        )
    return root
