"""Small copies of the labelled benchmarks' distributed layouts (Wikipedia, Pascal Sentence), with real images."""

from conftest import COLOURS, write_image

WIKIPEDIA_USED = ("art", "biology", "geography")  # categories 1-3 of the ten


def write_wikipedia(root, train_per_class=4, test_per_class=3):
    """wikipedia_dataset/ as distributed: the two .list files (text_id, image_id, category number), texts/<id>.xml
    with the section in <text> (an entity and a stray '&' as in the real files), images/<category>/<id>.jpg."""
    colours = list(COLOURS)
    lines = {"train": [], "test": []}
    n = 0
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        for number, category in enumerate(WIKIPEDIA_USED, start=1):
            for _ in range(per_class):
                text_id, image_id = f"{n:04x}t{n}", f"img{n:05d}"
                write_image(root / "images" / category / f"{image_id}.jpg", colours[number - 1], fmt="JPEG")
                (root / "texts").mkdir(parents=True, exist_ok=True)
                (root / "texts" / f"{text_id}.xml").write_text(
                    '<?xml version="1.0" encoding="UTF-8"?>\n<document>\n<docno>%s</docno>\n<title>Section %d</title>\n'
                    "<text>\nA section about %s &amp; more,\n number %d & so on.\n</text>\n</document>\n"
                    % (text_id, n, category, n), encoding="utf-8")
                lines[split].append(f"{text_id}\t{image_id}\t{number}")
                n += 1
    (root / "trainset_txt_img_cat.list").write_text("\n".join(lines["train"]) + "\n")
    (root / "testset_txt_img_cat.list").write_text("\n".join(lines["test"]) + "\n")
    return root


PASCAL_USED = ("aeroplane", "bicycle", "bird")


def write_pascal_sentences(root, per_class=6):
    """dataset/<category>/<image>.jpg and sentence/<category>/<image>.txt with five sentences; one sentence file
    named <image>txt, as one widely used downloader writes them."""
    colours = list(COLOURS)
    for c, category in enumerate(PASCAL_USED):
        for k in range(per_class):
            stem = f"2008_{c:03d}{k:03d}"
            write_image(root / "dataset" / category / f"{stem}.jpg", colours[c], fmt="JPEG")
            name = f"{stem}txt" if (c, k) == (0, 0) else f"{stem}.txt"
            (root / "sentence" / category).mkdir(parents=True, exist_ok=True)
            (root / "sentence" / category / name).write_text(
                "".join(f" A {category} in picture {k}, sentence {s}. \n" for s in range(5)), encoding="utf-8")
    return root
