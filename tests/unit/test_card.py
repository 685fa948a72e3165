"""The dataset card's features are what Hugging Face ``datasets`` itself writes for the same types."""
import json

import datasets
import pyarrow as pa
import webdataset
import yaml

from pipeline.card import features, render
from transforms.io.shards import ShardInfo

# Every shape the json members take: nested objects, lists of numbers, of lists, of objects, nulls, bools.
METAS = [{"a": 1, "b": {"x": [1.0, 2.5]}, "l": [{"n": "a", "p": None}], "m": [[1, 2]], "z": None, "t": True,
          "notes": {"reencoded": False}},
         {"a": 2, "b": {"x": []}, "l": [], "m": [], "z": None, "t": False, "notes": {"reencoded": True}}]


def test_the_json_features_are_datasets_own_yaml_for_the_types_of_every_sample(tmp_path):
    with webdataset.TarWriter(str(tmp_path / "shard-000000-00.tar")) as writer:
        for i, meta in enumerate(METAS):
            writer.write({"__key__": f"k{i}", "json": json.dumps(meta).encode(), "mask.png": b"", "ref.jpg": b""})
    declared = features(str(tmp_path), [ShardInfo("shard-000000-00.tar", "", 2, 0, True)])
    expected = datasets.Features.from_arrow_schema(pa.schema([("json", pa.array(METAS).type)]))
    assert declared[0] == expected._to_yaml_list()[0]
    assert declared[1:] == [{"name": "mask.png", "dtype": "image"}, {"name": "ref.jpg", "dtype": "image"},
                            {"name": "__key__", "dtype": "string"}, {"name": "__url__", "dtype": "string"}]
    datasets.Features._from_yaml_list(declared)  # datasets reads it back


def test_the_card_points_datasets_at_the_tars_and_declares_features_only_when_there_are_samples():
    def front(samples: int) -> dict:
        card = render("demo", "shard-*.tar", [{"name": "json", "dtype": "string"}],
                      {"job": "build", "shards": {"samples": samples}}, {"thresholds": {"seam": {"max": 0.45}}}).decode()
        assert card.startswith("---\n") and '"max": 0.45' in card
        return yaml.safe_load(card.split("---\n")[1])

    full, empty = front(3), front(0)
    assert full["configs"] == [{"config_name": "default", "data_files": [{"split": "train", "path": "shard-*.tar"}]}]
    assert full["dataset_info"]["features"] == [{"name": "json", "dtype": "string"}] and "dataset_info" not in empty
    assert {"license", "task_categories", "pretty_name"} <= set(full)
