"""Using a checkpoint on untagged pictures: `load_model`, `predict`, the output rows, export."""
