"""The compute device: which one a setting names, why it cannot be used, how CUDA is configured for the service's
promises, and which errors from a forward mean "out of memory" (retry smaller) or "the device is broken" (restart).

Nothing here runs a model; the model store, the batcher, the health routes and the training set-up ask it."""

from __future__ import annotations

import os
import re

import torch

DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


class DeviceError(RuntimeError):
    """The configured device cannot be used; the message names the setting, the device and what is wrong."""


def check_device_name(name: str) -> str:
    """``name`` when it is one of auto, cpu, mps, cuda, cuda:N (N a number); else ValueError saying so."""
    if not DEVICE_PATTERN.fullmatch(name):
        raise ValueError(f"device must be auto, cpu, mps, cuda or cuda:N (N a GPU number such as 0), got {name!r}")
    return name


def cuda_unusable_reason() -> str:
    """Why ``torch.cuda.is_available()`` is false on this host, in words an operator can act on."""
    if torch.version.cuda is None:
        return f"this torch build ({torch.__version__}) has no CUDA support; install a CUDA build of torch"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    try:
        count = torch.cuda.device_count()
    except RuntimeError as error:  # a driver that cannot be initialised says why here
        return f"the CUDA driver cannot be used ({error})"
    if count == 0:
        hidden = f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else ""
        return (
            f"no GPU is visible to this process{hidden}: is the NVIDIA driver installed, and the container started "
            "with GPUs (docker --gpus all)?"
        )
    return (
        f"{count} GPU(s) are visible but CUDA cannot be initialised; the NVIDIA driver may be older than the CUDA "
        f"{torch.version.cuda} this torch was built for (nvidia-smi shows the driver's CUDA version)"
    )


def resolve_device(name: str, setting: str = "FACEGEN_DEVICE") -> torch.device:
    """The device ``name`` means on this host, checked: a CUDA device that does not exist raises :class:`DeviceError`
    naming ``setting`` and the problem. ``cuda:N`` is also made the current CUDA device, so that library calls that
    use "the current device" (cuDNN handles, ``empty_cache``, streams) act on it rather than on GPU 0."""
    try:
        check_device_name(name)
    except ValueError as error:
        raise DeviceError(f"{setting}={name!r}: {error}") from None
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"{setting}={name} but CUDA is not usable: {cuda_unusable_reason()}")
        count = torch.cuda.device_count()
        if device.index is not None:
            if device.index >= count:
                raise DeviceError(
                    f"{setting}={name} but this host has {count} GPU(s) (cuda:0 to cuda:{count - 1}); "
                    "CUDA_VISIBLE_DEVICES also renumbers them from 0"
                )
            torch.cuda.set_device(device)
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"{setting}={name} but MPS (Apple GPU) is not available on this host")
    return device


def exact_float32() -> None:
    """Full float32 in cuDNN convolutions and cuBLAS matmuls, not TF32 (10-bit mantissa, on by default for
    convolutions on Ampere and newer): the service promises exact Glow reconstructions and byte-identical seeded
    images in any batch, and TF32 breaks both (see docs/gpu.md for what was measured)."""
    backends = torch.backends
    if hasattr(backends.cudnn, "conv") and hasattr(backends.cudnn.conv, "fp32_precision"):
        backends.cudnn.conv.fp32_precision = "ieee"
        backends.cuda.matmul.fp32_precision = "ieee"
    else:  # torch before the fp32_precision settings
        backends.cudnn.allow_tf32 = False
        backends.cuda.matmul.allow_tf32 = False


def uses_tf32() -> bool:
    """Whether float32 convolutions or matmuls may run in TF32 on CUDA under the current settings."""
    backends = torch.backends
    if hasattr(backends.cudnn, "conv") and hasattr(backends.cudnn.conv, "fp32_precision"):
        return "tf32" in (backends.cudnn.conv.fp32_precision, backends.cuda.matmul.fp32_precision)
    return bool(backends.cudnn.allow_tf32 or backends.cuda.matmul.allow_tf32)


def configure_for_serving(device: torch.device) -> None:
    """The service's CUDA policy: exact float32 (:func:`exact_float32`), and no cuDNN autotuning. Autotuning pays off
    for shapes that repeat, but the batcher forms batches of every size from 1 to FACEGEN_MAX_BATCH and the face
    detector's pyramid follows each photo's size: each new shape would be timed once (a slow request), and the kernels
    chosen could differ between restarts and replicas."""
    if device.type != "cuda":
        return
    exact_float32()
    torch.backends.cudnn.benchmark = False


# Allocation failures that raise a plain RuntimeError (or torch.AcceleratorError) rather than torch.OutOfMemoryError:
# the CUDA runtime's own, and cuBLAS/cuDNN/cuFFT failing to allocate their workspaces.
OUT_OF_MEMORY_MARKERS = (
    "CUDA out of memory",
    "CUDA error: out of memory",
    "CUBLAS_STATUS_ALLOC_FAILED",
    "CUDNN_STATUS_ALLOC_FAILED",
    "CUDNN_STATUS_NOT_ENOUGH_WORKSPACE",
    "CUFFT_ALLOC_FAILED",
    "cuSOLVER error: CUSOLVER_STATUS_ALLOC_FAILED",
)

# Errors after which the CUDA context is corrupt: every later kernel launch fails until the process restarts.
DEVICE_FAULT_MARKERS = (
    "illegal memory access",
    "illegal instruction",
    "misaligned address",
    "unspecified launch failure",
    "device-side assert triggered",
    "uncorrectable ECC error",
    "GPU has fallen off the bus",
    "CUDA error: launch timed out",
    "CUDA error: unknown error",
    "CUDA error: device not ready",
)


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is an allocation failure (retrying with fewer rows may succeed)."""
    if isinstance(error, torch.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and any(marker in str(error) for marker in OUT_OF_MEMORY_MARKERS)


def is_device_fault(error: BaseException) -> bool:
    """Whether ``error`` leaves the device unusable (a sticky CUDA error: only a new process recovers)."""
    if is_out_of_memory(error) or not isinstance(error, RuntimeError):
        return False
    message = str(error)
    return any(marker in message for marker in DEVICE_FAULT_MARKERS)
