// The CUDA emulation's scheduler: each thread of a block is a fiber (ucontext), blocks run in
// sequence. A fiber runs until it reaches a synchronising call; once every fiber waits, the
// scheduler completes the rendezvous whose participants have all arrived, and reports an error
// (with where every thread waits) when none can complete. Declarations are in cuda_emu.h.
#include "cuda_emu.h"

#include <sys/mman.h>
#include <ucontext.h>

#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <algorithm>
#include <map>
#include <new>
#include <string>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#endif
#if defined(__SANITIZE_THREAD__)
#include <sanitizer/tsan_interface.h>
extern "C" void __tsan_ignore_thread_begin();
extern "C" void __tsan_ignore_thread_end();
#endif

namespace cuda_emu {
namespace {

constexpr unsigned kFullMask = 0xffffffffu;
constexpr size_t kStackBytes = size_t{256} << 10;
constexpr size_t kStaticSharedLimit = 48 << 10;  // dynamic shared memory above this needs the attribute

enum class State : int { kRunnable, kWaiting, kDone };

// Under ThreadSanitizer the fibers switch without synchronising (flag no_sync), so only the
// synchronisation CUDA documents orders memory: __syncthreads and __syncwarp release and acquire
// below; ballots, shuffles and matches do not. The emulator's own bookkeeping (the fields a fiber
// and the scheduler hand each other) is hidden from the race detector by this scope.
struct [[maybe_unused]] Unchecked {
#if defined(__SANITIZE_THREAD__)
  Unchecked() { __tsan_ignore_thread_begin(); }
  ~Unchecked() { __tsan_ignore_thread_end(); }
#endif
};

struct Fiber {
  ThreadIndex index;
  unsigned linear = 0;  // x + y * X + z * X * Y
  ucontext_t context;
  void* stack = nullptr;
  State state = State::kDone;
  // The pending call: op, where, mask, this lane's value and argument; then the result.
  Op op = Op::kSyncthreads;
  const char* file = nullptr;
  int line = 0;
  unsigned mask = 0;
  uint64_t value = 0;
  int arg = 0, width = 32;
  uint64_t result = 0;
  // ThreadSanitizer sync objects: this fiber's __syncwarp releases go to tsan_sync[syncs % 2], and
  // the block's barriers alternate between two objects (Scheduler::tsan_barrier) by `barriers`.
  unsigned syncs = 0, barriers = 0;
  char tsan_sync[2];
  void* tsan_fiber = nullptr;
  void* asan_fake_stack = nullptr;
};

// The threads of the running block.
struct Block {
  Fiber* first;
  unsigned n;
  Fiber* begin() const { return first; }
  Fiber* end() const { return first + n; }
  Fiber& operator[](unsigned i) const { return first[i]; }
};

struct Device {
  int sms = 132;
  int smem_optin = 227 << 10;
};

struct Scheduler {
  Device device;
  std::map<const void*, int> max_dynamic_smem;  // cudaFuncAttributeMaxDynamicSharedMemorySize
  cudaError_t last_error = cudaSuccess;
  std::vector<Fiber> fibers;
  Fiber* current = nullptr;
  ucontext_t main_context;
  void* main_tsan_fiber = nullptr;
  const void* main_stack_bottom = nullptr;
  size_t main_stack_size = 0;
  void (*body)(void*) = nullptr;
  void* body_ctx = nullptr;
  unsigned char* dynamic_smem = nullptr;
  char tsan_barrier[2];  // __syncthreads sync objects, by parity of the barrier count
  std::string context = "(no context)";  // what the driver is running, for error messages
};

Scheduler& sched() {
  static Scheduler s;
  return s;
}

const char* op_name(Op op) {
  switch (op) {
    case Op::kSyncthreads: return "__syncthreads";
    case Op::kSyncwarp: return "__syncwarp";
    case Op::kBallot: return "__ballot_sync";
    case Op::kShfl: return "__shfl_sync";
    case Op::kShflUp: return "__shfl_up_sync";
    case Op::kShflDown: return "__shfl_down_sync";
    case Op::kShflXor: return "__shfl_xor_sync";
    case Op::kMatchAny: return "__match_any_sync";
  }
  return "?";
}

// Where every unfinished thread of the block waits, then exit: an emulation error is a test failure.
[[noreturn]] __attribute__((format(printf, 1, 2))) void fail(const char* fmt, ...) {
  Scheduler& s = sched();
  std::fprintf(stderr, "CUDA emulation error in %s: ", s.context.c_str());
  va_list args;
  va_start(args, fmt);
  std::vfprintf(stderr, fmt, args);
  va_end(args);
  std::fprintf(stderr, "\n");
  if (!s.fibers.empty() && s.current != nullptr) {
    const ThreadIndex& i = s.current->index;
    std::fprintf(stderr, "  in block (%u,%u,%u), thread (%u,%u,%u)\n", i.block.x, i.block.y, i.block.z, i.thread.x,
                 i.thread.y, i.thread.z);
  }
  for (const Fiber& f : s.fibers) {
    if (f.state != State::kWaiting) continue;
    std::fprintf(stderr, "  thread %u (warp %u lane %u) waits in %s at %s:%d, mask 0x%08x\n", f.linear, f.linear / 32,
                 f.linear % 32, op_name(f.op), f.file, f.line, f.mask);
  }
  std::fflush(stderr);
  std::_Exit(3);
}

void switch_context(ucontext_t* from, ucontext_t* to, void* to_tsan, bool synchronising, void** fake_stack,
                    const void* to_stack, size_t to_size) {
#if defined(__SANITIZE_THREAD__)
  __tsan_switch_to_fiber(to_tsan, synchronising ? 0 : __tsan_switch_to_fiber_no_sync);
#else
  (void)to_tsan;
  (void)synchronising;
#endif
#if defined(__SANITIZE_ADDRESS__)
  __sanitizer_start_switch_fiber(fake_stack, to_stack, to_size);
#else
  (void)fake_stack;
  (void)to_stack;
  (void)to_size;
#endif
  swapcontext(from, to);
}

void finish_switch(void* fake_stack) {
#if defined(__SANITIZE_ADDRESS__)
  Scheduler& s = sched();
  __sanitizer_finish_switch_fiber(fake_stack, &s.main_stack_bottom, &s.main_stack_size);
#else
  (void)fake_stack;
#endif
}

// Fiber -> scheduler. `done` ends the fiber: its fake stack is dropped and its writes are handed
// to the scheduler (the host reads the outputs after the launch).
void yield_to_scheduler(bool done) {
  Scheduler& s = sched();
  Fiber* f = s.current;
  switch_context(&f->context, &s.main_context, s.main_tsan_fiber, done, done ? nullptr : &f->asan_fake_stack,
                 s.main_stack_bottom, s.main_stack_size);
  finish_switch(f->asan_fake_stack);
}

void fiber_entry() {
  finish_switch(nullptr);
  // Started (with the scheduler's view of memory) before any thread of the block runs, so that
  // no thread inherits another one's writes through the scheduler.
  yield_to_scheduler(false);
  Scheduler& s = sched();
  s.body(s.body_ctx);
  {
    Unchecked bookkeeping;
    s.current->state = State::kDone;
  }
  yield_to_scheduler(true);
  std::abort();  // a finished fiber is never resumed
}

void run_fiber(Fiber& f, bool synchronising) {
  Scheduler& s = sched();
  s.current = &f;
  void* fake = nullptr;
  switch_context(&s.main_context, &f.context, f.tsan_fiber, synchronising, &fake, f.stack, kStackBytes);
  finish_switch(fake);
  s.current = nullptr;
}

// Blocks here until the scheduler completes this thread's rendezvous.
uint64_t wait(Op op, Site site, unsigned mask, uint64_t value, int arg, int width) {
  Unchecked bookkeeping;
  Fiber& f = *sched().current;
  f.op = op;
  f.file = site.file;
  f.line = site.line;
  f.mask = mask;
  f.value = value;
  f.arg = arg;
  f.width = width;
  f.state = State::kWaiting;
  yield_to_scheduler(false);
  return f.result;
}

bool same_call(const Fiber& a, const Fiber& b) {
  return a.op == b.op && a.line == b.line && a.file == b.file;
}

// __syncthreads completes when every thread of the block waits at the same one.
bool complete_barrier(Block fibers) {
  for (const Fiber& f : fibers) {
    if (f.state != State::kWaiting || f.op != Op::kSyncthreads) return false;
  }
  for (const Fiber& f : fibers) {
    if (!same_call(f, fibers[0])) {
      fail("__syncthreads reached at two places: %s:%d and %s:%d", f.file, f.line, fibers[0].file, fibers[0].line);
    }
  }
  for (Fiber& f : fibers) f.state = State::kRunnable;
  return true;
}

// The lane a shuffle reads, or -1 for the caller's own value (out of its width segment).
int shuffle_source(const Fiber& f, unsigned lane) {
  const int w = f.width, base = static_cast<int>(lane) & ~(w - 1), pos = static_cast<int>(lane) & (w - 1);
  switch (f.op) {
    case Op::kShfl: return base + (f.arg & (w - 1));
    case Op::kShflUp: return pos >= f.arg ? static_cast<int>(lane) - f.arg : -1;
    case Op::kShflDown: return pos + f.arg < w ? static_cast<int>(lane) + f.arg : -1;
    case Op::kShflXor: {
      const int src = static_cast<int>(lane) ^ f.arg;
      return (src & ~(w - 1)) == base ? src : -1;
    }
    default: return -1;
  }
}

// A warp rendezvous completes when every lane of its mask waits at the same call with the same mask.
bool complete_warp_call(Block fibers, Fiber& first) {
  const unsigned warp = first.linear / 32, mask = first.mask;
  Fiber* lanes[32] = {};
  for (unsigned l = 0; l < 32; ++l) {
    if (!(mask >> l & 1u)) continue;
    Fiber& g = fibers[warp * 32 + l];
    if (g.state != State::kWaiting || !same_call(g, first)) return false;
    if (g.mask != mask) {
      fail("lanes of one %s at %s:%d pass different masks (0x%08x, 0x%08x)", op_name(first.op), first.file, first.line,
           mask, g.mask);
    }
    lanes[l] = &g;
  }
  for (unsigned l = 0; l < 32; ++l) {
    Fiber* g = lanes[l];
    if (g == nullptr) continue;
    uint64_t r = 0;
    switch (first.op) {
      case Op::kSyncwarp:
        for (unsigned m = 0; m < 32; ++m) r |= lanes[m] ? lanes[m]->value << m : 0;
        break;
      case Op::kBallot:
        for (unsigned m = 0; m < 32; ++m) r |= (lanes[m] && lanes[m]->value) ? (1ull << m) : 0;
        break;
      case Op::kMatchAny:
        for (unsigned m = 0; m < 32; ++m) r |= (lanes[m] && lanes[m]->value == g->value) ? (1ull << m) : 0;
        break;
      default: {
        const int src = shuffle_source(*g, l);
        if (src >= 0 && lanes[src] == nullptr) {
          fail("%s at %s:%d: lane %u reads lane %d, which is not in the mask", op_name(first.op), first.file, first.line,
               l, src);
        }
        r = src < 0 ? g->value : lanes[src]->value;
      }
    }
    g->result = r;
  }
  for (Fiber* g : lanes) {
    if (g) g->state = State::kRunnable;
  }
  return true;
}

// Nothing can move: say why, with every thread's position.
[[noreturn]] void stalled(Block fibers) {
  bool exited = false;
  for (const Fiber& f : fibers) exited |= f.state == State::kDone;
  for (const Fiber& f : fibers) {
    if (f.state != State::kWaiting) continue;
    if (f.op == Op::kSyncthreads && exited) {
      fail("a thread exited while others wait at __syncthreads (%s:%d)", f.file, f.line);
    }
    if (f.op == Op::kSyncthreads) continue;
    const unsigned warp = f.linear / 32;
    for (unsigned l = 0; l < 32; ++l) {
      if (!(f.mask >> l & 1u)) continue;
      const Fiber& g = fibers[warp * 32 + l];
      if (g.state == State::kDone) fail("%s at %s:%d waits for lane %u, which has exited", op_name(f.op), f.file, f.line, l);
      if (g.state == State::kWaiting && !same_call(g, f)) {
        fail("lanes of one mask reach different intrinsics (%s at %s:%d, and lane %u elsewhere): deadlock",
             op_name(f.op), f.file, f.line, l);
      }
    }
  }
  fail("deadlock: no thread can proceed");
}

void run_block(Scheduler& s, const dim3& grid, const dim3& block, const uint3& block_idx, size_t smem) {
  const unsigned n = block.x * block.y * block.z;
  if (smem > 0) {
    // Fresh per block, exactly sized (AddressSanitizer sees overflows), and poisoned: a kernel
    // reading shared memory it has not written reads garbage, as on a GPU.
    s.dynamic_smem = static_cast<unsigned char*>(::operator new(smem, std::align_val_t(16)));
    std::memset(s.dynamic_smem, 0xA5, smem);
  }
  for (unsigned t = 0; t < n; ++t) {
    Fiber& f = s.fibers[t];
    f.linear = t;
    f.index = ThreadIndex{{t % block.x, t / block.x % block.y, t / (block.x * block.y)}, block_idx, block, grid};
    f.state = State::kRunnable;
    f.syncs = 0;
    f.barriers = 0;
    getcontext(&f.context);
    f.context.uc_stack.ss_sp = f.stack;
    f.context.uc_stack.ss_size = kStackBytes;
    f.context.uc_link = nullptr;
    makecontext(&f.context, fiber_entry, 0);
    run_fiber(f, true);
  }
  Block fs{s.fibers.data(), n};
  while (true) {
    for (Fiber& f : fs) {
      if (f.state == State::kRunnable) run_fiber(f, false);
    }
    bool done = true;
    for (const Fiber& f : fs) done &= f.state == State::kDone;
    if (done) break;
    bool moved = complete_barrier(fs);
    for (Fiber& f : fs) {
      if (f.state == State::kWaiting && f.op != Op::kSyncthreads) moved |= complete_warp_call(fs, f);
    }
    if (!moved) stalled(fs);
  }
  if (smem > 0) {
    ::operator delete(s.dynamic_smem, std::align_val_t(16));
    s.dynamic_smem = nullptr;
  }
}

cudaError_t launch_error(cudaError_t e, const char* why, long a = 0, long b = 0) {
  std::fprintf(stderr, "CUDA emulation: launch refused: ");
  std::fprintf(stderr, why, a, b);
  std::fprintf(stderr, "\n");
  sched().last_error = e;
  return e;
}

}  // namespace

const ThreadIndex& self() { return sched().current->index; }

void syncthreads(Site site) {
  Scheduler& s = sched();
  Unchecked bookkeeping;
  void* sync = &s.tsan_barrier[s.current->barriers++ & 1];
#if defined(__SANITIZE_THREAD__)
  __tsan_release(sync);
#endif
  wait(Op::kSyncthreads, site, 0, 0, 0, 32);
#if defined(__SANITIZE_THREAD__)
  __tsan_acquire(sync);
#else
  (void)sync;
#endif
}

uint64_t warp_op(Op op, Site site, unsigned mask, uint64_t value, int arg, int width) {
  Unchecked bookkeeping;
  Scheduler& s = sched();
  Fiber& f = *s.current;
  const unsigned lane = f.linear % 32, warp = f.linear / 32;
  const unsigned n = f.index.block_dim.x * f.index.block_dim.y * f.index.block_dim.z;
  const unsigned lanes_here = std::min(32u, n - warp * 32);
  const unsigned existing = lanes_here == 32 ? kFullMask : (1u << lanes_here) - 1u;
  if (!(mask >> lane & 1u)) {
    fail("%s at %s:%d called by lane %u, which is not in its mask 0x%08x", op_name(op), site.file, site.line, lane, mask);
  }
  if (mask & ~existing) {
    fail("%s at %s:%d names lanes past the block's last thread (mask 0x%08x)", op_name(op), site.file, site.line, mask);
  }
  if (width < 1 || width > 32 || (width & (width - 1))) {
    fail("%s at %s:%d: width %d is not a power of two <= 32", op_name(op), site.file, site.line, width);
  }
  if (op != Op::kSyncwarp) return wait(op, site, mask, value, arg, width);
  // __syncwarp: the value is the parity of the object this lane releases, and the result has the
  // parity of every lane's (see complete_warp_call). Every lane of the mask released before any of
  // them resumes, and a lane's next release of the same object needs two more rendezvous, which
  // cannot complete before every lane of this one has acquired.
  const unsigned parity = f.syncs++ & 1;
#if defined(__SANITIZE_THREAD__)
  __tsan_release(&f.tsan_sync[parity]);
#endif
  const uint64_t parities = wait(op, site, mask, parity, arg, width);
#if defined(__SANITIZE_THREAD__)
  for (unsigned l = 0; l < 32; ++l) {
    if (mask >> l & 1u) __tsan_acquire(&s.fibers[warp * 32 + l].tsan_sync[parities >> l & 1u]);
  }
#else
  (void)parities;
#endif
  return 0;
}

void* dynamic_shared_base() { return sched().dynamic_smem; }

uint64_t (&loads_by_size())[5] {
  static uint64_t counts[5];
  return counts;
}

void check_aligned(const void* p, size_t alignment, const char* what, Site site) {
  __atomic_fetch_add(&loads_by_size()[__builtin_ctzll(alignment)], 1, __ATOMIC_RELAXED);
  if (reinterpret_cast<uintptr_t>(p) % alignment != 0) {
    fail("%s at %s:%d: misaligned %zu-byte load from %p", what, site.file, site.line, alignment, p);
  }
}

void set_context(const std::string& what) { sched().context = what; }

void set_device_attribute(cudaDeviceAttr attr, int value) {
  Device& d = sched().device;
  if (attr == cudaDevAttrMultiProcessorCount) d.sms = value;
  if (attr == cudaDevAttrMaxSharedMemoryPerBlockOptin) d.smem_optin = value;
}

cudaError_t set_func_attribute(const void* kernel, cudaFuncAttribute attr, int value) {
  Scheduler& s = sched();
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize) return s.last_error = cudaErrorInvalidValue;
  if (value < 0 || value > s.device.smem_optin) {
    return launch_error(cudaErrorInvalidValue, "cudaFuncSetAttribute: %ld bytes of dynamic shared memory, opt-in limit %ld",
                        value, s.device.smem_optin);
  }
  s.max_dynamic_smem[kernel] = value;
  return cudaSuccess;
}

cudaError_t launch_kernel(const void* kernel, dim3 grid, dim3 block, size_t smem, void (*body)(void*), void* ctx) {
  Unchecked bookkeeping;
  Scheduler& s = sched();
  const unsigned long long threads = static_cast<unsigned long long>(block.x) * block.y * block.z;
  if (threads == 0 || grid.x == 0 || grid.y == 0 || grid.z == 0) {
    return launch_error(cudaErrorInvalidConfiguration, "an empty grid or block");
  }
  if (threads > 1024 || block.x > 1024 || block.y > 1024 || block.z > 64) {
    return launch_error(cudaErrorInvalidConfiguration, "a block of %ld threads (at most 1024)", static_cast<long>(threads));
  }
  if (grid.x > 0x7fffffffu || grid.y > 65535 || grid.z > 65535) {
    return launch_error(cudaErrorInvalidConfiguration, "grid y = %ld, z = %ld (at most 65535)", grid.y, grid.z);
  }
  const auto attr = s.max_dynamic_smem.find(kernel);
  const size_t allowed = attr == s.max_dynamic_smem.end() ? kStaticSharedLimit : static_cast<size_t>(attr->second);
  if (smem > allowed) {
    return launch_error(cudaErrorInvalidValue,
                        "%ld bytes of dynamic shared memory, %ld allowed (above 48 KiB needs cudaFuncSetAttribute)",
                        static_cast<long>(smem), static_cast<long>(allowed));
  }
  if (s.fibers.size() < threads) {
    const size_t old = s.fibers.size();
    s.fibers.resize(threads);  // fibers are only moved here, between launches
    for (size_t t = old; t < threads; ++t) {
      s.fibers[t].stack = mmap(nullptr, kStackBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (s.fibers[t].stack == MAP_FAILED) fail("out of memory for fiber stacks");
#if defined(__SANITIZE_THREAD__)
      s.fibers[t].tsan_fiber = __tsan_create_fiber(0);
#endif
    }
  }
  for (size_t t = threads; t < s.fibers.size(); ++t) s.fibers[t].state = State::kDone;
#if defined(__SANITIZE_THREAD__)
  s.main_tsan_fiber = __tsan_get_current_fiber();
#endif
  s.body = body;
  s.body_ctx = ctx;
  for (unsigned z = 0; z < grid.z; ++z) {
    for (unsigned y = 0; y < grid.y; ++y) {
      for (unsigned x = 0; x < grid.x; ++x) run_block(s, grid, block, uint3{x, y, z}, smem);
    }
  }
  return cudaSuccess;
}

}  // namespace cuda_emu

cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
  const auto& d = cuda_emu::sched().device;
  if (device != 0) return cudaErrorInvalidValue;
  switch (attr) {
    case cudaDevAttrMultiProcessorCount: *value = d.sms; return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = d.smem_optin; return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlock: *value = 48 << 10; return cudaSuccess;
  }
  return cudaErrorInvalidValue;
}

cudaError_t cudaGetLastError() {
  auto& s = cuda_emu::sched();
  const cudaError_t e = s.last_error;
  s.last_error = cudaSuccess;
  return e;
}
