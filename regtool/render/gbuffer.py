"""G-buffer pass: per-pixel face id, barycentrics, depth and surface point, through PyOpenGL.

One draw call in the process-wide headless context (`render.context.get_context`) with our own
shaders and our own single-sample float framebuffer (pyrender's 4x MSAA RGBA8 buffer is never
read). The fragment shader intersects each pixel-centre ray with the plane of the rasterised
triangle (`gl_PrimitiveID`, whose vertices it fetches from buffer textures aliasing the vertex
and index buffers), so barycentrics and depth are those of a ray cast through the pixel centre,
and face ids are exact (no blending, no MSAA).

Row order: the projection flips y in clip space, so GL's bottom-up framebuffer rows come out
top-first: row 0 of every array is the top image row (numpy/OpenCV order). Pixel (i, j) is the
ray through the pixel centre (u, v) = (j + 0.5, i + 0.5), see `geometry/camera.py`.

GL objects (program, vertex array, buffers, buffer textures, framebuffer) are created once per
context and reused: vertex positions are written in place with `glBufferSubData` when the vertex
count is unchanged, the index buffer only when the faces change, the framebuffer attachments are
reallocated in place (same object names) on resize, so nothing leaks across frames.
"""

from __future__ import annotations

import ctypes
import functools
import weakref
from dataclasses import dataclass

import numpy as np
import torch

from regtool.errors import RenderError
from regtool.geometry.camera import CameraIntrinsics
from regtool.render.context import GLContext, get_context

_VERTEX_SHADER = """
#version 410 core
layout(location = 0) in vec3 position;  // camera frame (OpenCV), metres
uniform mat4 projection;                // OpenCV camera frame -> clip space, y flipped
void main() {
    gl_Position = projection * vec4(position, 1.0);
}
"""

_FRAGMENT_SHADER = """
#version 410 core
uniform samplerBuffer vertex_tex;   // (V) RGB32F: the vertex buffer itself
uniform isamplerBuffer face_tex;    // (F) RGB32I: the index buffer itself
uniform vec4 intrinsics;            // fx, fy, cx, cy in pixels
layout(location = 0) out int out_face;      // face index + 1 (0 = background, cleared)
layout(location = 1) out vec4 out_bary;     // b0, b1, b2, z (camera-frame depth, metres)
void main() {
    ivec3 idx = texelFetch(face_tex, gl_PrimitiveID).xyz;
    vec3 a = texelFetch(vertex_tex, idx.x).xyz;
    vec3 b = texelFetch(vertex_tex, idx.y).xyz;
    vec3 c = texelFetch(vertex_tex, idx.z).xyz;
    // gl_FragCoord.xy is the pixel centre (u, v) in the top-down pixel frame (y is flipped).
    vec3 ray = vec3((gl_FragCoord.x - intrinsics.z) / intrinsics.x,
                    (gl_FragCoord.y - intrinsics.w) / intrinsics.y, 1.0);
    vec3 n = cross(b - a, c - a);
    float nn = dot(n, n);
    float denom = dot(n, ray);
    float t = (abs(denom) > 1e-30) ? dot(n, a) / denom : 0.0;
    vec3 p = t * ray;
    vec3 bary;
    bary.x = dot(cross(b - p, c - p), n) / nn;
    bary.y = dot(cross(c - p, a - p), n) / nn;
    bary = clamp(bary, 0.0, 1.0);
    bary.z = 1.0 - bary.x - bary.y;
    if (bary.z < 0.0) { bary.xy /= (bary.x + bary.y); bary.z = 0.0; }
    if (!(nn > 0.0) || !(t > 0.0)) {  // degenerate or edge-on triangle: use its centroid
        bary = vec3(1.0 / 3.0);
        t = (a.z + b.z + c.z) / 3.0;
    }
    out_face = gl_PrimitiveID + 1;
    out_bary = vec4(bary, t);
}
"""


@dataclass(frozen=True)
class GBuffer:
    """The per-pixel result of `rasterize`: torch CPU tensors, rows top to bottom.

    * `face_id` (H, W) int64: 0 on the background, else the index of the visible face + 1.
    * `bary` (H, W, 3) float32: barycentric coordinates of the surface point seen through the
      pixel centre with respect to the face's vertices (faces[f, 0], faces[f, 1], faces[f, 2]);
      they sum to 1; 0 on the background.
    * `depth` (H, W) float32: camera-frame z of that point, metres; 0 on the background.
    * `mask` (H, W) bool: pixel centre covered by the mesh (`face_id > 0`).
    * `point` (H, W, 3) float32: the surface point in the frame of the given vertices (the
      OpenCV camera frame), metres; 0 on the background.
    """

    face_id: torch.Tensor
    bary: torch.Tensor
    depth: torch.Tensor
    mask: torch.Tensor
    point: torch.Tensor

    @property
    def height(self) -> int:
        return int(self.face_id.shape[0])

    @property
    def width(self) -> int:
        return int(self.face_id.shape[1])


def pixel_rays(camera: CameraIntrinsics, dtype: torch.dtype = torch.float32,
               device: torch.device | str = "cpu") -> torch.Tensor:
    """Return (H, W, 3) camera-frame rays ((u - cx) / fx, (v - cy) / fy, 1) through the pixel
    centres (u, v) = (j + 0.5, i + 0.5); a surface point at depth z is z * ray. Cached per
    camera, dtype and device: treat the result as read-only."""
    return _pixel_rays(camera, dtype, str(torch.device(device)))


@functools.lru_cache(maxsize=8)
def _pixel_rays(camera: CameraIntrinsics, dtype: torch.dtype, device: str) -> torch.Tensor:
    u = (torch.arange(camera.width, dtype=torch.float64) + 0.5 - camera.cx) / camera.fx
    v = (torch.arange(camera.height, dtype=torch.float64) + 0.5 - camera.cy) / camera.fy
    rays = torch.stack([u[None, :].expand(camera.height, -1), v[:, None].expand(-1, camera.width),
                        torch.ones(camera.height, camera.width, dtype=torch.float64)], dim=-1)
    return rays.to(dtype=dtype, device=device)


def check_mesh(vertices: np.ndarray, faces: np.ndarray) -> None:
    """Raise RenderError unless vertices are (V, 3) finite and faces (F, 3) integer indices in
    [0, V) with F >= 1."""
    if vertices.ndim != 2 or vertices.shape[1] != 3 or vertices.shape[0] == 0:
        raise RenderError(f"vertices must have shape (V, 3) with V >= 1, got {vertices.shape}")
    if not np.isfinite(vertices).all():
        raise RenderError("vertices contain NaN or infinite coordinates")
    if faces.ndim != 2 or faces.shape[1] != 3 or faces.shape[0] == 0:
        raise RenderError(f"faces must have shape (F, 3) with F >= 1, got {faces.shape}")
    if not np.issubdtype(faces.dtype, np.integer):
        raise RenderError(f"faces must be integer indices, got dtype {faces.dtype}")
    lo, hi = int(faces.min()), int(faces.max())
    if lo < 0 or hi >= vertices.shape[0]:
        raise RenderError(f"face indices must be in [0, {vertices.shape[0]}), "
                          f"got range [{lo}, {hi}]")


def check_camera(camera: CameraIntrinsics) -> None:
    """Raise RenderError unless the image size is positive and the focal lengths finite > 0."""
    if int(camera.width) <= 0 or int(camera.height) <= 0:
        raise RenderError(f"image size must be positive, got {camera.width}x{camera.height}")
    if not (np.isfinite([camera.fx, camera.fy, camera.cx, camera.cy]).all()
            and camera.fx > 0 and camera.fy > 0):
        raise RenderError(f"camera intrinsics must be finite with fx, fy > 0, got {camera}")


def _as_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


class _GBufferPass:
    """GL state of the G-buffer pass in one context: created once, reused every frame."""

    def __init__(self) -> None:
        from OpenGL import GL

        self.program = self._link(GL)
        self.vao = GL.glGenVertexArrays(1)
        self.vbo, self.ebo = GL.glGenBuffers(2)
        self.vertex_tex, self.face_tex, self.id_tex, self.bary_tex = GL.glGenTextures(4)
        self.depth_rb = GL.glGenRenderbuffers(1)
        self.fbo = GL.glGenFramebuffers(1)
        self.n_vertices = -1
        self.faces: np.ndarray | None = None
        self.size = (0, 0)
        self.loc_projection = GL.glGetUniformLocation(self.program, "projection")
        self.loc_intrinsics = GL.glGetUniformLocation(self.program, "intrinsics")
        GL.glUseProgram(self.program)
        GL.glUniform1i(GL.glGetUniformLocation(self.program, "vertex_tex"), 0)
        GL.glUniform1i(GL.glGetUniformLocation(self.program, "face_tex"), 1)
        GL.glUseProgram(0)
        GL.glBindVertexArray(self.vao)
        GL.glBindBuffer(GL.GL_ARRAY_BUFFER, self.vbo)
        GL.glEnableVertexAttribArray(0)
        GL.glVertexAttribPointer(0, 3, GL.GL_FLOAT, GL.GL_FALSE, 12, ctypes.c_void_p(0))
        GL.glBindBuffer(GL.GL_ELEMENT_ARRAY_BUFFER, self.ebo)  # recorded in the VAO
        GL.glBindVertexArray(0)
        GL.glBindBuffer(GL.GL_ARRAY_BUFFER, 0)
        # Buffer textures alias the vertex and index buffers (attached in `upload`): the
        # fragment shader reads the triangle's vertices without extra copies or uploads.

    @staticmethod
    def _link(GL) -> int:
        program = GL.glCreateProgram()
        shaders = []
        for kind, source in ((GL.GL_VERTEX_SHADER, _VERTEX_SHADER),
                             (GL.GL_FRAGMENT_SHADER, _FRAGMENT_SHADER)):
            shader = GL.glCreateShader(kind)
            GL.glShaderSource(shader, source)
            GL.glCompileShader(shader)
            if not GL.glGetShaderiv(shader, GL.GL_COMPILE_STATUS):
                log = GL.glGetShaderInfoLog(shader).decode(errors="replace")
                raise RenderError(f"G-buffer shader does not compile: {log.strip()}")
            GL.glAttachShader(program, shader)
            shaders.append(shader)
        GL.glLinkProgram(program)
        for shader in shaders:  # flagged for deletion, freed with the program
            GL.glDetachShader(program, shader)
            GL.glDeleteShader(shader)
        if not GL.glGetProgramiv(program, GL.GL_LINK_STATUS):
            log = GL.glGetProgramInfoLog(program).decode(errors="replace")
            raise RenderError(f"G-buffer program does not link: {log.strip()}")
        return program

    def upload(self, vertices: np.ndarray, faces: np.ndarray) -> None:
        """Write vertex positions (in place when the count is unchanged) and, if changed, faces."""
        from OpenGL import GL

        GL.glBindVertexArray(self.vao)  # the index buffer binding is part of our VAO's state
        GL.glBindBuffer(GL.GL_ARRAY_BUFFER, self.vbo)
        if vertices.shape[0] == self.n_vertices:
            GL.glBufferSubData(GL.GL_ARRAY_BUFFER, 0, vertices.nbytes, vertices)
        else:  # same buffer name, new storage: the old storage is freed by GL
            GL.glBufferData(GL.GL_ARRAY_BUFFER, vertices.nbytes, vertices, GL.GL_DYNAMIC_DRAW)
            self.n_vertices = vertices.shape[0]
            self._attach_buffer_texture(GL, self.vertex_tex, GL.GL_RGB32F, self.vbo)
        GL.glBindBuffer(GL.GL_ARRAY_BUFFER, 0)
        if self.faces is None or self.faces.shape != faces.shape \
                or not np.array_equal(self.faces, faces):
            GL.glBindBuffer(GL.GL_ELEMENT_ARRAY_BUFFER, self.ebo)
            GL.glBufferData(GL.GL_ELEMENT_ARRAY_BUFFER, faces.nbytes, faces, GL.GL_STATIC_DRAW)
            self._attach_buffer_texture(GL, self.face_tex, GL.GL_RGB32I, self.ebo)
            self.faces = faces.copy()
        GL.glBindVertexArray(0)

    @staticmethod
    def _attach_buffer_texture(GL, texture: int, fmt: int, buffer: int) -> None:
        """Point a buffer texture at `buffer`'s current storage (again after glBufferData)."""
        GL.glBindTexture(GL.GL_TEXTURE_BUFFER, texture)
        GL.glTexBuffer(GL.GL_TEXTURE_BUFFER, fmt, buffer)
        GL.glBindTexture(GL.GL_TEXTURE_BUFFER, 0)

    def resize(self, width: int, height: int) -> None:
        """(Re)allocate the attachments in place: R32I face ids, RGBA32F barycentrics + depth,
        32-bit float depth buffer; single-sample."""
        from OpenGL import GL

        if (width, height) == self.size:
            return
        GL.glBindTexture(GL.GL_TEXTURE_2D, self.id_tex)
        GL.glTexImage2D(GL.GL_TEXTURE_2D, 0, GL.GL_R32I, width, height, 0, GL.GL_RED_INTEGER,
                        GL.GL_INT, None)
        GL.glTexParameteri(GL.GL_TEXTURE_2D, GL.GL_TEXTURE_MIN_FILTER, GL.GL_NEAREST)
        GL.glTexParameteri(GL.GL_TEXTURE_2D, GL.GL_TEXTURE_MAG_FILTER, GL.GL_NEAREST)
        GL.glBindTexture(GL.GL_TEXTURE_2D, self.bary_tex)
        GL.glTexImage2D(GL.GL_TEXTURE_2D, 0, GL.GL_RGBA32F, width, height, 0, GL.GL_RGBA,
                        GL.GL_FLOAT, None)
        GL.glTexParameteri(GL.GL_TEXTURE_2D, GL.GL_TEXTURE_MIN_FILTER, GL.GL_NEAREST)
        GL.glTexParameteri(GL.GL_TEXTURE_2D, GL.GL_TEXTURE_MAG_FILTER, GL.GL_NEAREST)
        GL.glBindTexture(GL.GL_TEXTURE_2D, 0)
        GL.glBindRenderbuffer(GL.GL_RENDERBUFFER, self.depth_rb)
        GL.glRenderbufferStorage(GL.GL_RENDERBUFFER, GL.GL_DEPTH_COMPONENT32F, width, height)
        GL.glBindRenderbuffer(GL.GL_RENDERBUFFER, 0)
        GL.glBindFramebuffer(GL.GL_FRAMEBUFFER, self.fbo)
        GL.glFramebufferTexture2D(GL.GL_FRAMEBUFFER, GL.GL_COLOR_ATTACHMENT0, GL.GL_TEXTURE_2D,
                                  self.id_tex, 0)
        GL.glFramebufferTexture2D(GL.GL_FRAMEBUFFER, GL.GL_COLOR_ATTACHMENT1, GL.GL_TEXTURE_2D,
                                  self.bary_tex, 0)
        GL.glFramebufferRenderbuffer(GL.GL_FRAMEBUFFER, GL.GL_DEPTH_ATTACHMENT,
                                     GL.GL_RENDERBUFFER, self.depth_rb)
        status = GL.glCheckFramebufferStatus(GL.GL_FRAMEBUFFER)
        GL.glBindFramebuffer(GL.GL_FRAMEBUFFER, 0)
        if status != GL.GL_FRAMEBUFFER_COMPLETE:
            raise RenderError(f"G-buffer framebuffer incomplete (status 0x{int(status):x}) "
                              f"at {width}x{height}")
        self.size = (width, height)
        self.face_out = np.empty((height, width), np.int32)
        self.bary_out = np.empty((height, width, 4), np.float32)

    def draw(self, camera: CameraIntrinsics, n_faces: int, znear: float,
             zfar: float) -> tuple[np.ndarray, np.ndarray]:
        """Draw and read back: (H, W) int32 face id + 1 and (H, W, 4) float32 (b0, b1, b2, z),
        rows top-first (the arrays are reused by the next call)."""
        from OpenGL import GL

        width, height = self.size
        flip = np.diag([1.0, -1.0, 1.0, 1.0])  # image rows top-first in the framebuffer
        cv_to_gl = np.diag([1.0, -1.0, -1.0, 1.0])
        projection = flip @ camera.gl_projection(znear, zfar) @ cv_to_gl
        GL.glBindFramebuffer(GL.GL_FRAMEBUFFER, self.fbo)
        GL.glDrawBuffers(2, [GL.GL_COLOR_ATTACHMENT0, GL.GL_COLOR_ATTACHMENT1])
        GL.glViewport(0, 0, width, height)
        GL.glDisable(GL.GL_MULTISAMPLE)
        GL.glDisable(GL.GL_BLEND)
        GL.glDisable(GL.GL_CULL_FACE)
        GL.glDisable(GL.GL_SCISSOR_TEST)
        GL.glEnable(GL.GL_DEPTH_TEST)
        GL.glDepthFunc(GL.GL_LESS)
        GL.glDepthMask(GL.GL_TRUE)
        GL.glColorMask(GL.GL_TRUE, GL.GL_TRUE, GL.GL_TRUE, GL.GL_TRUE)
        GL.glClearBufferiv(GL.GL_COLOR, 0, np.zeros(4, np.int32))
        GL.glClearBufferfv(GL.GL_COLOR, 1, np.zeros(4, np.float32))
        GL.glClearBufferfv(GL.GL_DEPTH, 0, np.ones(1, np.float32))
        GL.glUseProgram(self.program)
        GL.glUniformMatrix4fv(self.loc_projection, 1, GL.GL_TRUE,
                              projection.astype(np.float32))
        GL.glUniform4f(self.loc_intrinsics, camera.fx, camera.fy, camera.cx, camera.cy)
        GL.glActiveTexture(GL.GL_TEXTURE0)
        GL.glBindTexture(GL.GL_TEXTURE_BUFFER, self.vertex_tex)
        GL.glActiveTexture(GL.GL_TEXTURE1)
        GL.glBindTexture(GL.GL_TEXTURE_BUFFER, self.face_tex)
        GL.glBindVertexArray(self.vao)
        GL.glDrawElements(GL.GL_TRIANGLES, 3 * n_faces, GL.GL_UNSIGNED_INT, ctypes.c_void_p(0))
        GL.glBindVertexArray(0)
        GL.glUseProgram(0)
        GL.glBindTexture(GL.GL_TEXTURE_BUFFER, 0)
        GL.glActiveTexture(GL.GL_TEXTURE0)
        GL.glBindTexture(GL.GL_TEXTURE_BUFFER, 0)
        GL.glPixelStorei(GL.GL_PACK_ALIGNMENT, 4)
        GL.glReadBuffer(GL.GL_COLOR_ATTACHMENT0)
        GL.glReadPixels(0, 0, width, height, GL.GL_RED_INTEGER, GL.GL_INT, self.face_out)
        GL.glReadBuffer(GL.GL_COLOR_ATTACHMENT1)
        GL.glReadPixels(0, 0, width, height, GL.GL_RGBA, GL.GL_FLOAT, self.bary_out)
        GL.glBindFramebuffer(GL.GL_FRAMEBUFFER, 0)
        return self.face_out, self.bary_out

    def gl_object_names(self) -> dict[str, int]:
        """Return the names of every GL object this pass owns (to check for leaks)."""
        return {"program": int(self.program), "vao": int(self.vao), "vbo": int(self.vbo),
                "ebo": int(self.ebo), "vertex_tex": int(self.vertex_tex),
                "face_tex": int(self.face_tex), "id_tex": int(self.id_tex),
                "bary_tex": int(self.bary_tex), "depth_rb": int(self.depth_rb),
                "fbo": int(self.fbo)}


_PASSES: "weakref.WeakKeyDictionary[GLContext, _GBufferPass]" = weakref.WeakKeyDictionary()


def gbuffer_pass(context: GLContext) -> _GBufferPass:
    """Return the G-buffer pass (GL objects) of `context`, created on first use."""
    state = _PASSES.get(context)
    if state is None:
        context.make_current()
        state = _GBufferPass()
        _PASSES[context] = state
    return state


def rasterize(vertices: np.ndarray | torch.Tensor, faces: np.ndarray | torch.Tensor,
              camera: CameraIntrinsics, znear: float = 0.01, zfar: float = 100.0) -> GBuffer:
    """Rasterise a triangle mesh given in the camera frame and return its `GBuffer`.

    vertices: (V, 3) float, OpenCV camera frame (x right, y down, z forward), metres; numpy or
    torch on any device (copied to CPU float32). faces: (F, 3) integer vertex indices. Only
    points with znear < z < zfar (metres) are drawn; both sides of every face are rendered.
    Raises RenderError for malformed or out-of-range faces, non-finite vertices or an empty
    image size; GLContextError when no OpenGL context can be created.
    """
    check_camera(camera)
    v = np.ascontiguousarray(_as_numpy(vertices), dtype=np.float32)
    f = _as_numpy(faces)
    check_mesh(v, f)
    f = np.ascontiguousarray(f, dtype=np.uint32)
    width, height = int(camera.width), int(camera.height)
    context = get_context(width, height)
    state = gbuffer_pass(context)
    state.upload(v, f)
    state.resize(width, height)
    face_out, bary_out = state.draw(camera, f.shape[0], znear, zfar)
    face_id = torch.from_numpy(face_out).to(torch.int64)
    data = torch.from_numpy(bary_out.copy())
    bary = data[..., :3]
    depth = data[..., 3]
    point = depth[..., None] * pixel_rays(camera)
    return GBuffer(face_id=face_id, bary=bary, depth=depth, mask=face_id > 0, point=point)
