"""Typed errors raised by the library; only `regtool.cli` turns them into messages.

Every error means "the input or the environment is not usable" and maps to exit code 2.
"""


class RegtoolError(Exception):
    """Base class of every error regtool reports to the user as one line."""


class ConfigError(RegtoolError):
    """A configuration file or option is missing, malformed or out of range."""


class DatasetError(RegtoolError):
    """A dataset folder or its manifest is missing, malformed or inconsistent."""


class MeshError(RegtoolError):
    """A mesh or point set is missing, empty, degenerate or has non-finite coordinates."""


class ArtifactError(RegtoolError):
    """A saved artifact (shape space, checkpoint, result) is missing, corrupted or foreign."""


class OutputError(RegtoolError):
    """An output location cannot be written."""


class DeviceError(RegtoolError):
    """The requested compute device is not available (e.g. CUDA without a GPU)."""


class GLContextError(RegtoolError):
    """No headless OpenGL context could be created."""


class GeometryError(RegtoolError):
    """A camera, pose or other geometric quantity is missing, malformed or not physical."""


class FeatureError(RegtoolError):
    """Bad input to the U-Net or the image comparison (shapes, pixel range, unknown kind)."""


class RenderError(RegtoolError):
    """Bad input to the renderer (shapes, indices, non-finite values, image size)."""


class RegistrationError(RegtoolError):
    """Bad input to registration (image, camera, pose, mismatched artifacts)."""
