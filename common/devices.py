"""One vocabulary for where a model runs, shared by `train`, `evaluate` and `label`: auto, cpu or cuda; and how
many CPU cores this process may use."""
import os

from common.errors import UserError

DEVICES = ("auto", "cpu", "cuda")
ALIASES = {"gpu": "cuda"}  # the word `label --device` used first; still accepted
DEVICE_WORDS = "|".join(DEVICES)
DEVICE_HELP = "auto: a CUDA GPU when one works, else the CPU; cuda fails loudly without one (gpu also means cuda)."


def device_name(name: str) -> str:
    """A --device word as one of DEVICES; anything else is a one-line error."""
    name = ALIASES.get(name, name)
    if name not in DEVICES:
        raise UserError(f"unknown --device {name!r}; use auto, cpu or cuda (gpu also means cuda)")
    return name


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity (taskset, a container's cpuset), which os.cpu_count()
    ignores. More torch threads than cores make them spin-wait on each other (a batch stack 100x slower)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def pick_device(name: str):
    """The torch.device for a --device word: auto takes a working CUDA GPU, else the CPU; cuda must mean a
    working GPU (fail loudly rather than silently run on the CPU)."""
    import torch  # here, so the CLI's option checks do not pay for importing torch

    name = device_name(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA GPU works on this machine (check the NVIDIA "
                        "driver, or use --device cpu)")
    return torch.device(name)
