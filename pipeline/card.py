"""The dataset card (``README.md``) of a finished run: what Hugging Face ``datasets`` needs to load the folder.

``datasets.load_dataset(DIR)`` reads the card's YAML front matter: ``configs`` points it at
the tars (not at the Parquet beside them), and ``dataset_info.features`` declares every
member's type, the ``json`` member's taken from every sample of the run, so no sample is
cast to a type guessed from the first few (the ``webdataset`` builder infers from five).
The body summarises the lineage and the counts for a person.
"""
from __future__ import annotations

import json
import logging
import tarfile
from typing import Any, Iterable, Mapping, Sequence

import pyarrow as pa
import yaml
from apache_beam.io.filesystems import FileSystems

from schemas.sample import Field
from transforms.io.shards import ShardInfo

LOG = logging.getLogger(__name__)

CARD = "README.md"

#: Member extensions ``datasets`` decodes as images (``Image()`` features).
_IMAGE_EXTENSIONS = ("jpg", "png")

#: Arrow types as ``datasets`` names them in a card; the others have the same name in both.
_DTYPES = {pa.float64(): "float64", pa.float32(): "float32", pa.string(): "string", pa.bool_(): "bool"}

#: What each job writes, for the card's title and description.
_KINDS = {
    "ingest": "source images",
    "bootstrap": "removal candidates (ObjectDrop)",
    "build": "removal and insertion pairs (ObjectDrop)",
    "pbe-pairs": "self-reference pairs (Paint-by-Example)",
    "pbe-benchmark": "a Paint-by-Example evaluation set",
    "video-pairs": "frame pairs (MimicBrush)",
    "composites": "composites with an exact removal target",
    "evaluate": "removal candidates judged against exact targets",
}


def _dtype(arrow_type: pa.DataType) -> str:
    return _DTYPES.get(arrow_type, str(arrow_type))


def _inner(arrow_type: pa.DataType) -> Any:
    """A type as the value of a card's ``list`` entry."""
    if pa.types.is_struct(arrow_type):
        return [_named(field.name, field.type) for field in arrow_type]
    if pa.types.is_list(arrow_type):
        return {"list": _inner(arrow_type.value_type)}
    return _dtype(arrow_type)


def _named(name: str, arrow_type: pa.DataType) -> dict[str, Any]:
    """One feature of a card (``datasets.Features._to_yaml_list`` writes the same)."""
    if pa.types.is_struct(arrow_type):
        return {"name": name, "struct": [_named(field.name, field.type) for field in arrow_type]}
    if pa.types.is_list(arrow_type):
        return {"name": name, "list": _inner(arrow_type.value_type)}
    return {"name": name, "dtype": _dtype(arrow_type)}


def _shard_members(path: str) -> tuple[set[str], list[Any]]:
    """The member fields and the parsed ``json`` members of one shard (other members are skipped, not read)."""
    fields, metas = set(), []
    with FileSystems.open(path, compression_type="uncompressed") as handle, tarfile.open(fileobj=handle, mode="r:") as archive:
        for member in archive:
            field = member.name.split(".", 1)[1]
            fields.add(field)
            if field == Field.JSON:
                metas.append(json.loads(archive.extractfile(member).read()))
    return fields, metas


def features(output_dir: str, shards: Sequence[ShardInfo]) -> list[dict[str, Any]]:
    """The card's features of the samples in ``shards``: images, the ``json`` member's type over every sample."""
    fields: set[str] = set()
    schemas = []
    for shard in shards:
        shard_fields, metas = _shard_members(FileSystems.join(output_dir, shard.url))
        fields |= shard_fields
        if metas:
            schemas.append(pa.schema([(Field.JSON, pa.array(metas).type)]))
    declared = []
    for field in sorted(fields):
        if field.rsplit(".", 1)[-1] in _IMAGE_EXTENSIONS:
            declared.append({"name": field, "dtype": "image"})
        elif field == Field.JSON and schemas:
            unified = pa.unify_schemas(schemas, promote_options="permissive")
            declared.append(_named(Field.JSON, unified.field(Field.JSON).type))
        else:
            declared.append({"name": field, "dtype": "binary"})
    return declared + [{"name": "__key__", "dtype": "string"}, {"name": "__url__", "dtype": "string"}]


def _rows(pairs: Iterable[tuple[Any, Any]]) -> str:
    return "\n".join(f"| {name} | {value} |" for name, value in pairs)


def render(dataset: str, shard_glob: str, declared: list[dict[str, Any]], stats: Mapping[str, Any],
           lineage: Mapping[str, Any]) -> bytes:
    """The card's text: YAML front matter, then the lineage and the counts."""
    job = stats.get("job", lineage.get("job", ""))
    kind = _KINDS.get(job, job)
    front = {
        "pretty_name": f"{dataset}: {kind}",
        "license": "other",
        "task_categories": ["image-to-image"],
        "tags": ["counterfactory", "webdataset", job],
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": shard_glob}]}],
    }
    if stats.get("shards", {}).get("samples"):
        front["dataset_info"] = {"config_name": "default", "features": declared}
    ledger = stats.get("ledger", {})
    shards = stats.get("shards", {})
    thresholds = lineage.get("thresholds")
    body = f"""# {dataset}

{kind}, written by `counterfactory {job}` ({lineage.get("code_version", "")}, {lineage.get("created_at", "")}).
The license of the inputs applies to the samples (`license: other`); the models' licenses are in the catalog
(docs/MODELS.md). The format is counterfactory's docs/FORMAT.md, format_version in every `json` member.

```python
import datasets
ds = datasets.load_dataset("PATH/TO/THIS/FOLDER", split="train")
```

## Counts

| | |
|---|---|
{_rows([("samples", shards.get("samples", 0)), ("shards", shards.get("count", 0)), ("bytes", shards.get("bytes", 0)),
        ("inputs", ledger.get("inputs", 0)), ("written", ledger.get("written", 0)),
        ("rejected", sum(ledger.get("rejected", {}).values())),
        ("dead letters", sum(ledger.get("dead_letters", {}).values()))])}

Funnel:

| step | count |
|---|---|
{_rows((step["step"], step["count"]) for step in stats.get("funnel", []))}

## Lineage

| | |
|---|---|
{_rows([("inputs", ", ".join(f"`{uri}`" for uri in lineage.get("inputs", [])[:20])),
        ("content_sha256", f"`{lineage.get('content_sha256', '')}`"),
        ("config_sha256", f"`{lineage.get('config_sha256', '')}`"),
        *((f"model `{role}`", f"`{model}`") for role, model in sorted(lineage.get("models", {}).items()))])}
"""
    if thresholds:
        body += "\nThresholds:\n\n```json\n" + json.dumps(thresholds, indent=2, sort_keys=True) + "\n```\n"
    if lineage.get("decisions"):
        body += f"\nReview decisions: `{json.dumps(lineage['decisions'], sort_keys=True)}`\n"
    body += "\nRejection reasons, per-stage accounts and every lineage entry: `stats.json`, `lineage.json`.\n"
    return ("---\n" + yaml.safe_dump(front, sort_keys=False, allow_unicode=True) + "---\n\n" + body).encode("utf-8")


def dataset_card(output_dir: str, dataset: str, shard_prefix: str, shards: Sequence[ShardInfo],
                 stats: Mapping[str, Any], lineage: Mapping[str, Any]) -> bytes:
    """The ``README.md`` of a finished run in ``output_dir``."""
    return render(dataset, f"{shard_prefix}-*.tar", features(output_dir, shards), stats, lineage)
