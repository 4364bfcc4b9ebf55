"""The labelled benchmarks' datasets (``wikipedia``, ``pascal-sentences``) on small copies of their distributed layouts."""

from collections import Counter

import pytest

from benchmark_fixtures import PASCAL_USED, WIKIPEDIA_USED, write_pascal_sentences, write_wikipedia
from xmcore.errors import XmcoreError
from xmcore.plugins import load_plugins
from xmcore.registry import BuildContext

PLUGINS = load_plugins()


def build(name, base_dir, **params):
    component = PLUGINS["dataset"].get(name)
    return component.build(component.params.model_validate(params), BuildContext(base_dir=base_dir))


def test_wikipedia_reads_the_lists_texts_and_category_folders(tmp_path):
    write_wikipedia(tmp_path / "wikipedia_dataset", train_per_class=4, test_per_class=3)
    data = build("wikipedia", tmp_path, root="wikipedia_dataset", val_from_test=3, seed=1)
    sizes = {name: len(s.items["image"]) for name, s in data.splits.items()}
    assert sizes == {"train": 12, "val": 3, "test": 6}  # 9 test pairs, 3 drawn for validation
    assert all(len(s.items["text"]) == len(s.items["image"]) for s in data.splits.values())  # one text per image
    train = data.splits["train"]
    assert train.relevance == "label" and data.extras["label_names"] == list(WIKIPEDIA_USED)
    assert train.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    first = train.items["image"][0].path
    assert first.parent.name == "art" and first.name == "img00000.jpg" and first.is_file()
    assert train.items["text"][0] == "A section about art & more, number 0 & so on."  # <text> only, unescaped
    val_and_test = {str(p.path) for name in ("val", "test") for p in data.splits[name].items["image"]}
    assert len(val_and_test) == 9  # drawn from the test list, disjoint
    again = build("wikipedia", tmp_path, root="wikipedia_dataset", val_from_test=3, seed=1)
    assert [p.path for p in again.splits["val"].items["image"]] == [p.path for p in data.splits["val"].items["image"]]
    original = build("wikipedia", tmp_path, root="wikipedia_dataset", val_from_test=0)
    assert set(original.splits) == {"train", "test"} and len(original.splits["test"].items["image"]) == 9


def test_wikipedia_errors_name_the_file_and_the_fix(tmp_path):
    root = write_wikipedia(tmp_path / "w")
    with pytest.raises(XmcoreError, match="would leave no test split"):
        build("wikipedia", tmp_path, root="w")  # DSCMR's 231 of a 9-pair test list
    (root / "testset_txt_img_cat.list").write_text("abc\timg1\t11\n")
    with pytest.raises(XmcoreError, match=r"testset_txt_img_cat.list line 1: expected .* category 1-10, got 'abc.*img1.*11'"):
        build("wikipedia", tmp_path, root="w", val_from_test=0)
    (root / "trainset_txt_img_cat.list").unlink()
    with pytest.raises(XmcoreError, match="has no trainset_txt_img_cat.list; expected the Wikipedia dataset's folder"):
        build("wikipedia", tmp_path, root="w")


@pytest.mark.parametrize("sentences", ["joined", "separate"])
def test_pascal_sentences_per_class_split_and_documents(sentences, tmp_path):
    write_pascal_sentences(tmp_path / "pascal", per_class=10)
    data = build("pascal-sentences", tmp_path, root="pascal", sentences=sentences, split_per_class=(6, 2, 2))
    for name, per_class in (("train", 6), ("val", 2), ("test", 2)):
        split = data.splits[name]
        assert split.relevance == "label"
        assert Counter(split.labels.tolist()) == {0: per_class, 1: per_class, 2: per_class}, name
        assert len(split.items["text"]) == len(split.items["image"]) * (1 if sentences == "joined" else 5)
    assert data.extras["label_names"] == list(PASCAL_USED)
    texts = [t for s in data.splits.values() for t in s.items["text"]]
    if sentences == "joined":
        assert "A aeroplane in picture 0, sentence 0. A aeroplane in picture 0, sentence 1." in " ".join(texts)
        assert all(t.count("sentence") == 5 for t in texts)  # 2008_000000txt too (the downloader's name)
    else:
        assert "A bird in picture 3, sentence 4." in texts and len(texts) == 150
    other = build("pascal-sentences", tmp_path, root="pascal", split_per_class=(6, 2, 2), seed=1)
    assert other.splits["test"].items["image"] != data.splits["test"].items["image"]  # the seed draws the split


def test_pascal_sentences_scales_a_small_class_and_names_a_wrong_folder(tmp_path):
    write_pascal_sentences(tmp_path / "pascal", per_class=5)
    data = build("pascal-sentences", tmp_path, root="pascal")  # 40/5/5 scaled to 5 images: 1 val, 1 test, 3 train
    assert [len(data.splits[n].items["image"]) for n in ("train", "val", "test")] == [9, 3, 3]
    with pytest.raises(XmcoreError, match="has no dataset/ and sentence/ folders; expected the Pascal Sentence layout"):
        build("pascal-sentences", tmp_path, root="pascal/dataset")
