"""Data-parallel training over several processes or machines, with MLX's own `mx.distributed`.

`mlx.launch` starts one process (a *rank*) per slot: ring over TCP for Macs and CPUs, MPI, or
NCCL on CUDA nodes. Every rank holds the whole model and builds the same global batch of B
images, with the same timesteps, noise and label dropout (all drawn from one seeded generator);
rank r then computes the loss and gradients of its own contiguous shard of n_r images only.
The global gradient is the size-weighted sum of the shards' mean gradients,

    g = (1/B) sum_i grad l_i = sum_r (n_r / B) * g_r,   g_r = (1/n_r) sum_{i in shard r} grad l_i,

one `all_sum` (`nn.average_gradients`) away. Every rank then takes the same optimiser and EMA
step, so the weights stay identical everywhere and the run equals one process with batch B up
to float32 rounding (Goyal et al. 2017, "Accurate, Large Minibatch SGD", sec. 2 and 3).

    world = distributed.world()       # rank, size, is_main; size 1 without mlx.launch
    x_shard = world.take_shard(x)     # this rank's rows of a global batch
    with world.collective("step 7"):  # a lost or silent peer: an error in bounded time
        mx.eval(state)

A rank that dies closes its sockets and the ring backend raises at once; a rank that hangs or
a machine that vanishes is caught by a watchdog after `PEER_TIMEOUT_ENV` seconds (default 300:
rank 0 alone writes previews and checkpoints while the others wait in the next `all_sum`).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten, tree_map

PEER_TIMEOUT_ENV = "DIFFUSION_UTILS_PEER_TIMEOUT"
DEFAULT_PEER_TIMEOUT = 300.0  # seconds; longer than rank 0's longest solo work (a preview grid)
_BACKEND_ERRORS = ("[ring]", "[mpi]", "[nccl]", "[jaccl]")  # how MLX's backends prefix their errors


class PeerLostError(RuntimeError):
    """Another rank died or stopped answering; this rank stops (the checkpoint on disk is intact)."""


class RanksDivergedError(ValueError):
    """The ranks do not hold the same state (e.g. a run folder that differs between machines)."""


def peer_timeout() -> float:
    """Seconds a rank waits on the others before giving up (`DIFFUSION_UTILS_PEER_TIMEOUT`)."""
    value = os.environ.get(PEER_TIMEOUT_ENV, "").strip()
    if not value:
        return DEFAULT_PEER_TIMEOUT
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < float("inf"):
        raise ValueError(f"{PEER_TIMEOUT_ENV} must be a number of seconds > 0, got {value!r}")
    return seconds


class _Watchdog:
    """Ends the process with a one-line error when a guarded wait on the peers lasts too long.

    A thread cannot interrupt MLX blocked in a socket receive, so it ends the whole process
    (`os._exit`) after printing why; checkpoints are written atomically, so none is damaged.
    """

    def __init__(self, timeout: float, who: str):
        self.timeout, self.who = timeout, who
        self._deadline, self._what = None, ""
        self._lock = threading.Lock()
        threading.Thread(target=self._watch, name="peer-watchdog", daemon=True).start()

    @contextmanager
    def guard(self, what: str, note: str):
        with self._lock:
            self._deadline, self._what = time.monotonic() + self.timeout, (what, note)
        try:
            yield
        finally:
            with self._lock:
                self._deadline = None

    def _watch(self) -> None:
        while True:
            time.sleep(min(1.0, self.timeout / 4))
            with self._lock:
                late = self._deadline is not None and time.monotonic() > self._deadline
                what = self._what
            if late:
                during, note = what
                sys.stderr.write(f"error: {self.who}: no answer from the other ranks for {self.timeout:g} s "
                                 f"during {during} (a rank died, hangs or lost its network; raise "
                                 f"{PEER_TIMEOUT_ENV} if a rank is only slow){'; ' + note if note else ''}\n")
                sys.stderr.flush()
                os._exit(1)


# The child waits for its stdin to close (the parent's "done", or its death); on timeout it
# prints why and kills the parent. Plain Python, so it starts in milliseconds.
_CHILD_WATCHDOG = """import os, select, signal, sys
if not select.select([sys.stdin], [], [], float(sys.argv[2]))[0]:
    sys.stderr.write(sys.argv[3]); sys.stderr.flush(); os.kill(int(sys.argv[1]), signal.SIGKILL)"""


@contextmanager
def _watched_by_a_process(timeout: float, who: str):
    """Like `_Watchdog.guard`, for `mx.distributed.init`, which waits for the peers holding
    Python's GIL, so that no thread of this process could run: a child process watches."""
    message = (f"error: {who}: the other ranks did not join within {timeout:g} s (are they all started, "
               f"and are the hostfile's addresses reachable? raise {PEER_TIMEOUT_ENV} if they are slow)\n")
    child = subprocess.Popen([sys.executable, "-c", _CHILD_WATCHDOG, str(os.getpid()), str(timeout), message],
                             stdin=subprocess.PIPE)
    try:
        yield
    finally:
        child.stdin.close()
        child.wait()


@dataclass(frozen=True)
class World:
    """The processes training together: this one's `rank` among `size` (1: a single process)."""

    rank: int = 0
    size: int = 1
    group: mx.distributed.Group | None = None
    watchdog: _Watchdog | None = None

    @property
    def is_main(self) -> bool:
        """Rank 0, the only one that writes checkpoints, logs, previews and the progress bar."""
        return self.rank == 0

    def __str__(self) -> str:
        return f"rank {self.rank} of {self.size}"

    def describe(self, batch: int) -> str:
        """One line for logs: the ranks and how the global batch is split across them."""
        if self.size == 1:
            return f"1 process, batch {batch}"
        return (f"{self.size} ranks (mx.distributed), global batch {batch} = "
                f"{' + '.join(map(str, self.shard_sizes(batch)))} per rank")

    def shard_sizes(self, batch: int) -> list[int]:
        """Rows of a global batch per rank: contiguous, sizes differing by at most one."""
        if batch < self.size:
            raise ValueError(f"the global batch ({batch}) must hold at least one image per rank "
                             f"({self.size} ranks); raise --batch-size")
        size, extra = divmod(batch, self.size)
        return [size + (r < extra) for r in range(self.size)]

    def shard(self, batch: int) -> slice:
        """This rank's rows of a global batch of `batch`."""
        sizes = self.shard_sizes(batch)
        start = sum(sizes[: self.rank])
        return slice(start, start + sizes[self.rank])

    def take_shard(self, *arrays: mx.array | None) -> tuple:
        """This rank's rows of each array (first axis = the global batch); None passes through."""
        if self.size == 1:
            return arrays
        rows = self.shard(next(a.shape[0] for a in arrays if a is not None))
        return tuple(None if a is None else a[rows] for a in arrays)

    def mean_over_ranks(self, loss: mx.array, grads: dict, batch: int) -> tuple[mx.array, dict]:
        """The global batch's mean loss and gradients from this shard's means (sum_r n_r / B * x_r).

        Lazy; traced into the compiled step. One all-reduce of every gradient (grouped into large
        buffers by `nn.average_gradients`), one of the scalar loss.
        """
        if self.size == 1:
            return loss, grads
        weight = self.shard_sizes(batch)[self.rank] / batch
        if weight * self.size != 1.0:  # unequal shards: average_gradients divides by size
            grads = tree_map(lambda g: g * (weight * self.size), grads)
        grads = nn.average_gradients(grads, group=self.group)
        return mx.distributed.all_sum(loss * weight, group=self.group), grads

    @contextmanager
    def collective(self, what: str, note: str = ""):
        """Guard a wait on the other ranks: a lost peer becomes PeerLostError, a silent one ends
        the process after `peer_timeout()` seconds, each with a one-line message (+ `note`)."""
        if self.size == 1:
            yield
            return
        with self.watchdog.guard(what, note):
            try:
                yield
            except RuntimeError as err:
                if not str(err).startswith(_BACKEND_ERRORS):
                    raise
                raise PeerLostError(f"{self}: lost contact with the other ranks during {what} ({err})"
                                    + (f"; {note}" if note else "")) from None

    def check_in_sync(self, tree, what: str) -> None:
        """Raise RanksDivergedError unless every rank holds bit-identical arrays in `tree`.

        Compares a SHA-256 of the arrays' bytes (exact, and the same on every platform).
        """
        if self.size == 1:
            return
        digest = hashlib.sha256()
        for name, value in tree_flatten(tree):
            digest.update(name.encode())
            digest.update(np.asarray(value).tobytes())
        mine = np.frombuffer(digest.digest(), dtype=np.uint16).astype(np.int32)  # (16,) exact in int32
        with self.collective(f"the check that {what} agree"):
            everyone = np.array(mx.distributed.all_gather(mx.array(mine), group=self.group))
        differ = [r for r, theirs in enumerate(everyone.reshape(self.size, -1)) if not (theirs == mine).all()]
        if differ:
            raise RanksDivergedError(f"{self}: {what} differ from those of rank(s) {differ}; every rank "
                                     "must start from the same run folder (copy rank 0's checkpoint/ there)")


_state: dict = {"world": None}


def _launched() -> bool:
    """True when a launcher started this process as one of several (`mlx.launch -n 1` writes an
    empty ring hostfile, which `mx.distributed.init` cannot parse: that is a single process)."""
    hostfile = os.environ.get("MLX_HOSTFILE")
    if hostfile:
        try:
            return bool(Path(hostfile).read_text(encoding="utf-8").strip())
        except OSError:
            return True  # let mx.distributed.init report it
    return any(os.environ.get(k) for k in ("OMPI_COMM_WORLD_SIZE", "MLX_WORLD_SIZE", "MLX_JACCL_COORDINATOR"))


def ranks_on_this_machine() -> tuple[int, int]:
    """(this rank's index among the ranks that share its machine, how many do): from Open MPI's
    local rank and size, or from the ring hostfile (ranks listed with the same first IP share a
    machine). (0, 1) without a launcher or when neither says."""
    env = os.environ
    if env.get("OMPI_COMM_WORLD_LOCAL_SIZE", "").isdigit():
        return int(env.get("OMPI_COMM_WORLD_LOCAL_RANK", 0)), int(env["OMPI_COMM_WORLD_LOCAL_SIZE"])
    try:
        rank = int(env["MLX_RANK"])
        hosts = [node[0].rsplit(":", 1)[0] for node in json.loads(Path(env["MLX_HOSTFILE"]).read_text())]
        here = [r for r, host in enumerate(hosts) if host == hosts[rank]]
        return here.index(rank), len(here)
    except (KeyError, OSError, ValueError, IndexError, TypeError, AttributeError):
        return 0, 1


def share_cores_with_local_ranks() -> list[int] | None:
    """Pin this process to its share of the cores when several ranks run on one machine; returns them.

    `cpu/streams.py` sizes its streams and OpenBLAS's threads by the cores a process may use, so
    without this every rank would run as if it had the whole machine: 2 ranks on 2 cores with
    DIFFUSION_UTILS_WORKERS=1 ran about 6x slower than one process (README, "Training on several
    machines"). Nothing without sched_setaffinity (macOS) or on a GPU; None when nothing changed.
    """
    index, count = ranks_on_this_machine()
    if count == 1 or not hasattr(os, "sched_setaffinity") or mx.default_device().type != mx.DeviceType.cpu:
        return None
    cores = sorted(os.sched_getaffinity(0))
    share = cores[index::count] or [cores[index % len(cores)]]  # more ranks than cores: one core each
    for thread in os.listdir("/proc/self/task"):  # the threads already started (OpenBLAS's) too
        with suppress(ProcessLookupError):  # a thread that ended meanwhile
            os.sched_setaffinity(int(thread), share)
    return share


def world() -> World:
    """The world this process belongs to, set up once: `mlx.launch` makes it several ranks.

    Without a launcher (or with one rank) it is a single process of rank 0 and size 1, and
    nothing here talks to the network. Joining the others is guarded by the watchdog.
    """
    if _state["world"] is None:
        if not _launched():
            _state["world"] = World()
        else:
            rank = os.environ.get("MLX_RANK") or os.environ.get("OMPI_COMM_WORLD_RANK") or "?"
            watchdog = _Watchdog(peer_timeout(), f"rank {rank}")
            with _watched_by_a_process(watchdog.timeout, f"rank {rank}"):
                group = mx.distributed.init()
            share_cores_with_local_ranks()
            _state["world"] = World(group.rank(), group.size(), group, watchdog)
    return _state["world"]


def resume_note(trained_size: int | None, size: int) -> str | None:
    """What to tell a user who resumes a run on a different number of ranks (None: nothing).

    The batch, its noise and timesteps do not depend on the ranks, so the run continues with the
    same optimisation; only the order in which the shards' gradients are added changes, so it
    equals the uninterrupted run up to float32 rounding instead of bit for bit.
    """
    if trained_size is None or trained_size == size:
        return None
    return (f"resuming a run trained on {trained_size} rank(s) with {size}: the same global batch and "
            "optimisation, equal to the uninterrupted run up to float32 rounding (bit-exact only with "
            f"{trained_size} rank(s))")
