"""Stages: one public PTransform and one frozen, validated config per module.

``transforms.io`` holds readers and writers, ``transforms.models`` model handlers and the
model catalog; neither builds pipeline graphs of its own beyond its transforms.
"""
