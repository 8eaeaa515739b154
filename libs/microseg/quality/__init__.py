"""Quality: the row-rule engine and the Great Expectations adapter (shared with clean), and the quality gate stage."""
