"""regtool: category-level deformable registration from single RGB images by render-and-compare."""

__version__ = "0.1.0"
