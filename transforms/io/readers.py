"""Readers: image files, WebDataset tars and annotated datasets on any Beam filesystem.

Every reader returns the records it read; its stage opens the run's ledger, whose
inputs are counted where the readers first see them (a file, a sample of a tar, an image
an annotation file names), so the run can check that every input is accounted for
downstream. Rejections and dead letters register themselves with the run's accounts.
"""
from __future__ import annotations

import functools
import posixpath
import tarfile
from typing import Iterable, Iterator, Mapping, NamedTuple, Optional, Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.pvalue import TaggedOutput

from schemas import RawInput, Reason, Rejection, SourceImage
from schemas.sample import Field, sample_digest, source_from_sample
from transforms.io.annotations import PARSERS, AnnotatedImage, detect_format, load_class_descriptions
from transforms.io.files import NotARegularFile, input_exists, list_inputs, open_input, read_bytes, read_input
from transforms.io.shards import recorded_digests
from transforms.ledger import RunAccounts
from transforms.stage import RecordFunction, Stage

#: File extensions read as images; anything else under an input folder is rejected
#: with ``unsupported_extension`` (so a stray file is reported, not silently skipped).
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})


#: Where the rejections of an annotation file's boxes are counted (their images are still inputs).
BOXES_REJECTED = "boxes_rejected"


def expand_pattern(pattern: str) -> str:
    """A folder means every file below it, recursively; a glob or a file path is kept as given."""
    if any(char in pattern for char in "*?["):
        return pattern
    folder = FileSystems.join(pattern.rstrip("/"), "**")
    if pattern.endswith("/") or FileSystems.match([folder])[0].metadata_list:
        return folder
    return pattern


class MatchPaths(beam.PTransform):
    """Paths matching globs on any Beam filesystem, each once, spread over workers."""

    def __init__(self, patterns: Sequence[str]) -> None:
        super().__init__()
        self._patterns = list(patterns)

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        return (
            pbegin
            | "Patterns" >> beam.Create(self._patterns)
            | "Match" >> beam.FlatMap(list_inputs)  # every name, so a broken link is rejected, not lost
            | "DropDuplicatePaths" >> beam.Distinct()
            | "Spread" >> beam.Reshuffle()
        )


def _read_file(extensions: frozenset[str], path: str) -> Iterator[RawInput | Rejection]:
    extension = posixpath.splitext(path)[1].lower()
    if extension not in extensions:
        yield Rejection(path, ReadFiles.stage, Reason.UNSUPPORTED_EXTENSION, f"extension {extension or '(none)'!r}")
        return
    try:
        data = read_input(path)
    except NotARegularFile as error:
        yield Rejection(path, ReadFiles.stage, error.reason, error.detail)
        return
    yield RawInput(uri=path, data=data, origin="file")


class ReadFiles(Stage):
    """Paths -> their bytes; a file whose extension is not an image's is rejected, not skipped."""

    stage = "read"
    opens_ledger = True
    input_label = "file"

    def __init__(self, extensions: frozenset[str] = IMAGE_EXTENSIONS) -> None:
        super().__init__()
        self._extensions = extensions

    def record_fn(self) -> RecordFunction:
        return functools.partial(_read_file, self._extensions)


class ReadImageFiles(beam.PTransform):
    """Image files matching globs, or below folders, on local disk, gs://, s3://, ..."""

    def __init__(self, patterns: Sequence[str], extensions: frozenset[str] = IMAGE_EXTENSIONS) -> None:
        super().__init__()
        if not patterns:
            raise ValueError("ReadImageFiles needs at least one pattern")
        self._patterns = [expand_pattern(pattern) for pattern in patterns]
        self._extensions = extensions

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        return pbegin | "MatchPaths" >> MatchPaths(self._patterns) | "ReadFiles" >> ReadFiles(self._extensions)


class TarMember(NamedTuple):
    """One member of a sample: its bytes, and where they lie in the tar (``offset`` of the data, ``size``)."""

    data: bytes
    offset: int
    size: int


def tar_members(stream) -> Iterator[tuple[str, dict[str, TarMember]]]:
    """Group consecutive tar members by WebDataset key (basename up to its first dot), from one pass over the tar."""
    key, members = None, {}
    with tarfile.open(fileobj=stream, mode="r|*") as archive:
        for member in archive:
            if not member.isfile():
                continue
            dirname, basename = posixpath.split(member.name)
            if basename.startswith("."):
                continue
            sample_key, _, field = basename.partition(".")
            sample_key = posixpath.join(dirname, sample_key) if dirname else sample_key
            if sample_key != key:
                if key is not None:
                    yield key, members
                key, members = sample_key, {}
            extracted = archive.extractfile(member)
            members[field.lower()] = TarMember(extracted.read() if extracted else b"", member.offset_data, member.size)
    if key is not None:
        yield key, members


def tar_samples(stream) -> Iterator[tuple[str, dict[str, bytes]]]:
    """``(key, {field: bytes})`` per sample of a tar (:func:`tar_members` without the locations)."""
    for key, members in tar_members(stream):
        yield key, {field: member.data for field, member in members.items()}


def digest_mismatch(recorded: Optional[Mapping[str, str]], key: str, fields: Mapping[str, bytes]) -> Optional[str]:
    """Why a sample read back is not the one its writer recorded (``sample_digest_mismatch``'s detail); None if it is.

    ``recorded`` is :func:`~transforms.io.shards.recorded_digests` of the sample's tar: None
    for a tar without our metadata, whose samples have nothing to be checked against. Every
    reader of our shards (the jobs, ``review``, ``sheet``) checks a sample with this.
    """
    if recorded is None:
        return None
    actual, expected = sample_digest(fields), recorded.get(key)
    return None if actual == expected else f"sample_sha256 {actual}, recorded {expected}"


def read_tar_samples(path: str, stage: str) -> Iterator[tuple[str, dict[str, bytes]] | Rejection]:
    """``(key, fields)`` per sample of a tar, streaming; a damaged tail ends it as one ``corrupt_shard`` rejection.

    Samples before the damage are kept: a truncated upload loses only what is missing. A
    name that is no regular file (a FIFO named ``x.tar``) is one rejection with its reason.
    A tar of ours (its Parquet metadata beside it) has every sample checked against the
    ``sample_sha256`` recorded at write time: one that differs is ``sample_digest_mismatch``.
    """
    try:
        opened = open_input(path)
    except NotARegularFile as error:
        yield Rejection(path, stage, error.reason, error.detail)
        return
    digests = recorded_digests(path)
    with opened as stream:
        samples = tar_samples(stream)
        while True:
            try:
                key, fields = next(samples)
            except StopIteration:
                return
            except (tarfile.TarError, EOFError, OSError) as error:
                yield Rejection(path, stage, Reason.CORRUPT_SHARD, f"{type(error).__name__}: {error}")
                return
            mismatch = digest_mismatch(digests, key, fields)
            if mismatch:
                yield Rejection(f"{path}#{key}", stage, Reason.SAMPLE_DIGEST_MISMATCH, mismatch, key)
                continue
            yield key, fields


def read_members(path: str, names: Iterable[str]) -> dict[str, bytes]:
    """Some members of a tar by name, seeking over the others (cheap for a few samples of a large shard)."""
    wanted = set(names)
    found: dict[str, bytes] = {}
    with FileSystems.open(path, compression_type="uncompressed") as stream, tarfile.open(fileobj=stream, mode="r:") as archive:
        for member in archive:
            if member.name in wanted and member.isfile():
                extracted = archive.extractfile(member)
                found[member.name] = extracted.read() if extracted else b""
                if len(found) == len(wanted):
                    break
    return found


class _TarRecords:
    """A tar's samples as records: ours kept as they are, anyone's by their first image field."""

    def __init__(self, extensions: frozenset[str]) -> None:
        self._image_fields = sorted(extension.lstrip(".") for extension in extensions)

    def _record(self, tar_path: str, key: str, fields: dict[str, bytes]) -> RawInput | SourceImage | Rejection:
        uri = f"{tar_path}#{key}"
        if Field.SRC in fields and Field.JSON in fields:
            # Our own source shards: keep keys, notes and annotations as ingest wrote them.
            return source_from_sample({"__key__": key, **fields})
        for field in self._image_fields:
            if field in fields:
                return RawInput(uri=f"{uri}.{field}", data=fields[field], origin="shard")
        return Rejection(uri, ReadTars.stage, Reason.SAMPLE_WITHOUT_IMAGE, f"fields: {sorted(fields)}")

    def __call__(self, path: str) -> Iterator[RawInput | SourceImage | Rejection]:
        for sample in read_tar_samples(path, ReadTars.stage):
            yield sample if isinstance(sample, Rejection) else self._record(path, *sample)


class ReadTars(Stage):
    """Tar paths -> their samples: a source, whose inputs are the samples it finds (and each corrupt tail)."""

    stage = "read_shards"
    source = True
    input_label = "shard"

    def __init__(self, extensions: frozenset[str] = IMAGE_EXTENSIONS) -> None:
        super().__init__()
        self._extensions = extensions

    def record_fn(self) -> RecordFunction:
        return _TarRecords(self._extensions)


class ReadShards(beam.PTransform):
    """Samples of existing WebDataset tars: ours (kept as they are) or anyone's (first image field).

    A tar is read by one worker, streaming; corrupt tails become one ``corrupt_shard``
    rejection. Inputs are counted per sample found (plus one per corrupt tail).
    """

    def __init__(self, patterns: Sequence[str], extensions: frozenset[str] = IMAGE_EXTENSIONS) -> None:
        super().__init__()
        if not patterns:
            raise ValueError("ReadShards needs at least one pattern")
        self._patterns = list(patterns)
        self._extensions = extensions

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        return pbegin | "MatchPaths" >> MatchPaths(self._patterns) | "ReadTars" >> ReadTars(self._extensions)


_BOX_REJECTED = "box_rejected"


class _ParseAnnotationsFn(beam.DoFn):
    def __init__(self, images_root: str, annotation_format: str, class_descriptions: Optional[Mapping[str, str]]) -> None:
        super().__init__()
        self._images_root = images_root
        self._format = annotation_format
        # Only OpenImages names classes by MID; the other formats carry their names.
        wants_descriptions = annotation_format == "openimages" and class_descriptions is not None
        self._options = {"class_descriptions": class_descriptions} if wants_descriptions else {}

    def process(self, path: str) -> Iterator[AnnotatedImage | TaggedOutput]:
        for parsed in PARSERS[self._format](read_bytes(path), self._images_root, **self._options):
            if isinstance(parsed, Rejection):
                yield TaggedOutput(_BOX_REJECTED, parsed)
            else:
                for rejection in parsed.rejections:
                    yield TaggedOutput(_BOX_REJECTED, rejection)
                yield parsed


def _read_annotated_image(origin: str, image: AnnotatedImage) -> Iterator[RawInput | Rejection]:
    if not input_exists(image.path):
        yield Rejection(image.path, ReadAnnotatedImages.stage, Reason.IMAGE_MISSING,
                        "named by the annotation file but not found")
        return
    try:
        data = read_input(image.path)
    except NotARegularFile as error:
        yield Rejection(image.path, ReadAnnotatedImages.stage, error.reason, error.detail)
        return
    yield RawInput(
        uri=image.path,
        data=data,
        annotations=image.annotations,
        origin=origin,
        boxes_normalized=image.normalized,
    )


class ReadAnnotatedImages(Stage):
    """Images an annotation file names -> their bytes with their boxes; a missing image is rejected."""

    stage = "read"
    opens_ledger = True

    def __init__(self, origin: str) -> None:
        super().__init__()
        self.input_label = origin

    def record_fn(self) -> RecordFunction:
        return functools.partial(_read_annotated_image, self.input_label)


class ReadAnnotated(beam.PTransform):
    """Images named by an annotation file (COCO JSON, OpenImages CSV), with their boxes.

    Every image the file lists is an input, whether or not it has boxes or exists; boxes
    the file gets wrong are reported in ``box_rejected`` without dropping their image.
    """

    def __init__(
        self,
        annotation_file: str,
        images_root: str,
        annotation_format: str = "auto",
        class_descriptions_file: Optional[str] = None,
    ) -> None:
        super().__init__()
        self._file = annotation_file
        self._root = images_root
        self._format = detect_format(annotation_file) if annotation_format == "auto" else annotation_format
        if self._format not in PARSERS:
            raise ValueError(f"unknown annotation format {annotation_format!r}; known: auto, {', '.join(PARSERS)}")
        self._class_descriptions_file = class_descriptions_file

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        descriptions = (
            load_class_descriptions(read_bytes(self._class_descriptions_file)) if self._class_descriptions_file else None
        )
        parsed = (
            pbegin
            | "AnnotationFile" >> beam.Create([self._file])
            | "Parse"
            >> beam.ParDo(_ParseAnnotationsFn(self._root, self._format, descriptions)).with_outputs(
                _BOX_REJECTED, main="images"
            )
        )
        RunAccounts.of(pbegin.pipeline).add_recorded(BOXES_REJECTED, parsed[_BOX_REJECTED])
        return parsed.images | "Spread" >> beam.Reshuffle() | "ReadImages" >> ReadAnnotatedImages(self._format)
