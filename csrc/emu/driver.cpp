// Runs the CUDA launchers (ops/cuda/launchers.h) under the emulation on cases read from a file and
// writes their outputs, for python_tests/test_cuda_emulation.py to compare with the CPU ops.
// Usage: cuda_emu_driver CASES OUT. Every number in both files is a little-endian int64.
//   case:   op, p[8], sms, smem_optin, offset[2], nblobs, then per blob: nbytes, bytes
//   output: status (a cudaError_t), nblobs, then per blob: nbytes, bytes; the last blob holds the
//           case's __ldg loads by size (1, 2, 4, 8, 16 bytes), the others the launchers' outputs
// Input blob i is placed `offset[i]` bytes past a 64-byte boundary (a misaligned view); every
// buffer is its own exact-size allocation, so AddressSanitizer sees any access past its end.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda_emu.h"
#include "ops/cuda/launchers.h"

namespace {

using cibhash::gpu::ElementType;
using cibhash::gpu::FloatType;

enum OpCode : int64_t { kPack, kUnpack, kBinarizeForward, kBinarizeBackward, kDistance, kTopk, kRadius };

// A device allocation: `offset` bytes into an exact-size, 64-byte aligned block.
class Buffer {
 public:
  Buffer(size_t bytes, size_t offset = 0)
      : base_(static_cast<unsigned char*>(::operator new(offset + bytes + (offset + bytes == 0), std::align_val_t(64)))),
        data_(base_ + offset),
        bytes_(bytes) {}
  Buffer(const Buffer&) = delete;
  ~Buffer() { ::operator delete(base_, std::align_val_t(64)); }
  template <class T = void>
  T* data() const {
    return reinterpret_cast<T*>(data_);
  }
  size_t bytes() const { return bytes_; }

 private:
  unsigned char* base_;
  unsigned char* data_;
  size_t bytes_;
};

int64_t read_i64(FILE* f) {
  int64_t v;
  if (std::fread(&v, 8, 1, f) != 1) throw std::runtime_error("truncated case file");
  return v;
}
void write_i64(FILE* f, int64_t v) { std::fwrite(&v, 8, 1, f); }

struct Case {
  int64_t op, p[8], sms, smem_optin, offset[2];
  std::vector<std::unique_ptr<Buffer>> inputs;
};

bool read_case(FILE* f, Case& c) {
  if (std::fread(&c.op, 8, 1, f) != 1) return false;
  for (int64_t& v : c.p) v = read_i64(f);
  c.sms = read_i64(f);
  c.smem_optin = read_i64(f);
  c.offset[0] = read_i64(f);
  c.offset[1] = read_i64(f);
  const int64_t blobs = read_i64(f);
  c.inputs.clear();
  for (int64_t i = 0; i < blobs; ++i) {
    const int64_t n = read_i64(f);
    c.inputs.push_back(std::make_unique<Buffer>(n, i < 2 ? c.offset[i] : 0));
    if (n > 0 && std::fread(c.inputs.back()->data(), 1, n, f) != static_cast<size_t>(n)) {
      throw std::runtime_error("truncated case file");
    }
  }
  return true;
}

// Runs one case; its outputs go to `outs`.
cudaError_t run(const Case& c, std::vector<std::unique_ptr<Buffer>>& outs) {
  const cudaStream_t stream = nullptr;
  const auto out = [&](size_t bytes) {
    outs.push_back(std::make_unique<Buffer>(bytes));
    return outs.back()->data<unsigned char>();
  };
  const auto in = [&](int i) { return c.inputs.at(i)->data<const uint8_t>(); };
  switch (c.op) {
    case kPack: {
      const int64_t rows = c.p[1], nbits = c.p[2];
      return cibhash::gpu::launch_pack_bits(in(0), static_cast<ElementType>(c.p[0]), out(rows * ((nbits + 7) / 8)),
                                            rows, nbits, stream);
    }
    case kUnpack: return cibhash::gpu::launch_unpack_bits(in(0), out(c.p[1] * c.p[2]), c.p[1], c.p[2], stream);
    case kBinarizeForward: {
      const auto type = static_cast<FloatType>(c.p[0]);
      const int64_t n = c.p[1];
      return cibhash::gpu::launch_stochastic_binarize_forward(in(0), out(n * (type == FloatType::kFloat ? 4 : 2)),
                                                              type, n, c.p[2] != 0, c.p[3], c.p[4], stream);
    }
    case kBinarizeBackward: {
      const auto type = static_cast<FloatType>(c.p[0]);
      const int64_t n = c.p[1];
      return cibhash::gpu::launch_stochastic_binarize_backward(in(0), in(1), out(n * (type == FloatType::kFloat ? 4 : 2)),
                                                               type, n, stream);
    }
    default: break;
  }
  const int64_t Q = c.p[1], N = c.p[2], B = c.p[3];
  if (c.op == kDistance) {
    return cibhash::gpu::launch_hamming_distance(in(0), in(1), Q, N, B, reinterpret_cast<int32_t*>(out(Q * N * 4)),
                                                 stream);
  }
  if (c.op == kTopk) {
    const int64_t k = c.p[4];
    auto* dist = reinterpret_cast<int32_t*>(out(Q * k * 4));
    auto* idx = reinterpret_cast<int64_t*>(out(Q * k * 8));
    const int64_t ws_bytes = cibhash::gpu::hamming_topk_workspace_bytes(Q, B);
    Buffer ws(ws_bytes);
    return cibhash::gpu::launch_hamming_topk(in(0), in(1), Q, N, B, k, dist, idx, ws_bytes ? ws.data() : nullptr,
                                             stream);
  }
  if (c.op == kRadius) {
    // The two passes of the CUDA wrapper: counts, their running sum (on the host here), the fill.
    const int64_t radius = c.p[4];
    Buffer counts(Q * 8);
    std::fill_n(counts.data<int64_t>(), Q, 0);
    cudaError_t e = cibhash::gpu::launch_hamming_radius_count(in(0), in(1), Q, N, B, radius, counts.data<int64_t>(), stream);
    if (e != cudaSuccess) return e;
    auto* lims = reinterpret_cast<int64_t*>(out((Q + 1) * 8));
    lims[0] = 0;
    for (int64_t q = 0; q < Q; ++q) lims[q + 1] = lims[q] + counts.data<int64_t>()[q];
    const int64_t total = lims[Q];
    auto* dist = reinterpret_cast<int32_t*>(out(total * 4));
    auto* idx = reinterpret_cast<int64_t*>(out(total * 8));
    if (total == 0) return cudaSuccess;
    const int64_t ws_bytes = cibhash::gpu::hamming_radius_workspace_bytes(Q, B, radius);
    Buffer ws(ws_bytes);
    return cibhash::gpu::launch_hamming_radius_fill(in(0), in(1), Q, N, B, radius, lims, dist, idx,
                                                    ws_bytes ? ws.data() : nullptr, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s CASES OUT\n", argv[0]);
    return 2;
  }
  FILE* in = std::fopen(argv[1], "rb");
  FILE* out = std::fopen(argv[2], "wb");
  if (!in || !out) {
    std::perror("cuda_emu_driver");
    return 2;
  }
  Case c;
  for (int64_t index = 0; read_case(in, c); ++index) {
    cuda_emu::set_context("case " + std::to_string(index) + " (op " + std::to_string(c.op) + ", params " +
                          std::to_string(c.p[0]) + " " + std::to_string(c.p[1]) + " " + std::to_string(c.p[2]) + " " +
                          std::to_string(c.p[3]) + " " + std::to_string(c.p[4]) + ", sms " + std::to_string(c.sms) +
                          ", smem opt-in " + std::to_string(c.smem_optin) + ")");
    cuda_emu::set_device_attribute(cudaDevAttrMultiProcessorCount, static_cast<int>(c.sms));
    cuda_emu::set_device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin, static_cast<int>(c.smem_optin));
    std::vector<std::unique_ptr<Buffer>> outs;
    std::fill(std::begin(cuda_emu::loads_by_size()), std::end(cuda_emu::loads_by_size()), 0);
    const cudaError_t e = run(c, outs);
    outs.push_back(std::make_unique<Buffer>(sizeof(cuda_emu::loads_by_size())));
    std::memcpy(outs.back()->data(), cuda_emu::loads_by_size(), sizeof(cuda_emu::loads_by_size()));
    write_i64(out, e);
    write_i64(out, static_cast<int64_t>(outs.size()));
    for (const auto& b : outs) {
      write_i64(out, static_cast<int64_t>(b->bytes()));
      std::fwrite(b->data(), 1, b->bytes(), out);
    }
  }
  std::fclose(out);
  return 0;
}
