"""Segmentation: MLlib pipelines, the sweep, selection, refit, stable ids, the MLflow registry, the train stage."""
