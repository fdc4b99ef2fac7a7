# The compiled module (cffi, built by build_ffi.py). Its members come from the C declarations
# in csrc/uvssl_api.h and csrc/openssl_cdef.h, which type checkers cannot read.
from typing import Any

ffi: Any
lib: Any
