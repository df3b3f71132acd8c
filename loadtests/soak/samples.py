"""What the soak watches on the server, sampled from the outside: memory, file descriptors and
CPU of its whole process tree (BentoML's arbiter, API and runner workers), and the Prometheus
multiprocess directory its workers write their samples to."""

from __future__ import annotations

import contextlib
import math
import struct
from dataclasses import dataclass
from pathlib import Path

import psutil

from loadtests.bench.measure import cpu_seconds, memory_bytes, open_fds, process_tree

# prometheus-client's mmap files start with the bytes used as a 4-byte int (prometheus_client/
# mmap_dict.py). The files themselves grow by doubling, so their size moves in big steps while
# the bytes used grow with every new series: the soak bounds the bytes used.
_USED = struct.Struct("i")


@dataclass(frozen=True)
class Sample:
    t_s: float  # seconds from the start of the traffic
    rss_bytes: int
    pss_bytes: int
    fds: int
    client_connections: int  # of the fds: sockets of connections to the HTTP and gRPC ports
    cpu_s: float
    # The machine's CPU pressure (Linux PSI): microseconds, since boot, in which some runnable
    # task waited for a CPU. Its growth over a window says how busy the machine was (other work
    # on the 2 cores); NaN where the kernel has no PSI.
    cpu_stall_us: float
    pids: frozenset[int]
    metrics_files: int
    metrics_file_bytes: int
    metrics_used_bytes: int


def metrics_usage(directory: Path) -> tuple[int, int, int]:
    """(files, bytes on disk, bytes used) of a Prometheus multiprocess directory."""
    files = file_bytes = used_bytes = 0
    for path in directory.glob("*.db"):
        with contextlib.suppress(FileNotFoundError), path.open("rb") as handle:
            head = handle.read(_USED.size)
            files += 1
            file_bytes += path.stat().st_size
            used_bytes += _USED.unpack(head)[0] if len(head) == _USED.size else 0
    return files, file_bytes, used_bytes


def cpu_stall_us(pressure: Path = Path("/proc/pressure/cpu")) -> float:
    """The `some ... total=<us>` of /proc/pressure/cpu, NaN when missing."""
    try:
        some = pressure.read_text().splitlines()[0]
    except (OSError, IndexError):
        return math.nan
    return float(some.rpartition("total=")[2])


def client_connections(root: psutil.Process, ports: tuple[int, ...]) -> int:
    """Connections clients opened to `ports` (the API's HTTP and gRPC ports), summed over the
    tree. They come and go with the clients' pools: the fds that are not these should not grow."""
    total = 0
    for process in process_tree(root):
        with contextlib.suppress(psutil.NoSuchProcess):
            total += sum(
                1
                for connection in process.net_connections(kind="tcp")
                if connection.laddr.port in ports and connection.status != psutil.CONN_LISTEN
            )
    return total


def take_sample(
    root: psutil.Process, ports: tuple[int, ...], metrics_dir: Path, t_s: float
) -> Sample:
    """One sample of the tree under `root` (psutil; blocking, a few ms: run it in a thread)."""
    rss, pss = memory_bytes(root)
    files, file_bytes, used_bytes = metrics_usage(metrics_dir)
    return Sample(
        t_s=t_s,
        rss_bytes=rss,
        pss_bytes=pss,
        fds=open_fds(root),
        client_connections=client_connections(root, ports),
        cpu_s=cpu_seconds(root),
        cpu_stall_us=cpu_stall_us(),
        pids=frozenset(process.pid for process in process_tree(root)),
        metrics_files=files,
        metrics_file_bytes=file_bytes,
        metrics_used_bytes=used_bytes,
    )
