"""Hugging Face datasets files written with pyarrow, byte for byte in the layouts ``datasets`` and the Hub use:
Parquet files with the features in the schema's ``huggingface`` metadata, and save_to_disk folders (Arrow
streaming files beside state.json and dataset_info.json)."""

import io
import json

from conftest import COLOURS

CLASSES = ["red", "green", "blue", "yellow"]


def png(colour, size=12):
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (size, size), COLOURS[colour]).save(buffer, format="PNG")
    return buffer.getvalue()


def rows(count, offset=0):
    """Rows of an image-captioning dataset: an Image feature, a list of captions, a ClassLabel."""
    out = []
    for n in range(offset, offset + count):
        colour = CLASSES[n % len(CLASSES)]
        out.append({"image": {"bytes": png(colour), "path": None}, "caption": [f"a {colour} square number {n}", f"{colour} box {n}"],
                    "label": CLASSES.index(colour)})
    return out


FEATURES = {"image": {"_type": "Image"}, "caption": {"feature": {"dtype": "string", "_type": "Value"}, "_type": "List"},
            "label": {"names": CLASSES, "_type": "ClassLabel"}}


def table(records, features=FEATURES):
    """A pyarrow table of ``records`` carrying ``features`` as datasets stores them."""
    import pyarrow as pa

    columns = {key: [r[key] for r in records] for key in records[0]}
    t = pa.table(columns)
    return t.replace_schema_metadata({"huggingface": json.dumps({"info": {"features": features}})})


def write_parquet(path, records, features=FEATURES, row_group_size=None):
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table(records, features), path, row_group_size=row_group_size)
    return path


def write_hub_folder(root, counts=(6, 2, 3)):
    """A Hub dataset repository as downloaded: data/<split>-00000-of-00001.parquet (small row groups)."""
    offset = 0
    for split, count in zip(("train", "validation", "test"), counts):
        write_parquet(root / "data" / f"{split}-00000-of-00001.parquet", rows(count, offset), row_group_size=2)
        offset += count
    (root / "README.md").write_text("---\nconfigs: [{config_name: default}]\n---\n")
    return root


def write_saved_dataset(folder, records, split=None, features=FEATURES):
    """What ``Dataset.save_to_disk`` writes: data-00000-of-00001.arrow (the streaming format), state.json,
    dataset_info.json."""
    import pyarrow as pa

    folder.mkdir(parents=True, exist_ok=True)
    t = table(records, features)
    with pa.OSFile(str(folder / "data-00000-of-00001.arrow"), "wb") as sink, pa.ipc.new_stream(sink, t.schema) as writer:
        writer.write_table(t)
    (folder / "state.json").write_text(json.dumps({
        "_data_files": [{"filename": "data-00000-of-00001.arrow"}], "_fingerprint": "0", "_format_columns": None,
        "_format_kwargs": {}, "_format_type": None, "_output_all_columns": False, "_split": split}, indent=2))
    (folder / "dataset_info.json").write_text(json.dumps({"citation": "", "description": "", "features": features}))
    return folder


def write_saved_dataset_dict(root, counts=(6, 2, 3)):
    """What ``DatasetDict.save_to_disk`` writes: dataset_dict.json and a save_to_disk folder per split."""
    offset = 0
    for split, count in zip(("train", "validation", "test"), counts):
        write_saved_dataset(root / split, rows(count, offset), split)
        offset += count
    (root / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "validation", "test"]}))
    return root
