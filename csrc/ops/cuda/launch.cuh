// The two spellings the CUDA kernels need that plain C++ lacks, as macros: a kernel launch and a
// block's dynamic shared memory. nvcc gets the CUDA syntax; the CPU emulation build
// (CIBHASH_CUDA_EMU, csrc/emu/) gets its scheduler, so the kernel files compile unchanged with g++.
#pragma once

#if defined(CIBHASH_CUDA_EMU)
#include "cuda_emu.h"
// CIBHASH_LAUNCH(grid, block, smem, stream, kernel)(args...) == kernel<<<grid, block, smem, stream>>>(args...)
#define CIBHASH_LAUNCH(grid, block, smem, stream, ...) ::cuda_emu::Launch(grid, block, smem, stream, __VA_ARGS__)
// Declares `T* name`, the block's dynamic shared memory (16-byte aligned).
#define CIBHASH_DYNAMIC_SHARED(T, name) T* const name = ::cuda_emu::dynamic_shared<T>()
#else
#define CIBHASH_LAUNCH(grid, block, smem, stream, ...) __VA_ARGS__<<<grid, block, smem, stream>>>
#define CIBHASH_DYNAMIC_SHARED(T, name) extern __shared__ __align__(16) T name[]
#endif
