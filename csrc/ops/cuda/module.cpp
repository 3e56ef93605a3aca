// The Python module stub `_C_cuda`, whose import loads the CUDA library (the registrations in
// ops/cuda/*.cpp). cibhash_ext/_extension.py imports it after `_C` (which defines the schemas),
// and only when torch has CUDA.
#include "python_module.h"

CIBHASH_PYTHON_MODULE(_C_cuda)
