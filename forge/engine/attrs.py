"""What forge keeps in a store besides the data: its root attributes, and the ``provisional`` flags."""

from __future__ import annotations

COMPLETE_ATTR = "forge:complete"
FINGERPRINT_ATTR = "forge:fingerprint"
INPUTS_ATTR = "forge:concat_inputs"  # concat positions the store holds: where an append starts
REFERENCED_INPUTS_ATTR = "forge:referenced_inputs"  # the same, for references (what makes them references)
SOURCE_OPTIONS_ATTR = "forge:source_storage_options"  # s3fs options to read the sources (no credentials)
# A pattern with provisional files: which steps come from one (True) and will be replaced by its final
PROVISIONAL = "provisional"
PROVISIONAL_ATTRS = {"long_name": "read from the provisional file: replaced once the final file is out"}
