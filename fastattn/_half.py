"""The half-precision dtypes: NumPy's float16 and ml_dtypes' bfloat16.

Half inputs are read in their own dtype (the *storage* dtype of q, k, v and out) and
computed in float32 (the *compute* dtype: scale, additive mask, softmax statistics,
lse, split-KV partials).  NumPy has no bfloat16; the optional package ml_dtypes adds
it.  Nothing here imports ml_dtypes until a bfloat16 dtype has to be *made* (an array
that already has it proves the package is there), so ``import fastattn`` never does.
"""

import numpy as np

FLOAT16 = np.dtype(np.float16)
FLOAT32 = np.dtype(np.float32)

INSTALL_HINT = "pip install ml_dtypes (or pip install 'fastattn[half]')"


def is_bfloat16(dtype):
    """Whether ``dtype`` is ml_dtypes' bfloat16 (told by name: ml_dtypes is not imported)."""
    return dtype.kind == "V" and dtype.name == "bfloat16" and \
        dtype.type.__module__.split(".")[0] == "ml_dtypes"


def is_half(dtype):
    """float16 or bfloat16."""
    return dtype == FLOAT16 or is_bfloat16(dtype)


def is_float(dtype):
    """A floating dtype fastattn takes: float16, bfloat16, float32 or float64."""
    return (dtype.kind == "f" and dtype.itemsize <= 8) or is_bfloat16(dtype)


def compute_dtype_of(result_dtype):
    """The dtype the kernels compute in: float32 for the half dtypes, else the dtype itself."""
    return FLOAT32 if is_half(result_dtype) else np.dtype(result_dtype)


def bfloat16():
    """ml_dtypes' bfloat16 dtype; ``ModuleNotFoundError`` saying how to install it."""
    try:
        import ml_dtypes
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError(f"bfloat16 needs the package ml_dtypes, which is not "
                                  f"installed: {INSTALL_HINT}", name="ml_dtypes") from error
    return np.dtype(ml_dtypes.bfloat16)


def result_type(*named):
    """``np.result_type`` of ``(name, array)`` pairs; TypeError naming both sides of a
    bfloat16 / float16 mix (no common dtype: NumPy refuses to promote them)."""
    try:
        return np.result_type(*(array.dtype for _, array in named))
    except TypeError:
        bf16 = [name for name, array in named if is_bfloat16(array.dtype)]
        f16 = [name for name, array in named if array.dtype == FLOAT16]
        if not (bf16 and f16):
            raise
        bf16, f16 = bf16[0], f16[0]
        raise TypeError(f"{bf16} is bfloat16 and {f16} is float16, which have no common "
                        f"dtype; cast one of them, e.g. {f16}.astype({bf16}.dtype) or "
                        f"{bf16}.astype(np.float32)") from None
