"""Data-parallel training: one process per GPU (or several on a CPU), launched by torchrun or by `--nproc N`.

Every process runs the same training loop on its share of each batch (see data.EpochSampler); DDP averages
the gradients, so all replicas take the same step and keep equal weights. Rank 0 alone writes and prints.
torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, ...) says where a process stands; `spawn` sets it up
for N processes on this machine, so both launchers reach the same code.
"""
import logging
import os
import signal
import socket
import threading
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from common.devices import pick_device, usable_cores
from common.errors import UserError
from common.interrupt import ctrl_c_sets


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> "World":
        env = os.environ
        size = int(env.get("WORLD_SIZE", "1"))
        return cls(int(env.get("RANK", "0")), size, int(env.get("LOCAL_RANK", "0")),
                   int(env.get("LOCAL_WORLD_SIZE", str(size))))


def join(device_name: str) -> tuple[World, torch.device]:
    """This process's place in the job and its device; joins the process group when there is more than one.

    Each process gets its own GPU (nccl), or on a CPU an equal share of the cores (gloo), so N processes do
    not fight over the same threads.
    """
    world, device = World.from_env(), pick_device(device_name)
    if world.size == 1:
        return world, device
    if device.type == "cuda":
        if world.local_size > torch.cuda.device_count():
            raise UserError(f"{world.local_size} processes per machine but {torch.cuda.device_count()} GPUs "
                            "visible; use one process per GPU")
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(max(1, usable_cores() // world.local_size))
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=world.rank, world_size=world.size)
    return world, device


def leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def replicate(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The model DDP-wrapped (rank 0's weights broadcast now, gradients averaged in backward), or itself alone."""
    if not dist.is_initialized():
        return model
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def all_sum(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sums over all processes; the values themselves in a single process."""
    if not dist.is_initialized():
        return values
    total = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return total.tolist()


def all_gather(obj) -> list:
    """Every process's `obj`, in rank order (picklable objects: our own processes, never untrusted input)."""
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def spawn(fn, arg, nproc: int):
    """fn(arg) in `nproc` processes on this machine, as torchrun would start them; returns rank 0's result.

    A UserError or KeyboardInterrupt in any process is raised here as it was (training's Ctrl-C stop says where
    it saved); other failures raise with their traceback. Ctrl-C here is passed on to the processes (within the
    half second the join waits), whose training stops at a step.
    """
    if "WORLD_SIZE" in os.environ:
        raise UserError("--nproc starts its own processes; under torchrun leave --nproc out")
    # Once one process fails, torch stops the others and warns of each; the failure raised here is the news.
    logging.getLogger("torch.multiprocessing.spawn").setLevel(logging.ERROR)
    results = mp.get_context("spawn").SimpleQueue()
    processes = mp.spawn(_process, (fn, arg, nproc, _free_port(), results), nprocs=nproc, join=False)
    messages, ctrl_c = [], threading.Event()
    try:
        with ctrl_c_sets(ctrl_c):
            while not processes.join(timeout=0.5):
                messages += _drain(results)  # as they come: a writer blocked on a full pipe would never exit
                if ctrl_c.is_set():
                    ctrl_c.clear()
                    for p in processes.processes:
                        if p.is_alive():
                            os.kill(p.pid, signal.SIGINT)
    except mp.ProcessExitedException:
        errors = [value for kind, value in messages + _drain(results) if kind == "error"]
        if not errors:
            raise
        raise errors[0] from None
    return dict(messages + _drain(results))["result"]


def _drain(queue) -> list:
    out = []
    while not queue.empty():
        out.append(queue.get())
    return out


def _process(local_rank: int, fn, arg, nproc: int, port: int, results) -> None:
    os.environ.update(RANK=str(local_rank), LOCAL_RANK=str(local_rank), WORLD_SIZE=str(nproc),
                      LOCAL_WORLD_SIZE=str(nproc), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    try:
        value = fn(arg)
    except (UserError, KeyboardInterrupt) as e:
        results.put(("error", e))
        raise SystemExit(1) from None
    if local_rank == 0:
        results.put(("result", value))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
