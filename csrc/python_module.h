// The Python side of a compiled library: an empty module, so that `import cibhash_ext._C` (or
// `_C_cuda`) loads the shared library, whose static initialisers register the ops. Built against
// Python's limited API (setup.py's py_limited_api), so one binary serves every CPython >= 3.10.
#pragma once
#include <Python.h>

// PyMODINIT_FUNC exports the init function despite -fvisibility=hidden.
#define CIBHASH_PYTHON_MODULE(name)                                                       \
  extern "C" PyMODINIT_FUNC PyInit_##name(void) {                                         \
    static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, #name, nullptr, -1, nullptr}; \
    return PyModule_Create(&module_def);                                                  \
  }
