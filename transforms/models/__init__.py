"""Model handlers and the model catalog.

The catalog (:mod:`transforms.models.catalog`) maps model ids to pinned, verifiable files
and resolves an id or a path to local files on a worker; :mod:`transforms.models.sources`
knows how to fetch each kind of source. Importing this package loads neither Beam, torch
nor onnxruntime.
"""
