// Stand-in for CUDA's <cuda_bf16.h> in the CPU emulation build: everything is in cuda_emu.h.
#pragma once
#include "cuda_emu.h"
