"""One denoising run, shared by the generator and the refiner: a pipeline call for a batch whose rows may belong
to different requests, with composable step callbacks, on its device's one worker thread.

* :mod:`~philip.diffusion.run`: :class:`~philip.diffusion.run.Denoiser` (a pipeline, its UNet capture and its
  device's thread) starts a :class:`~philip.diffusion.run.DenoisingRun` for a batch of
  :class:`~philip.diffusion.run.BatchMember` s;
* :mod:`~philip.diffusion.callbacks`: cancel, progress and preview callbacks in the diffusers
  ``callback_on_step_end`` style;
* :mod:`~philip.diffusion.schedulers`: the per-call scheduler swap;
* :mod:`~philip.diffusion.executors`: one thread per device, and posting back to the event loop.

Only ``executors`` is free of torch, so light importers take it alone.
"""
