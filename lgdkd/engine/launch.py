"""Multi-process launch: detectron2's launcher on CUDA, the same semantics with gloo on CPU.

detectron2 v0.6's ``launch`` asserts that CUDA is available and hard-codes NCCL, so
``--num-gpus 2`` cannot run on a CPU machine. :func:`launch` keeps its arguments and
behaviour and picks the process-group backend: NCCL delegates to detectron2's own launcher
unchanged; gloo starts the same number of CPU processes, creates the per-machine process
group that ``detectron2.utils.comm.get_local_rank()`` needs, and splits the CPU cores
between the local processes.
"""

import logging
import os
import socket
from datetime import timedelta
from typing import Optional

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.engine.launch import DEFAULT_TIMEOUT
from detectron2.engine.launch import launch as _d2_launch
from detectron2.utils import comm

__all__ = ["DEFAULT_TIMEOUT", "default_backend", "launch"]

logger = logging.getLogger(__name__)


def default_backend(device: Optional[str] = None) -> str:
    """The process-group backend for models on ``device`` (a MODEL.DEVICE value).

    ``"nccl"`` when CUDA is available and the device is not the CPU, else ``"gloo"``.
    """
    on_cpu = device is not None and torch.device(device).type == "cpu"
    return "nccl" if torch.cuda.is_available() and not on_cpu else "gloo"


def _find_free_port() -> int:
    """A TCP port that is free now (another process may still take it before we bind)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def launch(
    main_func,
    num_gpus_per_machine: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: Optional[str] = None,
    args=(),
    timeout: timedelta = DEFAULT_TIMEOUT,
    backend: Optional[str] = None,
):
    """Run ``main_func(*args)`` in ``num_gpus_per_machine`` processes on each machine.

    Call it on every machine. With one process in total, ``main_func`` runs in this process.

    Args:
        main_func: called as ``main_func(*args)`` in every process (picklable: a module-level
            function).
        num_gpus_per_machine: processes per machine: one per GPU with NCCL, and with gloo
            the number of CPU processes (so ``--num-gpus N`` on a CPU machine starts N
            processes).
        num_machines, machine_rank: as in detectron2.
        dist_url: init method, e.g. ``"tcp://10.0.0.1:29500"`` for several machines (both
            backends). ``"auto"`` picks a free port on localhost (one machine only).
        timeout: timeout of collective operations.
        backend: ``"nccl"``, ``"gloo"`` or None for :func:`default_backend` (NCCL when CUDA
            is available). Pass ``default_backend(cfg.MODEL.DEVICE)`` so that a CPU model on
            a GPU machine uses gloo.
    """
    backend = (backend or default_backend()).lower()
    if backend not in ("nccl", "gloo"):
        raise ValueError(f"launch(backend={backend!r}): expected 'nccl' or 'gloo'.")
    world_size = num_machines * num_gpus_per_machine
    if world_size <= 1:
        main_func(*args)
        return
    if backend == "nccl":
        _d2_launch(
            main_func,
            num_gpus_per_machine,
            num_machines=num_machines,
            machine_rank=machine_rank,
            dist_url=dist_url,
            args=args,
            timeout=timeout,
        )
        return

    if dist_url is None:
        raise ValueError("launch: dist_url is required with more than one process.")
    if dist_url == "auto":
        if num_machines != 1:
            raise ValueError("launch: dist_url='auto' works on one machine only.")
        dist_url = f"tcp://127.0.0.1:{_find_free_port()}"
    if num_machines > 1 and dist_url.startswith("file://"):
        logger.warning("file:// is not a reliable init_method in multi-machine jobs. Prefer tcp://")
    logger.info(
        f"Starting {num_gpus_per_machine} CPU process(es) on this machine ({world_size} in "
        f"total) with the gloo backend at {dist_url}."
    )
    mp.spawn(
        _gloo_worker,
        nprocs=num_gpus_per_machine,
        args=(main_func, world_size, num_gpus_per_machine, machine_rank, dist_url, args, timeout),
        daemon=False,
    )


def _gloo_worker(
    local_rank, main_func, world_size, num_per_machine, machine_rank, dist_url, args, timeout
):
    global_rank = machine_rank * num_per_machine + local_rank
    try:
        dist.init_process_group(
            backend="gloo",
            init_method=dist_url,
            world_size=world_size,
            rank=global_rank,
            timeout=timeout,
        )
    except Exception:
        logger.error(f"Process group URL: {dist_url}")
        raise
    _create_local_process_group(num_per_machine, machine_rank)
    if "OMP_NUM_THREADS" not in os.environ:
        # every process would otherwise use all cores and they would slow each other down
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
        torch.set_num_threads(max(1, (cores or os.cpu_count() or 1) // num_per_machine))
    comm.synchronize()
    main_func(*args)
    # leave together and close the group: a rank that exits while another still talks to it
    # (or with gloo's threads alive at interpreter shutdown) can abort the other with SIGABRT
    comm.synchronize()
    dist.destroy_process_group()


def _create_local_process_group(num_per_machine: int, machine_rank: int):
    """Set ``comm._LOCAL_PROCESS_GROUP`` to the ranks of this machine, as detectron2 does.

    ``dist.new_group`` is collective: every rank creates every machine's group.
    """
    if comm._LOCAL_PROCESS_GROUP is not None:
        raise RuntimeError("The local process group already exists in this process.")
    num_machines = dist.get_world_size() // num_per_machine
    for i in range(num_machines):
        ranks_on_i = list(range(i * num_per_machine, (i + 1) * num_per_machine))
        group = dist.new_group(ranks_on_i)
        if i == machine_rank:
            comm._LOCAL_PROCESS_GROUP = group
