"""Tools for people checking datasets: pictures of samples, the build's report, and the review app
(:mod:`review.app`: decisions in SQLite, queues over an index of the shards; docs/REVIEW.md)."""
