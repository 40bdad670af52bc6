"""diffusion_utils: the MLX helper package behind the diffusion notebook series.

Reading order, maths first:
    schedules.py    the forward process: betas, alpha-bar, q(x_t | x0), SNR, v
    unet.py         the denoiser (plain mlx.nn)
    train.py        the loss, one compiled training step, EMA, the Trainer loop and presets
    samplers.py     DDPM, DDIM, DPM-Solver++, classifier-free guidance
    autoencoder.py  the latent space
Then the data and the tooling around the models:
    data.py, styles.py            data sets, loaders and the procedural style painters
    checkpoint.py, files.py       atomic, resumable checkpoints; loading a trained model
    classifier.py, metrics.py     the style classifier and sample-quality metrics
    viz.py, widgets.py            pictures and notebook widgets
    distributed.py                data-parallel training over several machines
    cli.py                        `python -m diffusion_utils ...`
Last, optional speed-ups: `cpu/` (fast BLAS, a batch slice per CPU stream, faster CPU layers);
nothing above needs them to be correct, and on a GPU they do nothing.

The BLAS set-up must run before anything imports `mlx.core` (see `cpu/blas.py`), so it comes
first here; every other module imports MLX after it. `keep_cpu_buffers` lets MLX's CPU
allocator reuse a step's buffers instead of page-faulting.
"""

from diffusion_utils.cpu.blas import keep_cpu_buffers, setup_blas

setup_blas()
keep_cpu_buffers()

__version__ = "0.1.0"
