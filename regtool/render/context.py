"""The process-wide headless OpenGL context.

Only this module sets up pyrender / PyOpenGL. `configure_platform` must run before OpenGL is
first imported anywhere in the process (PyOpenGL reads `PYOPENGL_PLATFORM` once, at import):
importing `regtool.render` does it. EGL is preferred (Mesa llvmpipe on a CPU-only machine,
NVIDIA's EGL on a GPU machine); OSMesa is the fallback when no EGL library is installed, or
when the user sets `PYOPENGL_PLATFORM=osmesa`.

pyrender's own OSMesa platform does not work with the PyOpenGL 3.1.0 it pins (it imports
`OSMesaCreateContextAttribs`, which that PyOpenGL lacks) and would recreate the context, losing
every GL object, whenever the image size changes. regtool therefore makes its OSMesa context
itself (`_OSMesaPlatform`: libOSMesa's `OSMesaCreateContextAttribs` through ctypes, a GL 3.3
core context rendering into framebuffer objects like EGL does).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

from regtool.errors import GLContextError, RenderError

INSTALL_HINT = ("install Mesa's headless GL: apt-get install libegl1 libegl-mesa0 "
                "libgl1-mesa-dri (or libosmesa6 and set PYOPENGL_PLATFORM=osmesa)")

# OSMesaCreateContextAttribs keys and values (GL/osmesa.h, Mesa >= 11.2).
_OSMESA_ATTRIBS = (0x22, 0x1908,  # OSMESA_FORMAT, OSMESA_RGBA
                   0x30, 24,  # OSMESA_DEPTH_BITS
                   0x33, 0x34,  # OSMESA_PROFILE, OSMESA_CORE_PROFILE
                   0x36, 3, 0x37, 3,  # OSMESA_CONTEXT_MAJOR_VERSION, _MINOR_VERSION
                   0)


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


def _hashable_current_context(gl_platform) -> None:
    """Make PyOpenGL 3.1.0's OSMesa `GetCurrentContext` return the context's address (an int,
    0 for none) instead of an unhashable pointer object, which breaks PyOpenGL's per-context
    storage on the first extension function (e.g. glGenVertexArrays)."""
    lib = gl_platform.PLATFORM.OSMesa
    raw = ctypes.CFUNCTYPE(ctypes.c_void_p)(("OSMesaGetCurrentContext", lib))

    def current_context() -> int:
        return raw() or 0

    gl_platform.PLATFORM.GetCurrentContext = current_context
    gl_platform.GetCurrentContext = current_context


def _platform_classes():
    """Return (OffscreenRenderer subclass, OSMesa platform class) built on pyrender's classes
    (imported here: OpenGL must not be imported before `configure_platform`)."""
    import pyrender
    from pyrender.platforms.base import Platform
    from pyrender.renderer import Renderer

    class _OSMesaPlatform(Platform):
        """An OSMesa GL 3.3 core context that renders into framebuffer objects; its own
        window-system buffer is one pixel and never resized."""

        def init_context(self) -> None:
            from OpenGL import arrays
            from OpenGL import platform as gl_platform
            from OpenGL.raw.osmesa._types import OSMesaContext

            try:
                create = gl_platform.PLATFORM.OSMesa.OSMesaCreateContextAttribs
            except AttributeError as exc:
                raise RuntimeError("libOSMesa lacks OSMesaCreateContextAttribs (Mesa >= 11.2 "
                                   "needed)") from exc
            _hashable_current_context(gl_platform)
            create.restype = OSMesaContext
            create.argtypes = [ctypes.POINTER(ctypes.c_int), OSMesaContext]
            self._context = create((ctypes.c_int * len(_OSMESA_ATTRIBS))(*_OSMESA_ATTRIBS),
                                   None)
            if not self._context:
                raise RuntimeError("OSMesaCreateContextAttribs gave no GL 3.3 core context")
            self._buffer = arrays.GLubyteArray.zeros((1, 1, 4))

        def make_current(self) -> None:
            from OpenGL import GL
            from OpenGL.osmesa import OSMesaMakeCurrent

            if not OSMesaMakeCurrent(self._context, self._buffer, GL.GL_UNSIGNED_BYTE, 1, 1):
                raise RuntimeError("OSMesaMakeCurrent failed")

        def make_uncurrent(self) -> None:
            pass

        def delete_context(self) -> None:
            from OpenGL.osmesa import OSMesaDestroyContext

            if self._context:
                OSMesaDestroyContext(self._context)
            self._context = self._buffer = None

        def supports_framebuffers(self) -> bool:
            return True

    class _OffscreenRenderer(pyrender.OffscreenRenderer):
        """pyrender's renderer, with regtool's OSMesa platform when PYOPENGL_PLATFORM=osmesa."""

        def _create(self) -> None:
            if os.environ.get("PYOPENGL_PLATFORM") != "osmesa":
                super()._create()
                return
            self._platform = _OSMesaPlatform(self.viewport_width, self.viewport_height)
            self._platform.init_context()
            self._platform.make_current()
            self._renderer = Renderer(self.viewport_width, self.viewport_height)

    return _OffscreenRenderer, _OSMesaPlatform


class GLContext:
    """A headless GL context owned by a pyrender `OffscreenRenderer`.

    Use `get_context()` rather than constructing one: the context is long-lived and reused
    across frames; `resize` reallocates only pyrender's framebuffer.
    """

    def __init__(self, width: int, height: int):
        configure_platform()
        try:
            renderer_class, _ = _platform_classes()
            self.renderer = renderer_class(width, height)
        except Exception as exc:  # EGL/OSMesa raise a zoo of types when no context exists
            platform = os.environ.get("PYOPENGL_PLATFORM", "default")
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise GLContextError(
                f"no headless OpenGL context (PYOPENGL_PLATFORM={platform}: {reason}); "
                f"{INSTALL_HINT}") from exc
        self.platform = os.environ.get("PYOPENGL_PLATFORM", "default")
        self.width, self.height = width, height
        self._max_size: tuple[int, int, str] | None = None

    def max_size(self) -> tuple[int, int, str]:
        """Return (max width, max height, what limits them) in pixels of an image this context
        renders: the smallest of GL_MAX_TEXTURE_SIZE, GL_MAX_RENDERBUFFER_SIZE and
        GL_MAX_VIEWPORT_DIMS, read from the live context once."""
        if self._max_size is None:
            from OpenGL import GL

            self.make_current()
            texture = int(GL.glGetIntegerv(GL.GL_MAX_TEXTURE_SIZE))
            renderbuffer = int(GL.glGetIntegerv(GL.GL_MAX_RENDERBUFFER_SIZE))
            vw, vh = (int(v) for v in GL.glGetIntegerv(GL.GL_MAX_VIEWPORT_DIMS))
            self._max_size = (min(texture, renderbuffer, vw), min(texture, renderbuffer, vh),
                              f"GL_MAX_TEXTURE_SIZE {texture}, GL_MAX_RENDERBUFFER_SIZE "
                              f"{renderbuffer}, GL_MAX_VIEWPORT_DIMS {vw}x{vh}")
        return self._max_size

    def check_size(self, width: int, height: int, scale: int = 1) -> None:
        """RenderError unless an image of `width` x `height` pixels, rendered at `scale` times
        that size (supersampling), fits this context's limits (`max_size`); the message says
        the largest size that fits."""
        max_w, max_h, limits = self.max_size()
        if width * scale <= max_w and height * scale <= max_h:
            return
        at = f" at supersample {scale} ({width * scale}x{height * scale})" if scale > 1 else ""
        raise RenderError(f"cannot render {width}x{height} pixels{at}: this OpenGL renders at "
                          f"most {max_w}x{max_h} ({limits}); use an image of at most "
                          f"{max_w // scale}x{max_h // scale} pixels")

    def resize(self, width: int, height: int) -> None:
        """Set the viewport of pyrender's renderer to `width` x `height` pixels; RenderError if
        that is not positive or larger than the context renders (`check_size`)."""
        if width <= 0 or height <= 0:
            raise GLContextError(f"image size must be positive, got {width}x{height}")
        self.check_size(width, height)
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
        _CONTEXT = GLContext(64, 64)  # small first: the size is checked against its limits
    _CONTEXT.resize(width, height)
    _CONTEXT.make_current()
    return _CONTEXT


def check_render_size(width: int, height: int, scale: int = 1) -> None:
    """RenderError unless `width` x `height` pixels rendered at `scale` times that size fit the
    process-wide context's limits (`GLContext.check_size`); creates the context if needed,
    without resizing it."""
    global _CONTEXT
    if _CONTEXT is None:
        _CONTEXT = GLContext(64, 64)
    _CONTEXT.check_size(width, height, scale)
