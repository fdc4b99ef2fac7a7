"""setuptools entry point: the native extension is built by cffi from build_ffi.py."""

from setuptools import setup

setup(cffi_modules=["build_ffi.py:ffibuilder"])
