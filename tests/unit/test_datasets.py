"""streams.datasets on the copies shipped in data/ (and
the uncompressed originals when they are around)."""

from __future__ import annotations

import gzip
import json
import shutil
from collections import Counter
from pathlib import Path

import pytest

from streams.datasets import DATASETS, Example, default_data_dir, groups, load_examples

REPO_DATA = Path(__file__).resolve().parents[2] / "data"
SHARED_DATA = Path("/work/shared/data")


@pytest.fixture(autouse=True)
def _no_env_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DRIFTD_DATA_DIR", raising=False)


@pytest.mark.parametrize(
    ("name", "split", "size", "intents"),
    [
        ("clinc150", "train", 15_000, 150),
        ("clinc150", "val", 3_000, 150),
        ("clinc150", "test", 4_500, 150),
        ("clinc150", "oos_train", 100, 1),
        ("clinc150", "oos_test", 1_000, 1),
        ("banking77", "train", 10_003, 77),
        ("banking77", "test", 3_080, 77),
        ("snips", "train", 13_784, 7),
        ("snips", "test", 700, 7),
        ("massive_ru", "train", 11_514, 60),
        ("massive_ru", "dev", 2_033, 59),
        ("massive_ru", "test", 2_974, 59),
        ("crosswoz_intents", "train", 1_412, 29),
        ("crosswoz_intents", "dev", 405, 29),
        ("crosswoz_intents", "test", 1_793, 29),
    ],
)
def test_split_sizes_and_intent_counts(name: str, split: str, size: int, intents: int) -> None:
    examples = load_examples(name, split)
    assert len(examples) == size
    assert len({ex.intent for ex in examples}) == intents
    assert all(isinstance(ex, Example) and ex.text and ex.intent for ex in examples)


def test_clinc150_balanced_and_domains_from_domains_json() -> None:
    train = load_examples("clinc150", "train")
    assert set(Counter(ex.intent for ex in train).values()) == {100}
    domains = groups("clinc150")
    assert len(domains) == 10 and all(len(intents) == 15 for intents in domains.values())
    domain_of = {intent: domain for domain, intents in domains.items() for intent in intents}
    assert all(ex.domain == domain_of[ex.intent] for ex in train)
    assert "oos" not in {ex.intent for ex in train}


def test_clinc150_oos_splits_are_labelled_oos() -> None:
    oos = load_examples("clinc150", "oos_val")
    assert len(oos) == 100
    assert {(ex.intent, ex.domain) for ex in oos} == {("oos", "oos")}


def test_banking77_and_snips_have_no_domains() -> None:
    assert groups("banking77") == {} and groups("snips") == {}
    banking = load_examples("banking77", "test")
    assert {ex.domain for ex in banking} == {None}
    assert {ex.intent for ex in banking} == set(
        json.loads((REPO_DATA / "banking77" / "categories.json").read_text())
    )
    snips = load_examples("snips", "test")
    assert {ex.domain for ex in snips} == {None}
    assert set(Counter(ex.intent for ex in snips).values()) == {100}
    assert "AddToPlaylist" in {ex.intent for ex in snips}


def test_multilingual_datasets_keep_their_script_and_have_no_domains() -> None:
    russian = load_examples("massive_ru", "train")
    assert russian[0] == Example("разбуди меня в девять утра в пятницу", "alarm_set", None)
    assert groups("massive_ru") == {} and groups("crosswoz_intents") == {}
    chinese = load_examples("crosswoz_intents", "test")
    assert all(any("\u4e00" <= ch <= "\u9fff" for ch in ex.text) for ex in chinese[:50])
    assert (
        Counter(ex.intent for ex in load_examples("crosswoz_intents", "train")).most_common(1)[0][0]
        == "general_thank"
    )


def test_snips_test_is_held_out_from_train() -> None:
    train = {ex.text for ex in load_examples("snips", "train")}
    # The benchmark itself repeats 4 short queries ("what
    # is the weather here") in both; the rest is held out.
    assert len(train & {ex.text for ex in load_examples("snips", "test")}) == 4


def test_unknown_dataset_or_split_lists_valid_choices() -> None:
    with pytest.raises(
        ValueError, match=r"'atis'.*clinc150, banking77, snips, massive_ru, crosswoz_intents"
    ):
        load_examples("atis", "train")
    with pytest.raises(ValueError, match=r"'val'.*train, test"):
        load_examples("banking77", "val")
    with pytest.raises(ValueError, match="unknown dataset"):
        groups("atis")
    with pytest.raises(ValueError, match=r"'val'.*train, dev, test"):
        load_examples("massive_ru", "val")
    assert DATASETS == ("clinc150", "banking77", "snips", "massive_ru", "crosswoz_intents")


def test_missing_files_say_where_and_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        load_examples("banking77", "train", data_dir=tmp_path)
    message = str(info.value)
    assert str(tmp_path / "banking77" / "train.csv.gz") in message
    assert "DRIFTD_DATA_DIR" in message and "replay.data_dir" in message


def test_default_data_dir_is_repo_data_unless_env_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert default_data_dir() == REPO_DATA
    monkeypatch.setenv("DRIFTD_DATA_DIR", str(tmp_path))
    assert default_data_dir() == tmp_path
    with pytest.raises(FileNotFoundError):
        load_examples("snips", "test")  # the env var is honoured: the empty folder has no data


def test_plain_file_is_read_when_no_gz(tmp_path: Path) -> None:
    folder = tmp_path / "snips"
    folder.mkdir()
    with (
        gzip.open(REPO_DATA / "snips" / "snips_all.csv.gz", "rb") as src,
        open(folder / "snips_all.csv", "wb") as dst,
    ):
        shutil.copyfileobj(src, dst)
    assert load_examples("snips", "test", data_dir=tmp_path) == load_examples("snips", "test")


@pytest.mark.skipif(
    not SHARED_DATA.is_dir(), reason="uncompressed originals not present on this machine"
)
@pytest.mark.parametrize(
    ("name", "splits"),
    [
        ("clinc150", ("train", "val", "test", "oos_test")),
        ("banking77", ("train", "test")),
        ("snips", ("train", "test")),
        ("massive_ru", ("train", "dev", "test")),
        ("crosswoz_intents", ("train", "dev", "test")),
    ],
)
def test_gz_copies_match_the_originals(name: str, splits: tuple[str, ...]) -> None:
    for split in splits:
        assert load_examples(name, split, data_dir=SHARED_DATA) == load_examples(
            name, split, data_dir=REPO_DATA
        )
    assert groups(name, data_dir=SHARED_DATA) == groups(name, data_dir=REPO_DATA)


@pytest.mark.skipif(
    not SHARED_DATA.is_dir(), reason="uncompressed originals not present on this machine"
)
@pytest.mark.parametrize("name", ["massive_ru", "crosswoz_intents"])
def test_multilingual_copies_ship_gzipped_with_the_authors_license_and_readme(name: str) -> None:
    for split in ("train", "dev", "test"):
        assert (REPO_DATA / name / f"{split}.csv.gz").is_file() and not (
            REPO_DATA / name / f"{split}.csv"
        ).exists()
    for document in ("LICENSE", "README.md"):
        assert (REPO_DATA / name / document).read_bytes() == (
            SHARED_DATA / name / document
        ).read_bytes()
