"""Registration: fit a shape space (and the pose) to observed images by render-and-compare.

Map of the API (inputs -> outputs, in call order):

* `inputs` — files to objects: `read_camera`, `read_pose`, `read_image`, `read_mask` (one line
  per bad input), `check_pose_in_view` (the object must be in front of the camera and in view).
* `pipeline` — the entry points: `load_models(shapespace, unet, device)`;
  `make_observation(image, camera, pose, feature_loss, dilation, mask)` -> `Observation` (the
  U-Net's object region when no mask is given); `run_registration(space, unet, observations,
  config, device, joint, callback, callbacks)` -> `RegistrationResult` (builds the image
  comparison and the supersampled differentiable renderer, attaches the GIF recorder
  `figures.GifFrames` when config.register.gif, then calls `optimise.register`);
  `summary_line`.
* `optimise` — the optimisation itself: `Problem` (shape space, observations, loss, renderer,
  scales) and `forward(problem, code, pose increment)` -> `Rendering` (images, masks, loss), the
  one forward pass every stage uses; the stages `_initial_increment` (silhouette centring and
  rotation grid), `_descend` (one SGD descent with `_ScaledSGD` steps), `_code_search`,
  `_keep_better`; `register`, the driver composing them. Progress bars, GIF frames and logging
  are callbacks: `register(..., callbacks=[...])` calls each with an `IterationEvent` (descent
  index, the iteration's record, the renderings, the observations) after every loss
  evaluation. The backward comes from `regtool.render.diff`: a field producer
  (`image_gradient_producer` by default) and `field_to_vertex_gradients`.
* `refine` — the last stage of `register` when `register.refine = "residual"`: a smooth
  residual field beyond the latent space (`refine`, `RefinedResult`, `refinement_record` for
  result.json; docs/refinement.md).
* `result` — writing one result set atomically: `write_registration` (meshes, result.json,
  overlay.png, optimisation.gif); `figures` draws the labelled overlay and GIF frames.
* `transfer` — named points on the canonical carried to the registered mesh.

`regtool register` (regtool/cli/register.py) and `regtool evaluate`
(regtool/evaluation/run.py) both go through `pipeline.run_registration`.
"""
