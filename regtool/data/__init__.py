"""Datasets: on-disk layout and manifests, and the procedural category generator."""
