"""Trained detectors out of dpda: packages, export, the service."""
