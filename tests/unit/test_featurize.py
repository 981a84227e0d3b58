"""The hashing featurisers: deterministic ids, the JSON round trip, the
word-id memo shared across versions, tokenisation of every script
(version 2), and version 1 files giving exactly the ids they always gave."""

from __future__ import annotations

import itertools
import json
import pickle
import re
import time
import zlib

import pytest

from models.featurize import (
    FEATURIZER_VERSION,
    HashingFeaturizer,
    HashingTokenizer,
    featurizer_from_json,
    tokenize,
)

# Texts for the legacy comparison: English, other scripts
# (version 1 drops them), punctuation, apostrophes, digits.
TEXTS = [
    "Card LOST!",
    "where's my parcel, it's been 3 days",
    "I'd like to transfer $500 to Bob's account",
    "",
    "   ",
    "internationalisation of the very-long-hyphenated-word",
    "ＡＢＣ fullwidth",
    "Straße STRASSE",
    "我想订iPhone 15的票，谢谢！",
    "Привет, как дела?",
    "I ❤️ pizza 🍕",
    "don’t can't won't",
    "x" * 600,
    " ".join(["word"] * 80),
    "Café naïve résumé",
    "مرحبا بالعالم",
    "हिन्दी भाषा",
]


def _legacy_features(
    text: str, buckets: int, char_ngrams: tuple[int, ...], word_bigrams: bool, max_features: int
) -> list[int]:
    """The version 1 algorithm as it shipped, kept here as the
    reference old registry versions must keep matching."""
    words = re.findall(r"[a-z0-9']+", text.lower())
    ids = [i for word in words for i in _ids_by_hand(word, buckets, char_ngrams)]
    if word_bigrams:
        ids += [
            zlib.crc32(f"b:{a} {b}".encode()) % (buckets - 1) + 1
            for a, b in itertools.pairwise(words)
        ]
    return ids[:max_features]


def _legacy_tokens(text: str, buckets: int, max_features: int) -> list[int]:
    ids = []
    for word in re.findall(r"[a-z0-9']+", text.lower()):
        ids.append(zlib.crc32(f"w:{word}".encode()) % (buckets - 1) + 1)
        if len(word) > 12:
            ids.append(zlib.crc32(f"p:{word[:6]}".encode()) % (buckets - 1) + 1)
    return ids[:max_features]


def _ids_by_hand(word: str, buckets: int, char_ngrams: tuple[int, ...]) -> tuple[int, ...]:
    marked = f"<{word}>"
    grams = [f"w:{word}"] + [
        f"c:{marked[i : i + n]}" for n in char_ngrams for i in range(max(1, len(marked) - n + 1))
    ]
    return tuple(zlib.crc32(g.encode()) % (buckets - 1) + 1 for g in grams)


def test_features_are_the_documented_hashes_and_stop_at_max_features():
    f = HashingFeaturizer(buckets=1 << 12, char_ngrams=(3,), max_features=10, version=1)
    expected = list(_ids_by_hand("card", 1 << 12, (3,)) + _ids_by_hand("lost", 1 << 12, (3,)))
    expected.append(zlib.crc32(b"b:card lost") % ((1 << 12) - 1) + 1)
    assert f.features("Card LOST!") == expected[:10]
    assert f.batch(["", "card"]).shape == (2, len(_ids_by_hand("card", 1 << 12, (3,))))


def test_versions_with_one_configuration_share_the_word_memo_and_others_do_not():
    a = HashingFeaturizer(version=1)
    b = featurizer_from_json(a.to_json())  # a swapped-in version that kept its parent's featuriser
    other = HashingFeaturizer(buckets=1 << 14, version=1)
    assert b == a and b._word_ids is a._word_ids
    assert other._word_ids is not a._word_ids
    a.features("where is my parcel")
    hits = b._word_ids.cache_info().hits
    b.features("where is my parcel")
    # every word was already hashed for the other version
    assert b._word_ids.cache_info().hits == hits + 4
    assert other.features("where is my parcel") != a.features("where is my parcel")


def test_pickled_featurisers_rebuild_their_memo_and_give_the_same_ids():
    a = HashingFeaturizer(buckets=1 << 13)
    clone = pickle.loads(pickle.dumps(a))  # the fine-tune child receives featurisers this way
    assert clone.batch(["refund my shoes"]).tolist() == a.batch(["refund my shoes"]).tolist()


def test_tokenizer_round_trips_through_json():
    for version in (1, 2):
        t = HashingTokenizer(buckets=1 << 10, max_features=8, version=version)
        assert featurizer_from_json(t.to_json()) == t
        # 5 words + one 6-char prefix
        assert len(t.features("a very long internationalisation question")) == 6


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("我想订票", [("u", "我想订票")]),
        ("Привет, как ДЕЛА?", [("w", "привет"), ("w", "как"), ("w", "дела")]),
        ("Καλημέρα κόσμε", [("w", "καλημέρα"), ("w", "κόσμε")]),
        ("مرحبا بالعالم", [("w", "مرحبا"), ("w", "بالعالم")]),
        # vowel signs are marks: the words stay whole
        ("हिन्दी भाषा", [("w", "हिन्दी"), ("w", "भाषा")]),
        ("สวัสดีครับ", [("u", "สวัสดีครับ")]),
        ("東京に行きたい", [("u", "東京に行きたい")]),
        ("안녕하세요 세계", [("w", "안녕하세요"), ("w", "세계")]),  # Korean is written with spaces
        (
            "订iPhone 15的票，谢谢！",
            [("u", "订"), ("w", "iphone"), ("w", "15"), ("u", "的票"), ("u", "谢谢")],
        ),
        (
            "I ❤️ pizza 🍕 $5 + 3",
            [
                ("w", "i"),
                ("s", "❤"),
                ("w", "pizza"),
                ("s", "🍕"),
                ("s", "$"),
                ("w", "5"),
                ("s", "+"),
                ("w", "3"),
            ],
        ),
        ("don’t, can't!", [("w", "don't"), ("w", "can't")]),
        ("...?!", []),
    ],
)
def test_version_2_tokenises_every_script(text, expected):
    assert tokenize(text) == expected


def test_chinese_gets_character_ngrams_and_shares_them_across_texts():
    f = HashingFeaturizer(buckets=1 << 16, run_ngrams=(1, 2), word_bigrams=False)
    grams = ["u:订酒店", "u:订", "u:酒", "u:店", "u:<订", "u:订酒", "u:酒店", "u:店>"]
    assert f.features("订酒店") == [zlib.crc32(g.encode()) % ((1 << 16) - 1) + 1 for g in grams]
    assert set(f.features("我要订酒店")) & set(f.features("订一个酒店")) >= {
        zlib.crc32("u:酒店".encode()) % ((1 << 16) - 1) + 1
    }


@pytest.mark.parametrize(
    "text",
    ["Привет мир", "Καλημέρα", "مرحبا", "हिन्दी", "我想订票", "🍕🍕", "€ ≥ ©", "日本語とEnglish"],
)
def test_every_script_and_symbol_gives_ids_in_version_2_and_none_in_version_1(text):
    ids = HashingFeaturizer().features(text)
    assert ids and all(0 < i < (1 << 16) for i in ids)
    assert HashingTokenizer().features(text)
    if not re.search(r"[a-z]", text.lower()):
        assert (
            HashingFeaturizer(version=1).features(text) == []
            and HashingTokenizer(version=1).features(text) == []
        )


def test_nfkc_and_casefold_make_equivalent_spellings_equal():
    for featurizer in (HashingFeaturizer(), HashingTokenizer()):
        # fullwidth letters are ASCII
        assert featurizer.features("ＡＢＣ ｈｅｌｌｏ") == featurizer.features("abc hello")
        assert featurizer.features("Straße") == featurizer.features("STRASSE")
        assert featurizer.features("ﬁle") == featurizer.features("FILE")  # the ligature decomposes


def test_mixed_script_keeps_both_parts():
    f = HashingFeaturizer()
    mixed = set(f.features("订iPhone"))
    assert set(f.features("订")) <= mixed and set(f.features("iphone")) <= mixed


def test_version_1_files_give_exactly_the_legacy_ids():
    saved = {
        "buckets": 4096,
        "char_ngrams": [3, 4, 5],
        "kind": "hashing_ngrams",
        "max_features": 256,
        "word_bigrams": True,
    }
    for fields in (
        saved,
        {k: v for k, v in saved.items() if k != "kind"},
        {**saved, "char_ngrams": [3], "max_features": 12},
    ):
        # as a registry version wrote it: no version field
        old = featurizer_from_json(json.dumps(fields))
        assert old.version == 1
        for text in TEXTS:
            assert old.features(text) == _legacy_features(
                text, fields["buckets"], tuple(fields["char_ngrams"]), True, fields["max_features"]
            )
    # settings a file leaves out are version 1's defaults
    bare = featurizer_from_json(json.dumps({"buckets": 4096}))
    assert (bare.version, bare.char_ngrams, bare.max_features) == (1, (3, 4, 5), 256)
    assert all(
        bare.features(text) == _legacy_features(text, 4096, (3, 4, 5), True, 256) for text in TEXTS
    )
    tokens = featurizer_from_json(
        json.dumps({"buckets": 1 << 15, "kind": "hashing_tokens", "max_features": 64})
    )
    assert tokens.version == 1
    assert all(tokens.features(text) == _legacy_tokens(text, 1 << 15, 64) for text in TEXTS)


def test_new_featurisers_are_version_2_and_round_trip_through_json():
    f = HashingFeaturizer(buckets=1 << 12, run_ngrams=(1, 2))
    assert f.version == FEATURIZER_VERSION == 2
    again = featurizer_from_json(f.to_json())
    assert again == f and json.loads(f.to_json())["version"] == 2
    assert [again.features(t) for t in TEXTS] == [f.features(t) for t in TEXTS]
    assert pickle.loads(pickle.dumps(f)) == f
    assert featurizer_from_json(HashingFeaturizer(version=1).to_json()).version == 1


def test_unknown_versions_are_refused():
    with pytest.raises(ValueError, match="unknown featurizer version 3"):
        featurizer_from_json(
            json.dumps(
                {
                    "kind": "hashing_ngrams",
                    "buckets": 64,
                    "char_ngrams": [3],
                    "max_features": 8,
                    "word_bigrams": True,
                    "version": 3,
                }
            )
        )
    with pytest.raises(ValueError, match="unknown tokenizer version 0"):
        HashingTokenizer(version=0)


def test_a_model_trained_on_a_slice_of_crosswoz_beats_chance_by_far():
    from collections import Counter

    from models.classifier import ClassifierConfig
    from models.train import TrainSettings, accuracy, train_classifier
    from streams.datasets import load_examples

    started = time.perf_counter()
    train, test = (
        load_examples("crosswoz_intents", "train")[:800],
        load_examples("crosswoz_intents", "test")[:600],
    )
    featurizer = HashingFeaturizer(buckets=1 << 14)
    result = train_classifier(
        [e.text for e in train],
        [e.intent for e in train],
        featurizer=featurizer,
        config=ClassifierConfig(buckets=1 << 14, dim=32, hidden=64),
        settings=TrainSettings(epochs=15, batch_size=64, seed=0),
    )
    score = accuracy(
        result.model,
        result.featurizer,
        result.labels,
        [e.text for e in test],
        [e.intent for e in test],
    )
    majority = Counter(e.intent for e in test).most_common(1)[0][1] / len(test)
    print(
        f"crosswoz slice: accuracy {score:.3f}, majority class {majority:.3f}, "
        f"{time.perf_counter() - started:.1f}s"
    )
    assert score >= majority + 0.3
    # what the ASCII-only featuriser made of the same texts
    legacy = HashingFeaturizer(buckets=1 << 14, version=1)
    assert sum(bool(legacy.features(e.text)) for e in train) < len(train) * 0.1
