"""The process-wide headless OpenGL context.

Only this module sets up pyrender / PyOpenGL. `configure_platform` must run before OpenGL is
first imported anywhere in the process (PyOpenGL reads `PYOPENGL_PLATFORM` once, at import):
importing `regtool.render` does it. EGL is preferred (Mesa llvmpipe on a CPU-only machine,
NVIDIA's EGL on a GPU machine); OSMesa is the fallback when no EGL library is installed.
"""

from __future__ import annotations

import ctypes.util
import os
import sys

from regtool.errors import GLContextError

INSTALL_HINT = ("install Mesa's headless GL: apt-get install libegl1 libegl-mesa0 "
                "libgl1-mesa-dri (or libosmesa6 and set PYOPENGL_PLATFORM=osmesa)")


def configure_platform() -> str:
    """Select the PyOpenGL platform (`egl` or `osmesa`) unless the user set
    `PYOPENGL_PLATFORM`; return the platform in use."""
    chosen = os.environ.get("PYOPENGL_PLATFORM")
    if chosen:
        return chosen
    if "OpenGL" in sys.modules:
        return "default"  # too late to choose; whatever PyOpenGL picked stays
    if ctypes.util.find_library("EGL"):
        chosen = "egl"
    elif ctypes.util.find_library("OSMesa"):
        chosen = "osmesa"
    else:
        chosen = "egl"  # fails later with the install hint
    os.environ["PYOPENGL_PLATFORM"] = chosen
    return chosen


class GLContext:
    """A headless GL context owned by a pyrender `OffscreenRenderer`.

    Use `get_context()` rather than constructing one: the context is long-lived and reused
    across frames; `resize` reallocates only pyrender's framebuffer.
    """

    def __init__(self, width: int, height: int):
        configure_platform()
        try:
            import pyrender

            self.renderer = pyrender.OffscreenRenderer(width, height)
        except Exception as exc:  # EGL/OSMesa raise a zoo of types when no context exists
            platform = os.environ.get("PYOPENGL_PLATFORM", "default")
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise GLContextError(
                f"no headless OpenGL context (PYOPENGL_PLATFORM={platform}: {reason}); "
                f"{INSTALL_HINT}") from exc
        self.platform = os.environ.get("PYOPENGL_PLATFORM", "default")
        self.width, self.height = width, height

    def resize(self, width: int, height: int) -> None:
        """Set the viewport of pyrender's renderer to `width` x `height` pixels."""
        if width <= 0 or height <= 0:
            raise GLContextError(f"image size must be positive, got {width}x{height}")
        if (width, height) != (self.width, self.height):
            self.renderer.viewport_width, self.renderer.viewport_height = width, height
            self.width, self.height = width, height

    def make_current(self) -> None:
        """Make this context current on the calling thread."""
        self.renderer._platform.make_current()

    def info(self) -> dict:
        """Return the GL vendor, renderer and version strings and the platform."""
        from OpenGL import GL

        self.make_current()
        return {"platform": self.platform,
                "vendor": GL.glGetString(GL.GL_VENDOR).decode(),
                "renderer": GL.glGetString(GL.GL_RENDERER).decode(),
                "version": GL.glGetString(GL.GL_VERSION).decode()}

    def delete(self) -> None:
        self.renderer.delete()


_CONTEXT: GLContext | None = None


def get_context(width: int = 64, height: int = 64) -> GLContext:
    """Return the process-wide context, created on first use and resized to `width` x `height`;
    GLContextError (naming the missing packages) if none can be created."""
    global _CONTEXT
    if _CONTEXT is None:
        _CONTEXT = GLContext(width, height)
    else:
        _CONTEXT.resize(width, height)
        _CONTEXT.make_current()
    return _CONTEXT


def release_context() -> None:
    """Delete the process-wide context (e.g. before forking workers)."""
    global _CONTEXT
    if _CONTEXT is not None:
        _CONTEXT.delete()
        _CONTEXT = None
