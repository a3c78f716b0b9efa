"""Every fact about dtypes, in one table: the safetensors code ("F32"), the name users type and torch
uses ("float32"), the size, numpy's type where numpy has one (it has no bfloat16), the order
safetensors lays tensors out in, and the largest finite value of the floating-point ones.

Everything else asks this module: the tensor handles (:mod:`mptkit._tensor`), the safetensors
reader and writer, the prompt tables, the arithmetic, and ``--dtype`` (:func:`storage_dtype`).
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import UsageError


@dataclass(frozen=True)
class DType:
    code: str  # safetensors' name
    name: str  # torch's name, and what users type
    bits: int
    layout: int  # safetensors writes larger ranks first (its Dtype enum's order)
    numpy: str | None = None  # numpy's little-endian type string; None where numpy has no such type
    floating: bool = False
    largest: float | None = None  # the largest finite value of a floating-point dtype

    @property
    def itemsize(self) -> int:
        return self.bits // 8


#: the dtypes mptkit reads into handles and writes (a bank holds floating-point ones only)
TABLE: tuple[DType, ...] = (
    DType("F64", "float64", 64, 16, "<f8", True, 1.7976931348623157e308),
    DType("F32", "float32", 32, 15, "<f4", True, 3.4028234663852886e38),
    DType("BF16", "bfloat16", 16, 12, None, True, 3.3895313892515355e38),
    DType("F16", "float16", 16, 11, "<f2", True, 65504.0),
    DType("I64", "int64", 64, 17, "<i8"),
    DType("I32", "int32", 32, 13, "<i4"),
    DType("I16", "int16", 16, 9, "<i2"),
    DType("I8", "int8", 8, 5, "|i1"),
    DType("U8", "uint8", 8, 4, "|u1"),
    DType("BOOL", "bool", 8, 0, "|b1"),
)
BY_CODE: dict[str, DType] = {d.code: d for d in TABLE}
BY_NAME: dict[str, DType] = {d.name: d for d in TABLE}
#: codes a prompt bank's tensors may have
FLOAT_CODES: tuple[str, ...] = tuple(d.code for d in TABLE if d.floating)
#: the ``--dtype`` choices, in the order the help lists them
USER_NAMES: tuple[str, ...] = ("float32", "bfloat16", "float16", "float64")
#: bits per element of every dtype safetensors' header may name (a whole-model file holds tensors of
#: any of these; mptkit never reads the ones outside :data:`TABLE`, only checks their sizes)
HEADER_BITS: dict[str, int] = {
    **{d.code: d.bits for d in TABLE},
    "U16": 16,
    "U32": 32,
    "U64": 64,
    "C64": 64,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "F8_E4M3FNUZ": 8,
    "F8_E5M2FNUZ": 8,
}
#: safetensors' layout rank of the codes outside :data:`TABLE` (for the order of a header's tensors)
_OTHER_LAYOUT = {"U16": 10, "U32": 14, "U64": 18}


def itemsize(code: str) -> int:
    return BY_CODE[code].itemsize


def torch_name(code: str) -> str:
    return BY_CODE[code].name


def torch_dtype(code: str):
    """The torch dtype of a safetensors code ("F32" -> torch.float32); imports torch."""
    import torch

    return getattr(torch, BY_CODE[code].name)


def code_of_torch(tdtype) -> str | None:
    """The safetensors code of a torch dtype, None for one mptkit does not carry."""
    d = BY_NAME.get(str(tdtype).removeprefix("torch."))
    return d.code if d else None


def code_of_numpy(descr: str) -> str | None:
    """The code of a numpy type string ("<f4" -> "F32"), None for any other."""
    return next((d.code for d in TABLE if d.numpy == descr), None)


def layout_key(name: str, code: str) -> tuple[int, str]:
    """Sort key reproducing the order in which safetensors writes tensors: larger dtype rank first,
    then by name."""
    d = BY_CODE.get(code)
    return (-(d.layout if d else _OTHER_LAYOUT.get(code, -1)), name)


def storage_dtype(name: str | None, default: str | None = None) -> str | None:
    """The safetensors code ("F32", ...) for a user's ``dtype`` name ("float32", ...); ``default``
    when ``name`` is None. An unknown name is a :class:`UsageError` listing the choices."""
    if name is None:
        return default
    if name in USER_NAMES:
        return BY_NAME[name].code
    if name in FLOAT_CODES:  # already a safetensors code
        return name
    raise UsageError(f"unknown dtype {name!r}; expected one of {', '.join(USER_NAMES)}")


def shown(code: str) -> str:
    """How messages name a dtype: its user name ("bfloat16"), else the code."""
    d = BY_CODE.get(code)
    return d.name if d else code
