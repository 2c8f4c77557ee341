"""Weights in and out of modules: safetensors only, checked against the architecture before loading.

One implementation for run directories (generation) and packages (sharing): the safetensors header
(names, dtypes, shapes) is compared with the instantiated module's state dict before any tensor is
materialised, and every floating tensor must be finite. Callers pass the exception type their users
expect (GeneratorLoadError, PackageError) so the message names their file.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import torch
from torch import nn

# safetensors dtype codes for the torch dtypes a state dict holds
SAFETENSORS_DTYPES = {
    torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
    torch.int64: "I64", torch.int32: "I32", torch.uint8: "U8", torch.bool: "BOOL",
}
MAX_SAFETENSORS_HEADER = 16 << 20


def state_dict_cpu(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


def read_safetensors_header(data: bytes, where: str, error: type[Exception] = ValueError) -> dict[str, dict[str, Any]]:
    """The tensor table of a safetensors file, before any tensor is read."""
    if len(data) < 8:
        raise error(f"{where}: too short for a safetensors file ({len(data)} bytes)")
    (n,) = struct.unpack("<Q", data[:8])
    if n < 2 or n > min(MAX_SAFETENSORS_HEADER, len(data) - 8):
        raise error(f"{where}: not a safetensors file (header length {n} is impossible for a {len(data)}-byte file); "
                    "weights must be safetensors, pickled checkpoints are refused")
    try:
        header = json.loads(data[8 : 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise error(f"{where}: safetensors header is not valid JSON; not a safetensors file") from None
    if not isinstance(header, dict):
        raise error(f"{where}: safetensors header is not a JSON object")
    header.pop("__metadata__", None)
    for name, spec in header.items():
        if not (isinstance(spec, dict) and isinstance(spec.get("dtype"), str) and isinstance(spec.get("shape"), list)):
            raise error(f"{where}: tensor {name!r} has a malformed header entry")
    return header


def load_state_dict_checked(data: bytes, expected: dict[str, torch.Tensor], where: str,
                            error: type[Exception] = ValueError) -> dict[str, torch.Tensor]:
    """Tensors of ``data`` (safetensors bytes) after checking them against ``expected`` (a state dict)."""
    header = read_safetensors_header(data, where, error)
    missing = sorted(set(expected) - set(header))
    extra = sorted(set(header) - set(expected))
    if missing or extra:
        raise error(f"{where}: tensors do not match the architecture (missing {missing[:4]}, unexpected {extra[:4]})")
    for name, ref in expected.items():
        spec = header[name]
        want_dtype = SAFETENSORS_DTYPES.get(ref.dtype, str(ref.dtype))
        if spec["dtype"] != want_dtype:
            raise error(f"{where}: tensor {name!r} has dtype {spec['dtype']}, the architecture expects {want_dtype}")
        if list(spec["shape"]) != list(ref.shape):
            raise error(f"{where}: tensor {name!r} has shape {spec['shape']}, the architecture expects {list(ref.shape)}")
    from safetensors import SafetensorError
    from safetensors.torch import load as load_safetensors

    try:
        tensors = load_safetensors(data)
    except (SafetensorError, ValueError) as exc:
        raise error(f"{where}: invalid safetensors data ({exc})") from None
    for name, t in tensors.items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise error(f"{where}: tensor {name!r} holds NaN/Inf")
    return tensors


def load_module_checked(module: nn.Module, data: bytes, where: str, error: type[Exception] = ValueError) -> nn.Module:
    module.load_state_dict(load_state_dict_checked(data, module.state_dict(), where, error))
    return module
