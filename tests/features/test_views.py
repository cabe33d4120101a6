"""Training views: seeded, labelled, on user backgrounds, identical from a worker process."""

from __future__ import annotations

import numpy as np
import pytest

from regtool.errors import DatasetError, RenderError
from regtool.features.train import load_view_meshes
from regtool.features.views import (
    BatchStream,
    ViewSampler,
    load_backgrounds,
    render_batch,
    render_fixed_set,
    sample_pose,
)

pytestmark = pytest.mark.gl


@pytest.fixture(scope="module")
def meshes(dataset_dir):
    return load_view_meshes(dataset_dir, ["bottle", "drill"])


def test_meshes_are_split_and_labelled(meshes):
    train, test = meshes
    assert len(train) == 20 and len(test) == 4
    assert {m.label for m in train if m.name.startswith("drill")} == {2}
    assert not {m.name for m in train} & {m.name for m in test}


def test_precomputed_normals_render_the_same_view(meshes):
    from dataclasses import replace

    from regtool.features.views import render_view

    mesh = meshes[0][0]
    assert mesh.normals is not None and mesh.normals.shape == mesh.vertices.shape
    assert np.allclose(np.linalg.norm(mesh.normals, axis=1), 1.0)
    sampler = ViewSampler(96, 72, 40.0, 0.6, 0.2)
    given = render_view(mesh, sampler, np.random.default_rng(3))
    computed = render_view(replace(mesh, normals=None), sampler, np.random.default_rng(3))
    assert given[1].any()
    assert np.array_equal(given[0], computed[0]) and np.array_equal(given[1], computed[1])
    with pytest.raises(RenderError, match="vertex normals"):
        render_view(replace(mesh, normals=mesh.normals[:-1]), sampler, np.random.default_rng(3))


def test_pose_distribution():
    sampler = ViewSampler(160, 120, 40.0, 0.6, 0.2)
    rng = np.random.default_rng(0)
    poses = [sample_pose(rng, sampler) for _ in range(300)]
    z = np.array([p.translation[2] for p in poses])
    assert 0.48 <= z.min() and z.max() <= 0.72
    # Viewing directions cover the sphere: the object's z axis seen from all sides.
    up = np.array([p.rotation[:, 2] for p in poses])
    assert (up[:, 2] > 0.5).any() and (up[:, 2] < -0.5).any()
    assert abs(up.mean(axis=0)).max() < 0.15


def test_batches_seeded_and_labelled(meshes, tmp_path):
    import imageio.v3 as iio

    train, _ = meshes
    folder = tmp_path / "bg"
    folder.mkdir()
    iio.imwrite(folder / "a.png", (np.random.default_rng(0).uniform(0, 255, (50, 70, 3))
                                   ).astype(np.uint8))
    (folder / "junk.jpg").write_bytes(b"not an image")
    backgrounds = load_backgrounds(folder)
    assert len(backgrounds) == 1 and backgrounds[0].dtype == np.uint8
    sampler = ViewSampler(96, 72, 40.0, 0.6, 0.2, backgrounds)
    a_img, a_lab = render_batch(train, sampler, seed=5, index=3, size=6)
    b_img, b_lab = render_batch(train, sampler, seed=5, index=3, size=6)
    c_img, _ = render_batch(train, sampler, seed=5, index=4, size=6)
    assert a_img.shape == (6, 72, 96, 3) and a_lab.shape == (6, 72, 96)
    assert np.array_equal(a_img, b_img) and np.array_equal(a_lab, b_lab)
    assert not np.array_equal(a_img, c_img)
    assert set(np.unique(a_lab)) <= {0, 1, 2}
    assert ((a_lab > 0).mean(axis=(1, 2)) > 0.005).all()  # every view shows its object
    v_img, v_lab = render_fixed_set(train, sampler, seed=1, count=4)
    assert v_img.shape == (4, 72, 96, 3) and (v_lab > 0).any()


def test_worker_process_matches_inline(meshes):
    train, _ = meshes
    sampler = ViewSampler(64, 48, 40.0, 0.6, 0.2)
    with BatchStream(train[:3], sampler, seed=2, batch_size=2, start=4, workers=1) as stream:
        got = [stream.next() for _ in range(2)]
        assert stream.render_seconds > 0
    for k, (images, labels) in enumerate(got):
        ref_images, ref_labels = render_batch(train[:3], sampler, 2, 4 + k, 2)
        assert np.array_equal(images, ref_images) and np.array_equal(labels, ref_labels)


def test_backgrounds_errors(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        load_backgrounds(tmp_path / "none")
    with pytest.raises(DatasetError, match="no readable image"):
        load_backgrounds(tmp_path)
    assert load_backgrounds(None) == ()


def test_default_profile_trains_on_all_the_clutter(dataset_dir):
    """The default config turns every kind of clutter on, the built-in training photos (never
    a held-back one) and the other categories' training meshes as distractors."""
    from regtool.config import load_config
    from regtool.features.train import clutter_sampler, load_distractor_meshes
    from regtool.render.clutter import builtin_photos

    cfg = load_config()
    distractors = load_distractor_meshes(dataset_dir, ["bottle"])
    assert {m.name.split("_")[0] for m in distractors} == {"camera", "drill", "spray"}
    assert all(m.label == 0 and "test" not in m.name for m in distractors)
    sampler = clutter_sampler(cfg.unet, cfg.render, (), distractors)
    assert min(sampler.clutter, sampler.distractors, sampler.occluders,
               sampler.photometric) > 0
    photos = {p.tobytes() for p in sampler.photos()}
    assert photos == {p.tobytes() for _, p in builtin_photos("train")}
    assert not photos & {p.tobytes() for _, p in builtin_photos("held_back")}


def test_occluders_and_distractors_in_front_take_pixels_from_the_label(meshes):
    """A view with an occluder over 30 % of the object: the same rendering as without one (the
    clutter draws come after it) with 30 % of its object pixels relabelled background."""
    from dataclasses import replace

    from regtool.features.views import render_view

    train, _ = meshes
    plain = ViewSampler(96, 72, 40.0, 0.6, 0.2, occluders=0.0)
    occluded = replace(plain, occluders=1.0, occlusion=(0.3, 0.3))
    for seed in range(4):
        rgb0, label0 = render_view(train[seed], plain, np.random.default_rng(seed))
        rgb1, label1 = render_view(train[seed], occluded, np.random.default_rng(seed))
        assert label0.sum() > 50
        assert not (label1 & ~label0).any()  # only pixels taken away
        share = (label1 > 0).sum() / (label0 > 0).sum()
        assert abs(share - 0.7) < 0.05, share
        assert (np.any(rgb1 != rgb0, axis=2) & (label0 > 0) & (label1 == 0)).any()
    # Distractors in front: never more than half of the object hidden, their pixels labelled 0.
    front = replace(plain, distractors=1.0, distractor_meshes=tuple(train[10:]))
    hidden = []
    for seed in range(12):
        _, label0 = render_view(train[0], plain, np.random.default_rng(seed))
        _, label1 = render_view(train[0], front, np.random.default_rng(seed))
        assert set(np.unique(label1)) <= {0, train[0].label}
        hidden.append(1 - (label1 > 0).sum() / max((label0 > 0).sum(), 1))
    assert max(hidden) <= 0.5 + 1e-9


def test_clutter_views_are_seeded_and_structured(meshes):
    from dataclasses import replace

    from regtool.render.clutter import builtin_photos

    train, _ = meshes
    sampler = replace(ViewSampler(96, 72, 40.0, 0.6, 0.2), clutter=1.0, photometric=1.0,
                      photo_split="train")
    a = render_batch(train, sampler, 5, 0, 3)
    b = render_batch(train, sampler, 5, 0, 3)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    plain = render_batch(train, ViewSampler(96, 72, 40.0, 0.6, 0.2), 5, 0, 3)
    edges = [float((np.abs(np.diff(x.astype(int), axis=2)).max(axis=-1) > 25).mean())
             for x in (a[0], plain[0])]
    assert edges[0] > 2 * edges[1], edges
    assert len(builtin_photos("train")) >= 10


def test_supersampled_views_soften_the_outline_only(meshes):
    """`supersample` = 1: the same scene (the factor is drawn after pose, lights, material and
    background) with the object rendered at 2-3x and area-averaged: the label changes on the
    outline only, the colours inside the object stay (mean < 6 grey levels), the colour steps
    across the outline get smaller."""
    from dataclasses import replace

    from scipy import ndimage

    from regtool.features.views import render_view

    train, _ = meshes
    plain = ViewSampler(96, 72, 40.0, 0.6, 0.2)
    soft = replace(plain, supersample=1.0)

    def steps(rgb: np.ndarray) -> np.ndarray:
        return np.abs(np.diff(rgb.astype(int), axis=1)).max(axis=-1)

    for seed in range(4):
        rgb0, label0 = render_view(train[seed], plain, np.random.default_rng(seed))
        rgb1, label1 = render_view(train[seed], soft, np.random.default_rng(seed))
        m0, m1 = label0 > 0, label1 > 0
        assert m0.sum() > 50 and (m0 & m1).sum() / (m0 | m1).sum() > 0.95
        outline = ndimage.binary_dilation(m0) & ~ndimage.binary_erosion(m0)
        assert not ((m0 != m1) & ~outline).any()
        inner = ndimage.binary_erosion(m0, iterations=2)
        assert np.abs(rgb0.astype(int) - rgb1.astype(int)).max(axis=-1)[inner].mean() < 6
        across = outline[:, 1:] | outline[:, :-1]
        assert steps(rgb1)[across].mean() < steps(rgb0)[across].mean()
