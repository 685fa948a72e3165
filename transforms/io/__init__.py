"""Readers, decoders and shard writers: where bytes from outside become records and back."""
