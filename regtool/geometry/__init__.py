"""Cameras, rigid poses and mesh I/O."""
