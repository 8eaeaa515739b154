"""Ingest: source mapping, readers (files and JDBC), PII tokenising, and the bronze stage."""
