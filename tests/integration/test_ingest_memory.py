"""Ingest's bounded memory, measured where a local runner keeps data: its buffers between stages.

The FnApiRunner holds every PCollection that crosses a stage boundary, and every shuffle,
in memory until the stage that reads it has run. Peak memory is flat in the input size
only if no such buffer carries image bytes: the shuffles carry digests and references
(dedup, shard writer spools) and counts are taken before PCollections meet in a Flatten.
(benchmarks/ingest_memory.py measures the process's peak RSS on 150 vs 1,200 large JPEGs.)
"""
import pathlib

from apache_beam.runners.portability.fn_api_runner import execution

from jobs import ingest


def test_no_runner_buffer_holds_the_images(samples_dir, tmp_path, monkeypatch):
    held = [0]
    for buffer in (execution.ListBuffer, execution.GroupingBuffer, execution.WindowGroupingBuffer):
        def append(self, data, _append=buffer.append):
            held[0] += len(data)
            return _append(self, data)
        monkeypatch.setattr(buffer, "append", append)
    images = samples_dir / "images"
    input_bytes = sum(path.stat().st_size for path in images.iterdir() if path.suffix in {".jpg", ".png"})
    stats = ingest.run(["--input", str(images), "--output", str(tmp_path / "run")])
    assert stats["ledger"]["closed"] and stats["ledger"]["written"] >= 10
    shard_bytes = sum(path.stat().st_size for path in pathlib.Path(tmp_path / "run").glob("*.tar"))
    assert shard_bytes > input_bytes / 2
    assert held[0] < input_bytes / 10, f"runner buffers took {held[0]} bytes for {input_bytes} bytes of images"
