"""``pb_utils.Tensor``: a named NumPy (or CuPy) array, with DLPack in and out."""

from __future__ import annotations

from typing import Any

import numpy as np

from evserve.gpu.python_backend.pb_utils.datatypes import DATATYPE_CODES, datatype_of_dtype
from evserve.gpu.python_backend.pb_utils.dlpack import (
    KDL_BFLOAT,
    KDL_CPU,
    array_of_capsule,
    capsule_of,
    dltensor_of,
    is_capsule,
)
from evserve.gpu.python_backend.pb_utils.errors import TritonModelException
from evserve.protocol.datatypes import NATIVE_DATATYPES


def _check_tensor_name(name: str) -> None:
    if not isinstance(name, str):
        raise TypeError(f"Tensor name must be a str, found type '{type(name)}'")
    if name == "":
        raise TritonModelException("Tensor name cannot be an empty string.")


def _unsupported_dtype(dtype: np.dtype) -> TritonModelException:
    hint = " Use dtype=np.object_ for strings." if dtype.kind == "U" else ""
    return TritonModelException(f"NumPy dtype is not supported: {dtype}.{hint}")


class Tensor:
    """A named input or output tensor: a NumPy array (or a CuPy array, for device tensors).

    Like Triton, the array is kept C-contiguous (copying only when it is not), BYTES tensors are
    object arrays of ``bytes`` or ``str``, and BF16 tensors cannot be read with ``as_numpy()``:
    use ``to_dlpack()``/``from_dlpack()``.
    """

    __slots__ = ("_name", "_array", "_datatype")

    def __init__(self, name: str, numpy_array: Any) -> None:
        if type(name) is not str or not name:
            _check_tensor_name(name)
        array = numpy_array if type(numpy_array) is np.ndarray else np.asarray(numpy_array)
        dtype = array.dtype
        # The native dtypes are one lookup (every model output passes here).
        datatype = NATIVE_DATATYPES.get(dtype) or datatype_of_dtype(dtype)
        if datatype is None:
            raise _unsupported_dtype(dtype)
        if dtype.byteorder == ">":
            array = array.astype(dtype.newbyteorder("<"))
        self._name = name
        self._array = np.ascontiguousarray(array)
        self._datatype = datatype

    @staticmethod
    def _wrap(name: str, array: Any, datatype: str) -> Tensor:
        """A tensor over ``array`` as is (no checks, no copy): evserve's inputs and DLPack imports."""
        tensor = _new_tensor(Tensor)
        tensor._name = name
        tensor._array = array
        tensor._datatype = datatype
        return tensor

    def name(self) -> str:
        return self._name

    def triton_dtype(self) -> int:
        """The TRITONSERVER_DataType code (FP32 = 11, BYTES = 13, BF16 = 14, ...)."""
        return DATATYPE_CODES[self._datatype]

    def shape(self) -> list[int]:
        return [int(dim) for dim in self._array.shape]

    def is_cpu(self) -> bool:
        return isinstance(self._array, np.ndarray)

    def as_numpy(self) -> np.ndarray:
        if not self.is_cpu():
            raise TritonModelException("Tensor is stored in GPU and cannot be converted to NumPy.")
        if self._datatype == "BF16":
            raise TritonModelException(
                "Tensor dtype is BF16 and cannot be converted to NumPy. Use to_dlpack() and from_dlpack() instead."
            )
        return self._array

    def to_dlpack(self) -> object:
        """A (legacy, "dltensor") DLPack capsule over the data, zero-copy where DLPack allows."""
        return self._export(None)

    def __dlpack__(self, stream: Any = None, **_kwargs: Any) -> object:
        return self._export(stream)

    def __dlpack_device__(self) -> tuple[int, int]:
        if self.is_cpu():
            return (KDL_CPU, 0)
        return tuple(self._array.__dlpack_device__())

    def _export(self, stream: Any) -> object:
        if self._datatype == "BYTES":
            raise TritonModelException("DLPack does not have support for string tensors.")
        array = self._array
        if self.is_cpu():
            # A legacy capsule cannot mark memory read-only (evserve's inputs are views of the
            # request body), so read-only data is exported from a copy.
            capsule = (array if array.flags.writeable else array.copy()).__dlpack__()
        else:
            capsule = array.__dlpack__(stream=stream)
        if self._datatype == "BF16":
            dltensor_of(capsule).dtype.code = KDL_BFLOAT
        return capsule

    @staticmethod
    def from_dlpack(name: str, dlpack_tensor: Any) -> Tensor:
        """A tensor over a DLPack capsule or any object with ``__dlpack__`` (zero-copy).

        Host memory becomes a NumPy array; device memory a CuPy array (``is_cpu()`` is then
        False). Like Triton, only C-contiguous data is accepted.
        """
        _check_tensor_name(name)
        if isinstance(dlpack_tensor, Tensor):
            return Tensor._wrap(name, dlpack_tensor._array, dlpack_tensor._datatype)
        capsule = dlpack_tensor if is_capsule(dlpack_tensor) else capsule_of(dlpack_tensor)
        array, datatype = array_of_capsule(capsule)
        if not array.flags.c_contiguous:
            raise TritonModelException(
                "DLPack tensor is not contiguous. Only contiguous DLPack tensors that are stored in C-Order are "
                "supported."
            )
        return Tensor._wrap(name, array, datatype)

    def __repr__(self) -> str:
        return f"Tensor(name={self._name!r}, datatype={self._datatype}, shape={self.shape()})"


_new_tensor = object.__new__
