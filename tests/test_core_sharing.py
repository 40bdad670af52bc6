"""distributed.ranks_on_this_machine: which ranks of an mlx.launch share a machine (and so its cores)."""

import json

from diffusion_utils import distributed

import pytest

LAUNCH_VARS = ("MLX_RANK", "MLX_HOSTFILE", "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE")


@pytest.fixture()
def launched(monkeypatch, tmp_path):
    """Set the variables a launcher would: `launched(rank, hosts)` writes a ring hostfile."""
    for name in LAUNCH_VARS:
        monkeypatch.delenv(name, raising=False)

    def launch(rank, hosts):
        hostfile = tmp_path / "hosts.json"
        hostfile.write_text(json.dumps([[f"{ip}:{5000 + i}"] for i, ip in enumerate(hosts)]))
        monkeypatch.setenv("MLX_HOSTFILE", str(hostfile))
        monkeypatch.setenv("MLX_RANK", str(rank))

    return launch


def test_ranks_with_the_same_ip_share_a_machine(launched):
    hosts = ["127.0.0.1", "127.0.0.1", "10.0.0.2"]  # two ranks here, one on another machine
    launched(1, hosts)
    assert distributed.ranks_on_this_machine() == (1, 2)
    launched(2, hosts)
    assert distributed.ranks_on_this_machine() == (0, 1)


def test_open_mpi_local_size_wins_and_no_launcher_is_one_rank(launched, monkeypatch):
    assert distributed.ranks_on_this_machine() == (0, 1)
    assert distributed.share_cores_with_local_ranks() is None  # nothing to share: affinity untouched
    monkeypatch.setenv("OMPI_COMM_WORLD_LOCAL_RANK", "3")
    monkeypatch.setenv("OMPI_COMM_WORLD_LOCAL_SIZE", "4")
    assert distributed.ranks_on_this_machine() == (3, 4)


def test_an_unreadable_hostfile_counts_as_alone(launched, monkeypatch, tmp_path):
    launched(0, ["127.0.0.1", "127.0.0.1"])
    monkeypatch.setenv("MLX_HOSTFILE", str(tmp_path / "missing.json"))
    assert distributed.ranks_on_this_machine() == (0, 1)
