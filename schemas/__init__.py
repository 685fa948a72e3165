"""Data contracts of counterfactory: record types, reason codes, keys and the sample layout.

This package depends on nothing heavier than numpy, Pillow and pyarrow, so a trainer
or a review tool can read our outputs with it and without Beam or torch.
"""
from schemas.keys import candidate_key, content_sha256, object_key, source_key, source_of
from schemas.reasons import Note, Outcome, Reason
from schemas.records import (
    Annotation,
    Box,
    CandidateScores,
    CounterfactualPair,
    DeadLetter,
    Detection,
    ObjectCandidates,
    ObjectMask,
    PairKind,
    RawInput,
    Rejection,
    RemovalCandidate,
    SourceImage,
)

__all__ = [
    "Annotation",
    "Box",
    "CandidateScores",
    "CounterfactualPair",
    "DeadLetter",
    "Detection",
    "Note",
    "ObjectCandidates",
    "ObjectMask",
    "Outcome",
    "PairKind",
    "RawInput",
    "Reason",
    "Rejection",
    "RemovalCandidate",
    "SourceImage",
    "candidate_key",
    "content_sha256",
    "object_key",
    "source_key",
    "source_of",
]
