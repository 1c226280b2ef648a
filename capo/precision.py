"""Device and precision chosen by the hardware: `device: auto` means the accelerator, `dtype: auto` and `bf16: auto`
mean bf16 where the device computes it natively, else fp32.

The device rule (`resolve_device`), used by every model loader (explainers, judges, attribution, label scoring,
jury, MJDs, sentence embeddings): an explicit device string wins; under `accelerate launch` / torchrun, or once a
Trainer has set up accelerate's state, each process uses its own device (`PartialState().device`); otherwise CUDA
when it is available, else the CPU. Inputs are then moved to the model's device by whoever feeds the model.

Native bf16: a CUDA device that reports bf16 support, or a CPU whose torch kernels run AVX-512 with AVX-512 BF16 or
AMX tiles. Elsewhere bf16 is emulated: on an AVX2-only CPU a bf16 matmul runs ~40x slower than fp32
(docs/benchmarks.md), so "auto" picks fp32 there. Where torch's report cannot tell (a CPU that is not x86, e.g. Arm
with or without bf16 instructions), a sub-second micro-benchmark decides. The decision is made once per process.

Note: capo's `dtype: auto` is this rule, not transformers' "as stored in the checkpoint".
"""

from __future__ import annotations

import functools
import os
import platform
import sys
import time

AUTO = "auto"
# The ratio a bf16 matmul must reach against fp32 to count as native where the capability report is ambiguous:
# native kernels are at least as fast as fp32 (1.3-2.5x faster measured); emulated ones are 4-40x slower.
NATIVE_SPEED_RATIO = 0.7


def cpu_capability() -> dict:
    """What torch reports about this CPU: the kernel level it dispatches to and its bf16 instruction sets."""
    import torch

    return {"capability": torch.backends.cpu.get_cpu_capability(),
            "avx512_bf16": bool(torch.cpu._is_avx512_bf16_supported()),
            "amx_tile": bool(torch.cpu._is_amx_tile_supported()),
            "machine": platform.machine()}


def _x86(machine: str) -> bool:
    return machine.lower() in ("x86_64", "amd64", "i386", "i686", "x86")


def bf16_speed_ratio(size: int = 256, repeats: int = 3) -> float:
    """fp32 time / bf16 time of a `size`^3 matmul on one thread (>1: bf16 is faster); a few tens of milliseconds."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        seconds = {}
        for dtype in (torch.float32, torch.bfloat16):
            a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
            a @ b  # warm-up: kernel selection, first-touch allocation
            start = time.perf_counter()
            for _ in range(repeats):
                a @ b
            seconds[dtype] = time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)
    return seconds[torch.float32] / max(seconds[torch.bfloat16], 1e-9)


def cpu_native_bf16(report: dict | None = None, measure=bf16_speed_ratio) -> tuple[bool, str]:
    """(native?, why) for this CPU. x86: AVX-512 kernels plus AVX-512 BF16 or AMX; elsewhere: measured."""
    report = report or cpu_capability()
    capability = str(report["capability"])
    if _x86(report["machine"]):
        bf16_units = report["avx512_bf16"] or report["amx_tile"]
        native = capability.startswith("AVX512") and bf16_units
        units = ", ".join(k for k in ("avx512_bf16", "amx_tile") if report[k]) or "no AVX-512 BF16 / AMX"
        return native, f"CPU {capability}, {units}"
    ratio = measure()
    return ratio >= NATIVE_SPEED_RATIO, f"CPU {capability} ({report['machine']}): bf16 matmul {ratio:.2f}x fp32 speed"


def resolve_device(device=None):
    """The `torch.device` a model loads onto: `device` when given (a string or a torch.device; None or "auto": the
    rule in the module docstring)."""
    import torch

    if device is not None and str(device) != AUTO:
        try:
            return torch.device(device)
        except RuntimeError:
            from capo.errors import DataError

            raise DataError(f"unknown device {str(device)!r} (e.g. auto, cpu, cuda, cuda:1)", field="device") from None
    state = sys.modules.get("accelerate.state")  # never imported: no accelerate state can exist
    if state is not None and state.PartialState._shared_state:  # set up already (launch, Trainer): its device
        return state.PartialState().device
    if not torch.cuda.is_available():
        return torch.device("cpu")
    # accelerate launch / torchrun name each process's GPU before any state exists (read, not initialised here)
    local_rank = os.environ.get("LOCAL_RANK")
    return torch.device("cuda", int(local_rank)) if local_rank else torch.device("cuda")


def _device_type(device) -> str:
    return resolve_device(device).type


@functools.cache
def _native(device_type: str) -> tuple[bool, str]:
    import torch

    if device_type == "cuda":
        native = bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
        return native, f"CUDA {torch.cuda.get_device_name() if torch.cuda.is_available() else 'absent'}"
    if device_type == "cpu":
        return cpu_native_bf16()
    return False, f"{device_type}: bf16 not known to be native"


def native_bf16(device=None) -> bool:
    """Whether `device` (default: CUDA when present, else the CPU) computes bf16 natively."""
    return _native(_device_type(device))[0]


def resolve_dtype(dtype: str, device=None) -> str:
    """`auto` -> "bfloat16" where native, else "float32"; any other value unchanged (explicit bf16 warns once
    where it is emulated)."""
    if dtype == AUTO:
        return "bfloat16" if native_bf16(device) else "float32"
    if dtype == "bfloat16":
        warn_if_emulated(device)
    return dtype


def resolve_bf16(value, device=None) -> bool:
    """A TrainingArguments-style `bf16` value: "auto" -> native bf16; true where emulated still runs, with a warning."""
    if isinstance(value, str):
        if value.lower() == AUTO:
            return native_bf16(device)
        value = value.lower() in ("true", "1", "yes")
    if value:
        warn_if_emulated(device)
    return bool(value)


@functools.cache
def _warn_once(device_type: str) -> None:
    native, why = _native(device_type)
    if not native:
        print(f"warning: bf16 requested on a device without native bf16 ({why}): it is emulated there, expect it "
              "4-40x slower than fp32 (dtype/bf16: auto chooses fp32 here)", file=sys.stderr)


def warn_if_emulated(device=None) -> None:
    _warn_once(_device_type(device))


def precision_report(device=None) -> dict:
    """What manifests, run signatures and report captions record: the device, whether it computes bf16 natively,
    why, and what `auto` resolves to."""
    device_type = _device_type(device)
    native, why = _native(device_type)
    return {"device": device_type, "native_bf16": native, "auto_dtype": "bfloat16" if native else "float32",
            "basis": why}
