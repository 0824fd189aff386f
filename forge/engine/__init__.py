"""The build: per-input summaries, the target's schema and write plan, and the stages that cache inputs,
prepare the target, store chunks and finalize it (``stages``), plus appending to a finished store."""
