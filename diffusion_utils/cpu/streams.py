"""Use every CPU core for one batch: a slice of the batch per core, each on its own MLX stream.

MLX's CPU backend runs the operations of a stream one after another on one thread. Only its
matrix products use the other cores (through OpenBLAS's threads); the hundreds of element-wise
kernels, reductions and copies of a UNet step run on one core while the rest wait. Giving each
core a stream and a slice of the batch runs all of them at once. The slices are independent
(the UNet has no batch statistics: GroupNorm normalises each image on its own), so the result
is the whole batch's, up to float32 rounding where per-slice sums are added. OpenBLAS is then
told to use one thread per call, since every core already runs a stream.

Measured on a 2-core x86_64 machine (`benchmarks/streams.py`, PROFILE.md): a sampling forward
pass 1.3-1.9x and a training step 1.15-1.5x faster than one stream with two OpenBLAS threads
(more on the larger `full` preset). On a GPU the device already runs a whole batch at once, so
`workers()` is 1 there and nothing here changes anything.

An MLX stream belongs to the thread that made it, and JupyterLab 4.6 runs widget callbacks on
another thread than the cells; so the streams and the per-stream compiled functions here are
kept per thread (`threading.local`): any thread may call a parallel model.

    streams.workers()                   # streams a batch is split across (1 on a GPU)
    streams.set_workers(1)              # one stream, OpenBLAS on every core (as plain MLX)
    fn = streams.batch_parallel(fn)     # any per-image function: same values, all cores busy
    model = streams.split_batches(model)  # the same, in place, for a network used for sampling

The training step split across streams is in `train_step.py`.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Sequence

from diffusion_utils.cpu import blas

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_map

ENV_VAR = "DIFFUSION_UTILS_WORKERS"
MAX_DEFAULT_WORKERS = 8  # measured on 2 cores only; more streams than this are untested
MIN_CHUNK = 4  # images per stream: smaller slices make the matrix products too thin to pay

_state: dict = {"workers": None}
_split_classes: dict[type, type] = {}  # model class -> its `split_batches` subclass
_per_thread = threading.local()  # .streams: {(device, count): [stream, ...]} made by this thread


def cpu_cores() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def _default_workers() -> int:
    value = os.environ.get(ENV_VAR, "").strip()
    if value:
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f"{ENV_VAR} must be a whole number >= 1 (streams per batch), got {value!r}")
        return int(value)
    return min(cpu_cores(), MAX_DEFAULT_WORKERS)


def set_workers(count: int | None = None, cores: int | None = None) -> int:
    """Split batches across `count` CPU streams (None: `DIFFUSION_UTILS_WORKERS`, else one per
    core, at most 8) on `cores` cores (None: all of them); returns the count. OpenBLAS then
    runs cores // count threads per call."""
    count = _default_workers() if count is None else count
    for name, value in (("workers", count), ("cores", cores)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    _state["workers"] = count
    blas.set_blas_threads(max(1, (cores or cpu_cores()) // count))
    return count


def workers() -> int:
    """How many streams a batch is split across: 1 on a GPU, else the `set_workers` count."""
    if mx.default_device().type == mx.DeviceType.gpu:
        return 1
    if _state["workers"] is None:
        set_workers()
    return _state["workers"]


def match_stored_workers(stored: int | None) -> None:
    """Resuming a run trained on `stored` streams (None: not recorded): split batches the same way, so
    the resume stays bit-exact (the per-stream sums round differently); a note on stderr when that
    changes the count."""
    if stored is None or stored == workers():
        return
    if mx.default_device().type == mx.DeviceType.gpu:
        print(f"note: the run was trained on {stored} CPU streams, this resume runs on the GPU: it continues "
              "correctly but not bit for bit as the uninterrupted run would have", file=sys.stderr)
        return
    print(f"note: using {stored} CPU streams as the stored run did (this machine's default is "
          f"{workers()}), so the resume is bit-exact", file=sys.stderr)
    set_workers(stored)


def chunks(batch: int, count: int | None = None) -> list[slice]:
    """Contiguous slices of a batch of `batch` items, one per stream, each >= MIN_CHUNK items
    (fewer slices when the batch is small); sizes differ by at most one."""
    count = workers() if count is None else count
    count = max(1, min(count, batch // MIN_CHUNK))
    size, extra = divmod(batch, count)
    starts = [i * size + min(i, extra) for i in range(count + 1)]
    return [slice(starts[i], starts[i + 1]) for i in range(count)]


def thread_streams(count: int) -> list:
    """`count` streams of the default device, made once per thread and reused (MLX never frees one).

    Per thread because a stream can only be used by the thread that made it.
    """
    device = mx.default_device()
    made = _per_thread.__dict__.setdefault("streams", {})
    key = (str(device), count)
    if key not in made:
        made[key] = [mx.new_stream(device) for _ in range(count)]
    return made[key]


def map_chunks(fn: Callable, *arrays: mx.array | None) -> list[tuple[float, object]]:
    """Call `fn(*slices)` for each batch slice on its own stream: [(fraction of the batch, result)].

    `arrays` share their first axis (None passes through as None). Lazy: nothing is evaluated;
    the streams run concurrently when the results are.
    """
    batch = next(a.shape[0] for a in arrays if a is not None)
    parts = chunks(batch)
    if len(parts) == 1:
        return [(1.0, fn(*arrays))]
    results = []
    for part, stream in zip(parts, thread_streams(len(parts)), strict=True):
        with mx.stream(stream):
            result = fn(*(None if a is None else a[part] for a in arrays))
        results.append(((part.stop - part.start) / batch, result))
    return results


def batch_parallel(model: Callable) -> Callable:
    """`model(*arrays)` with the batch (first axis) split across `workers()` streams; the same outputs.

    For any model whose output for one image does not depend on the others (true of the UNet
    and of the style classifier); None arguments (e.g. no labels) are passed through.
    """

    def call(*arrays: mx.array | None) -> mx.array:
        outputs = [out for _, out in map_chunks(model, *arrays)]
        return outputs[0] if len(outputs) == 1 else mx.concatenate(outputs)

    return call


def split_batches(model: nn.Module) -> nn.Module:
    """Make calls of `model` (e.g. a UNet prepared for sampling) run as `batch_parallel(model)`; returns it.

    In place, like `layers.use_fast_cpu_layers`: only the model's class changes, to a subclass of
    it, so its parameters, names and isinstance checks stay. For inference: a training step splits
    the batch itself (`train_step.py`). Does nothing on a GPU; `workers()` is read at every call.
    """
    cls = type(model)
    if mx.default_device().type == mx.DeviceType.gpu or getattr(cls, "splits_batches", False):
        return model
    if cls not in _split_classes:
        def call(self, *arrays):
            return batch_parallel(super(split, self).__call__)(*arrays)

        split = type(cls.__name__, (cls,), {"__call__": call, "splits_batches": True,
                                           "__doc__": f"{cls.__doc__}\n\n(Split across CPU streams.)"})
        _split_classes[cls] = split
    model.__class__ = _split_classes[cls]
    return model


def per_stream(make: Callable[[], Callable]) -> Callable:
    """A function built by `make()` (e.g. an `mx.compile`d one) once per stream and thread it is called on.

    A compiled graph keeps the stream it was traced on, so one trace shared by all streams
    would run every stream's work on the first one's thread (or fail on a thread that does
    not own that stream).
    """
    per_thread = threading.local()  # .built: {stream: function} for this thread's streams

    def call(*args, **kwargs):
        built = per_thread.__dict__.setdefault("built", {})
        key = repr(mx.default_stream(mx.default_device()))
        if key not in built:
            built[key] = make()
        return built[key](*args, **kwargs)

    return call


def weighted_sum(parts: Sequence[tuple[float, object]]) -> object:
    """sum_i w_i * tree_i over trees of arrays of equal structure (per-slice means -> batch mean)."""
    weights = [w for w, _ in parts]
    return tree_map(lambda *leaves: sum(w * leaf for w, leaf in zip(weights, leaves, strict=True)),
                    *(tree for _, tree in parts))
