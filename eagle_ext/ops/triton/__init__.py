"""Triton kernels behind the ops in ``eagle_ext.ops``; import a kernel module only on the Triton path."""
