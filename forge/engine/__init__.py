"""The engine: per-input summaries, the target's schema and write plan, the stages of a copy (cache,
prepare, store, finalize) and of references (reference, write), their order (``stages``), appends to a
published target, and the kinds of target behind one interface (``targets``)."""
