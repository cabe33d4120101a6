"""Latent shape space: non-rigid CPD (`cpd`), the ShapeSpace artifact (`space`), building it
from a dataset (`build`) and fitting it to 3D points (`fit`)."""

from regtool.shapespace.cpd import CPDResult, gaussian_kernel, nonrigid_cpd
from regtool.shapespace.fit import FitResult, fit_points
from regtool.shapespace.space import ShapeSpace

__all__ = ["CPDResult", "FitResult", "ShapeSpace", "gaussian_kernel", "nonrigid_cpd",
           "build_shapespace", "fit_points"]


def build_shapespace(*args, **kwargs):
    """See `regtool.shapespace.build.build_shapespace` (imported lazily: it loads datasets)."""
    from regtool.shapespace.build import build_shapespace as _build

    return _build(*args, **kwargs)
