"""One module per feature; each registers op handlers on a node."""
