"""Triton kernels of tt, installed as `tt.kernels`.

Each kernel family lives in its own module with its launcher and autograd.Function; `tt.ops`
is the only caller. Importing this package never requires Triton or a GPU.
"""
