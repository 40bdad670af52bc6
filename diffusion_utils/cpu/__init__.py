"""CPU-only speed-ups, kept apart from the maths: nothing outside this package needs them to work.

- `blas.py`: loads a fast BLAS before `mlx.core` on Linux, and reports what MLX uses (`doctor`).
- `streams.py`: a slice of each batch per CPU core, each on its own MLX stream.
- `layers.py`: faster CPU versions of mlx.nn's Conv2d, GroupNorm, SiLU and Softmax, and
  `use_fast_cpu_layers(model)`, the one switch that puts them into a network.
- `train_step.py`: the compiled training step with each batch slice on its own stream.

On a GPU (Metal, CUDA) every switch here does nothing. This `__init__` imports nothing, so that
`diffusion_utils.cpu.blas` can load the BLAS before anything imports `mlx.core`; import the
modules themselves (`from diffusion_utils.cpu.layers import use_fast_cpu_layers`).
"""
