"""The hashing featurisers: deterministic ids, the JSON round trip, and the word-id memo shared across versions."""

from __future__ import annotations

import pickle
import zlib

from models.featurize import HashingFeaturizer, HashingTokenizer, featurizer_from_json


def _ids_by_hand(word: str, buckets: int, char_ngrams: tuple[int, ...]) -> tuple[int, ...]:
    marked = f"<{word}>"
    grams = [f"w:{word}"] + [f"c:{marked[i:i + n]}" for n in char_ngrams for i in range(max(1, len(marked) - n + 1))]
    return tuple(zlib.crc32(g.encode()) % (buckets - 1) + 1 for g in grams)


def test_features_are_the_documented_hashes_and_stop_at_max_features():
    f = HashingFeaturizer(buckets=1 << 12, char_ngrams=(3,), max_features=10)
    expected = list(_ids_by_hand("card", 1 << 12, (3,)) + _ids_by_hand("lost", 1 << 12, (3,)))
    expected.append(zlib.crc32(b"b:card lost") % ((1 << 12) - 1) + 1)
    assert f.features("Card LOST!") == expected[:10]
    assert f.batch(["", "card"]).shape == (2, len(_ids_by_hand("card", 1 << 12, (3,))))


def test_versions_with_one_configuration_share_the_word_memo_and_others_do_not():
    a = HashingFeaturizer()
    b = featurizer_from_json(a.to_json())  # a swapped-in version that kept its parent's featuriser
    other = HashingFeaturizer(buckets=1 << 14)
    assert b == a and b._word_ids is a._word_ids
    assert other._word_ids is not a._word_ids
    a.features("where is my parcel")
    hits = b._word_ids.cache_info().hits
    b.features("where is my parcel")
    assert b._word_ids.cache_info().hits == hits + 4  # every word was already hashed for the other version
    assert other.features("where is my parcel") != a.features("where is my parcel")


def test_pickled_featurisers_rebuild_their_memo_and_give_the_same_ids():
    a = HashingFeaturizer(buckets=1 << 13)
    clone = pickle.loads(pickle.dumps(a))  # the fine-tune child receives featurisers this way
    assert clone.batch(["refund my shoes"]).tolist() == a.batch(["refund my shoes"]).tolist()


def test_tokenizer_round_trips_through_json():
    t = HashingTokenizer(buckets=1 << 10, max_features=8)
    assert featurizer_from_json(t.to_json()) == t
    assert len(t.features("a very long internationalisation question")) == 6  # 5 words + one 6-char prefix
