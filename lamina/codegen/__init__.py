"""Code generation: fused regions -> Kernel IR -> source for the CPU (Numba) and CUDA targets."""
