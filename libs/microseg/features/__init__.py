"""Features: the feature catalog, per-source builders, lifecycle macro segments, and the features stage."""
