"""Latent shape space: non-rigid CPD (`cpd`), the ShapeSpace artifact (`space`) and building it
from a dataset (`build`)."""

from regtool.shapespace.cpd import CPDResult, gaussian_kernel, nonrigid_cpd
from regtool.shapespace.space import FitResult, ShapeSpace

__all__ = ["CPDResult", "FitResult", "ShapeSpace", "gaussian_kernel", "nonrigid_cpd",
           "build_shapespace"]


def build_shapespace(*args, **kwargs):
    """See `regtool.shapespace.build.build_shapespace` (imported lazily: it loads datasets)."""
    from regtool.shapespace.build import build_shapespace as _build

    return _build(*args, **kwargs)
