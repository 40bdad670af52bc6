"""CPU-only speed-ups, kept apart from the maths: nothing outside this package needs them to work.

`layers.py`: faster versions of mlx.nn's Conv2d, GroupNorm, SiLU and Softmax on MLX's CPU backend,
and `use_fast_cpu_layers(model)`, the one switch that puts them into a network. On a GPU (Metal,
CUDA) the switch does nothing.
"""

from diffusion_utils.cpu.layers import use_fast_cpu_layers

__all__ = ["use_fast_cpu_layers"]
