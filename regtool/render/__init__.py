"""Headless OpenGL rendering: context, photo-like shading, G-buffer and the differentiable
renderer. Importing this package selects the PyOpenGL platform (see `context.py`)."""

from regtool.render.context import configure_platform

configure_platform()
