// Every operator schema of the cibhash_ext library, and the Python module stub `_C` whose import
// loads this library (the CPU kernels, ops/cpu/). The CUDA kernels are a second library,
// `_C_cuda` (ops/cuda/module.cpp), loaded only beside a torch built with CUDA.
#include "ops/stable.h"
#include "python_module.h"

CIBHASH_PYTHON_MODULE(_C)

STABLE_TORCH_LIBRARY(cibhash_ext, m) {
  // Bit packing: bit j of a code is bit (j % 8) of byte j / 8, least-significant bit first.
  m.def("pack_bits(Tensor x) -> Tensor");
  m.def("unpack_bits(Tensor codes, int nbits) -> Tensor");
  // Stochastic binary layer. Randomness enters as (seed, offset) for a Philox4x32-10 stream.
  m.def("stochastic_binarize_forward(Tensor logits, bool stochastic, int seed, int offset) -> Tensor");
  m.def("stochastic_binarize_backward(Tensor grad_codes, Tensor logits) -> Tensor");
  // Exact Hamming search on packed uint8 codes; ties go to the lower database index.
  m.def("hamming_distance(Tensor queries, Tensor database) -> Tensor");
  m.def("hamming_topk(Tensor queries, Tensor database, int k) -> (Tensor, Tensor)");
  m.def("hamming_radius(Tensor queries, Tensor database, int radius) -> (Tensor, Tensor, Tensor)");
  // The same restricted to the codes whose bit is set in allow (uint8 bitmap, bit i of byte i / 8).
  m.def("hamming_topk_filtered(Tensor queries, Tensor database, int k, Tensor allow) -> (Tensor, Tensor)");
  m.def("hamming_radius_filtered(Tensor queries, Tensor database, int radius, Tensor allow) -> (Tensor, Tensor, Tensor)");
  // Multi-index hashing (MIHIndex): tables per substring, layout = (bit_start, bit_count, dir_bits)
  // per table, tables = (dir, low, pos) int32 arrays per table. A search returns, per query, whether
  // it finished within budget (bucket probes + candidate checks); the caller scans the others.
  m.def("mih_build(Tensor codes, int[] layout) -> Tensor[]");
  m.def("mih_search(Tensor queries, Tensor codes, int[] layout, Tensor[] tables, int k, Tensor? allow, int budget) "
        "-> (Tensor, Tensor, Tensor)");
  m.def("mih_range_search(Tensor queries, Tensor codes, int[] layout, Tensor[] tables, int radius, Tensor? allow, "
        "int budget) -> (Tensor, Tensor, Tensor, Tensor)");
}
