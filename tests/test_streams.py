"""cpu/streams.py and cpu/train_step.py: a batch split across CPU streams gives the whole batch's results."""

import diffusion_utils  # noqa: F401  (fast BLAS before mlx.core)
from diffusion_utils.cpu import blas, streams
from diffusion_utils.cpu.train_step import make_fastest_train_step
from diffusion_utils.schedules import make_schedule
from diffusion_utils.unet import UNet, UNetConfig

import mlx.core as mx
import mlx.optimizers as optim
import numpy as np
import pytest
from mlx.utils import tree_flatten

CONFIG = UNetConfig(image_size=8, base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
                    attention_resolutions=(4,), groups=4, num_heads=2, num_classes=3)


@pytest.fixture()
def workers():
    """Set the stream count inside a test; the default comes back afterwards."""
    yield streams.set_workers
    streams.set_workers()


def test_chunks_cover_the_batch_in_near_equal_slices():
    for batch in range(1, 70):
        for count in (1, 2, 3, 8):
            parts = streams.chunks(batch, count)
            sizes = [p.stop - p.start for p in parts]
            assert parts[0].start == 0 and parts[-1].stop == batch
            assert all(a.stop == b.start for a, b in zip(parts[:-1], parts[1:], strict=True))
            assert max(sizes) - min(sizes) <= 1
            assert len(parts) == max(1, min(count, batch // streams.MIN_CHUNK))
            assert len(parts) == 1 or min(sizes) >= streams.MIN_CHUNK


def test_set_workers_validates_and_gives_openblas_one_thread_per_stream(workers, monkeypatch):
    assert workers(1) == 1 and streams.workers() == 1
    assert workers(2) == 2 and streams.workers() == 2
    if "openblas" in blas.blas_in_use():
        assert blas.blas_threads() == max(1, streams.cpu_cores() // 2)
        workers(1, cores=1)
        assert blas.blas_threads() == 1
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="workers must be an integer >= 1"):
            streams.set_workers(bad)
        with pytest.raises(ValueError, match="cores must be an integer >= 1"):
            streams.set_workers(1, cores=bad)
    monkeypatch.setenv(streams.ENV_VAR, "lots")
    with pytest.raises(ValueError, match=streams.ENV_VAR):
        streams.set_workers()
    monkeypatch.setenv(streams.ENV_VAR, "3")
    assert streams.set_workers() == 3


def test_batch_parallel_model_gives_the_same_outputs(workers):
    mx.random.seed(0)
    model = UNet(CONFIG)
    x = mx.random.normal((10, 8, 8, 3), key=mx.random.key(1))
    t = mx.array(np.arange(10) * 97, dtype=mx.int32)
    y = mx.array(np.arange(10) % 4, dtype=mx.int32)  # 3 = the null label
    workers(1)
    whole = model(x, t, y)
    workers(2)
    calls = []

    def counted(*args):
        calls.append((args[0].shape[0], repr(mx.default_stream(mx.default_device()))))
        return model(*args)

    split = streams.batch_parallel(counted)(x, t, y)
    assert [n for n, _ in calls] == [5, 5] and calls[0][1] != calls[1][1]  # two streams
    np.testing.assert_allclose(np.array(split), np.array(whole), rtol=1e-5, atol=1e-6)


def _one_step(stream_count: int):
    """Loss, grad norm and parameters after one compiled train step on `stream_count` streams."""
    streams.set_workers(stream_count)
    mx.random.seed(0)
    model = UNet(CONFIG)
    optimizer = optim.AdamW(learning_rate=1e-3)
    step = make_fastest_train_step(model, optimizer, make_schedule("cosine", 100), "v", "min_snr", 1.0,
                                   0.5, 3)
    x0 = mx.random.uniform(-1, 1, (12, 8, 8, 3), key=mx.random.key(2))
    y = mx.array(np.arange(12) % 3, dtype=mx.int32)
    mx.random.seed(7)
    loss, grad_norm = step(x0, y)
    mx.eval(model.state, optimizer.state, loss, grad_norm)
    return float(loss), float(grad_norm), dict(tree_flatten(model.parameters()))


def test_train_step_on_two_streams_is_the_one_stream_step(workers):
    loss1, norm1, params1 = _one_step(1)
    loss2, norm2, params2 = _one_step(2)
    assert loss2 == pytest.approx(loss1, rel=1e-5) and norm2 == pytest.approx(norm1, rel=1e-4)
    for name, value in params1.items():
        np.testing.assert_allclose(np.array(params2[name]), np.array(value), rtol=1e-4, atol=1e-6,
                                   err_msg=name)
    assert _one_step(2)[0] == loss2  # deterministic, as exact resumption needs


def test_per_stream_builds_once_per_stream(workers):
    built = []

    def make():
        built.append(1)
        return lambda a: a + 1

    fn = streams.per_stream(make)
    fn(mx.array(1))
    fn(mx.array(2))
    with mx.stream(streams.thread_streams(2)[1]):
        fn(mx.array(3))
    assert len(built) == 2


def test_a_second_thread_gets_its_own_streams(workers):
    """JupyterLab runs widget callbacks on another thread; a stream only works on the thread that made it."""
    import threading

    workers(2)
    mx.random.seed(0)
    model = streams.batch_parallel(UNet(CONFIG))
    x = mx.random.normal((8, 8, 8, 3), key=mx.random.key(1))
    t, y = mx.array(np.arange(8) * 97, dtype=mx.int32), mx.array(np.arange(8) % 3, dtype=mx.int32)
    mx.eval(x, t, y)
    here = np.array(model(x, t, y))  # the main thread's streams first
    there = {}

    def other_thread():
        try:
            there["streams"] = [repr(s) for s in streams.thread_streams(2)]
            there["out"] = np.array(model(x, t, y))
        except RuntimeError as err:  # "There is no Stream(cpu, 2) in current thread" before the fix
            there["error"] = err
        finally:
            mx.clear_streams()

    thread = threading.Thread(target=other_thread)
    thread.start()
    thread.join()
    assert "error" not in there, there.get("error")
    assert set(there["streams"]).isdisjoint(repr(s) for s in streams.thread_streams(2))
    np.testing.assert_allclose(there["out"], here, rtol=1e-5, atol=1e-6)


def test_split_batches_makes_the_model_itself_split_keeping_its_parameters(workers):
    mx.random.seed(0)
    model = UNet(CONFIG)
    names = [name for name, _ in tree_flatten(model.parameters())]
    x = mx.random.normal((10, 8, 8, 3), key=mx.random.key(1))
    t = mx.array(np.arange(10) * 97, dtype=mx.int32)
    y = mx.array(np.arange(10) % 4, dtype=mx.int32)
    workers(2)
    wrapped = np.array(streams.batch_parallel(model)(x, t, y))
    assert streams.split_batches(streams.split_batches(model)) is model  # in place, once
    assert isinstance(model, UNet) and type(model).__name__ == "UNet"
    assert [name for name, _ in tree_flatten(model.parameters())] == names
    assert np.array_equal(np.array(model(x, t, y)), wrapped)
    workers(1)
    np.testing.assert_allclose(np.array(model(x, t, y)), wrapped, rtol=1e-5, atol=1e-6)
