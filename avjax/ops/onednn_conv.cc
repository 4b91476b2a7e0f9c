// Channels-last N-D convolution (1D/2D/3D) for XLA:CPU, calling oneDNN
// directly through XLA's typed FFI: forward, data gradient, weight gradient.
//
// Why: XLA:CPU's convolution emitter runs the 3D shapes avjax uses far below
// its GEMM rate (see avjax/layers/conv.py). oneDNN's JIT kernels are what
// Keras and PyTorch use on CPU.
//
// Layouts are XLA's own (row-major NWC/NHWC/NDHWC data, WIO/HWIO/DHWIO
// weights): oneDNN reads the operands and writes the result buffer in place.
// Only weights (small) are reordered when oneDNN's kernel wants a blocked
// layout. Padding (asymmetric), strides and dilation go to oneDNN, so no
// padded copy of the input is made.
//
// The forward pass has a second target that also adds a bias and can apply
// ReLU, as oneDNN post-ops on the tile it just computed: XLA would otherwise
// read and write the whole output once more for `relu(conv + bias)` (on S1's
// 16->16 Conv3D layer, 344 MB each way at batch 32).
//
// The weight gradient has a second target that also writes the bias gradient
// (oneDNN's diff_bias, summed over the batch and positions while the kernel
// reads dy): XLA would otherwise read the whole of dy once more to reduce it.
//
// vmap: jax calls the targets with vmap_method="expand_dims", so every
// operand may carry L leading batch dims of size 1 or V. When the weights are
// unbatched, those dims fold into the batch (one oneDNN call); otherwise the
// handler loops over them.
//
// Threads: a call is split over its batch into jobs of >= g_macs_per_chunk
// MACs, run by single-threaded oneDNN primitives on the calling thread and
// XLA's own intra-op pool (FFI Ctx<ThreadPool>), so oneDNN never competes
// with XLA for the cores; weight-gradient jobs write f32 partials that are
// summed. Only a call that cannot be split (one job) uses this oneDNN build's
// OpenMP team, sized by the problem (TeamSize). `avjax_onednn_set_threads`
// fixes that team size (0: by size again).

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using dnnl::memory;
using Dims = memory::dims;

enum class Pass { kForward, kBackwardData, kBackwardWeights };

int g_threads = 0;  // 0: by problem size, up to OpenMP's default.

// MACs per OpenMP thread before another one joins: a team's start and
// barriers cost tens of microseconds on an idle machine and a scheduler tick
// (ms) on a loaded one, so small convolutions run on the calling thread.
constexpr int64_t kMacsPerThread = int64_t(1) << 22;

// Work per job when a call is split over the batch for XLA's threads
// (settable for tests: avjax_onednn_set_chunk_macs).
int64_t g_macs_per_chunk = int64_t(1) << 22;

int TeamSize(int64_t macs) {
  static const int max_threads = omp_get_max_threads();  // Before any change.
  if (g_threads > 0) return g_threads;
  int64_t t = macs / kMacsPerThread;
  return int(t < 1 ? 1 : t > max_threads ? max_threads : t);
}

dnnl::engine& Engine() {
  static dnnl::engine* engine = new dnnl::engine(dnnl::engine::kind::cpu, 0);
  return *engine;
}

dnnl::stream& Stream() {
  thread_local dnnl::stream stream(Engine());
  return stream;
}

// Grow-only per-thread buffers: XLA may run several calls at once (one per
// simulated device, or independent ops), so nothing here is shared.
struct Scratch {
  std::vector<char> pad, weights;
  void* Get(std::vector<char>& v, size_t bytes) {
    if (v.size() < bytes) v.resize(bytes);
    return v.data();
  }
};
Scratch& ThreadScratch() {
  thread_local Scratch scratch;
  return scratch;
}

memory::format_tag DataTag(int n) {
  return n == 1 ? memory::format_tag::nwc
       : n == 2 ? memory::format_tag::nhwc
                : memory::format_tag::ndhwc;
}

memory::format_tag WeightsTag(int n) {
  return n == 1 ? memory::format_tag::wio
       : n == 2 ? memory::format_tag::hwio
                : memory::format_tag::dhwio;
}

// One convolution problem, without the (foldable) batch size's provenance.
struct Problem {
  Pass pass;
  memory::data_type dtype;
  memory::data_type wdtype;  // Weights (grad) dtype: f32 partials when chunked.
  int n;           // spatial dims
  int64_t batch, cin, cout;
  // Forward: fused bias add and ReLU. Weight gradient: bias also writes the
  // bias gradient (in wdtype, like the weights').
  bool bias = false, relu = false;
  Dims in, kernel, out, strides, dilation, pad_lo, pad_hi;

  std::string Key() const {
    std::ostringstream k;
    k << int(pass) << ':' << int(dtype) << ':' << int(wdtype) << ':' << batch
      << ':' << cin << ':' << cout << ':' << bias << relu << ':'
      << omp_get_max_threads();
    for (const Dims* d : {&in, &kernel, &out, &strides, &dilation, &pad_lo,
                          &pad_hi}) {
      k << '|';
      for (auto v : *d) k << v << ',';
    }
    return k.str();
  }

  memory::desc Src() const {
    Dims d{batch, cin};
    d.insert(d.end(), in.begin(), in.end());
    return memory::desc(d, dtype, DataTag(n));
  }
  memory::desc Dst() const {
    Dims d{batch, cout};
    d.insert(d.end(), out.begin(), out.end());
    return memory::desc(d, dtype, DataTag(n));
  }
  memory::desc Bias() const {
    return memory::desc({cout}, pass == Pass::kBackwardWeights ? wdtype : dtype,
                        memory::format_tag::a);
  }
  memory::desc Weights(bool any) const {
    Dims d{cout, cin};
    d.insert(d.end(), kernel.begin(), kernel.end());
    return any ? memory::desc(d, wdtype, memory::format_tag::any)
               : memory::desc(d, wdtype, WeightsTag(n));
  }
};

// A primitive built for one Problem, plus the reorder between XLA's plain
// weights layout and the one the kernel chose (if they differ).
struct Plan {
  dnnl::primitive prim;
  memory::desc plain_w, kernel_w, scratch;
  bool reorder_w = false;
  dnnl::reorder to_kernel_w, to_plain_w;
  std::string impl;
};

std::unique_ptr<Plan> MakePlan(const Problem& p) {
  auto& eng = Engine();
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  Dims dil(p.dilation.size());
  for (size_t i = 0; i < dil.size(); ++i) dil[i] = p.dilation[i] - 1;
  auto src = p.Src(), dst = p.Dst(), w_any = p.Weights(true);
  auto plan = std::make_unique<Plan>();
  plan->plain_w = p.Weights(false);
  Problem hint = p;
  hint.wdtype = p.dtype;
  hint.pass = Pass::kForward;
  if (p.relu) {
    dnnl::post_ops ops;
    ops.append_eltwise(dnnl::algorithm::eltwise_relu, 0.f, 0.f);
    attr.set_post_ops(ops);
  }
  auto fwd = p.bias
      ? dnnl::convolution_forward::primitive_desc(
            eng, dnnl::prop_kind::forward_training,
            dnnl::algorithm::convolution_direct, src, hint.Weights(true),
            hint.Bias(), dst,
            p.strides, dil, p.pad_lo, p.pad_hi, attr)
      : dnnl::convolution_forward::primitive_desc(
            eng, dnnl::prop_kind::forward_training,
            dnnl::algorithm::convolution_direct, src, hint.Weights(true), dst,
            p.strides, dil, p.pad_lo, p.pad_hi, attr);
  if (p.pass == Pass::kForward) {
    plan->kernel_w = fwd.weights_desc();
    plan->scratch = fwd.scratchpad_desc();
    plan->impl = fwd.impl_info_str();
    plan->prim = dnnl::convolution_forward(fwd);
  } else if (p.pass == Pass::kBackwardData) {
    auto bwd = dnnl::convolution_backward_data::primitive_desc(
        eng, dnnl::algorithm::convolution_direct, src, w_any, dst, p.strides,
        dil, p.pad_lo, p.pad_hi, fwd, attr);
    plan->kernel_w = bwd.weights_desc();
    plan->scratch = bwd.scratchpad_desc();
    plan->impl = bwd.impl_info_str();
    plan->prim = dnnl::convolution_backward_data(bwd);
  } else {
    auto bwd = p.bias
        ? dnnl::convolution_backward_weights::primitive_desc(
              eng, dnnl::algorithm::convolution_direct, src, w_any, p.Bias(),
              dst, p.strides, dil, p.pad_lo, p.pad_hi, fwd, attr)
        : dnnl::convolution_backward_weights::primitive_desc(
              eng, dnnl::algorithm::convolution_direct, src, w_any, dst,
              p.strides, dil, p.pad_lo, p.pad_hi, fwd, attr);
    plan->kernel_w = bwd.diff_weights_desc();
    plan->scratch = bwd.scratchpad_desc();
    plan->impl = bwd.impl_info_str();
    plan->prim = dnnl::convolution_backward_weights(bwd);
  }
  plan->reorder_w = plan->kernel_w != plan->plain_w;
  if (plan->reorder_w) {
    plan->to_kernel_w = dnnl::reorder(
        dnnl::reorder::primitive_desc(eng, plan->plain_w, eng, plan->kernel_w));
    plan->to_plain_w = dnnl::reorder(
        dnnl::reorder::primitive_desc(eng, plan->kernel_w, eng, plan->plain_w));
  }
  return plan;
}

std::mutex g_cache_mu;
std::unordered_map<std::string, std::unique_ptr<Plan>>& Cache() {
  static auto* cache = new std::unordered_map<std::string, std::unique_ptr<Plan>>;
  return *cache;
}

const Plan& GetPlan(const Problem& p) {
  std::string key = p.Key();
  {
    std::lock_guard<std::mutex> lock(g_cache_mu);
    auto it = Cache().find(key);
    if (it != Cache().end()) return *it->second;
  }
  auto plan = MakePlan(p);  // Outside the lock: creation can take ms.
  std::lock_guard<std::mutex> lock(g_cache_mu);
  auto& slot = Cache()[key];
  if (!slot) slot = std::move(plan);
  return *slot;
}

// Runs one problem on raw pointers: src/weights/dst in XLA's layouts. Which
// of them are read and which written depends on the pass.
void Run(const Problem& p, void* src, void* weights, void* dst,
         void* bias = nullptr) {
  const Plan& plan = GetPlan(p);
  auto& eng = Engine();
  auto& strm = Stream();
  Scratch& s = ThreadScratch();
  memory src_m(p.Src(), eng, src), dst_m(p.Dst(), eng, dst);
  memory plain_w(plan.plain_w, eng, weights);
  memory kernel_w = plain_w;
  if (plan.reorder_w) {
    kernel_w = memory(plan.kernel_w, eng,
                      s.Get(s.weights, plan.kernel_w.get_size()));
    if (p.pass != Pass::kBackwardWeights) {
      plan.to_kernel_w.execute(strm, plain_w, kernel_w);
    }
  }
  memory pad_m(plan.scratch, eng, s.Get(s.pad, plan.scratch.get_size()));
  if (p.pass == Pass::kForward) {
    std::unordered_map<int, memory> args{{DNNL_ARG_SRC, src_m},
                                         {DNNL_ARG_WEIGHTS, kernel_w},
                                         {DNNL_ARG_DST, dst_m},
                                         {DNNL_ARG_SCRATCHPAD, pad_m}};
    if (p.bias) {
      args.emplace(DNNL_ARG_BIAS, memory(p.Bias(), eng, bias));
    }
    plan.prim.execute(strm, args);
  } else if (p.pass == Pass::kBackwardData) {
    plan.prim.execute(strm, {{DNNL_ARG_DIFF_SRC, src_m},
                             {DNNL_ARG_WEIGHTS, kernel_w},
                             {DNNL_ARG_DIFF_DST, dst_m},
                             {DNNL_ARG_SCRATCHPAD, pad_m}});
  } else {
    std::unordered_map<int, memory> args{{DNNL_ARG_SRC, src_m},
                                         {DNNL_ARG_DIFF_WEIGHTS, kernel_w},
                                         {DNNL_ARG_DIFF_DST, dst_m},
                                         {DNNL_ARG_SCRATCHPAD, pad_m}};
    if (p.bias) {
      args.emplace(DNNL_ARG_DIFF_BIAS, memory(p.Bias(), eng, bias));
    }
    plan.prim.execute(strm, args);
    if (plan.reorder_w) plan.to_plain_w.execute(strm, kernel_w, plain_w);
  }
  strm.wait();
}

// Runs fn(0..count-1) on the calling thread and up to count-1 of XLA's
// intra-op threads, each claiming the next index when free: a descheduled
// thread on a loaded machine delays only the work it holds, where an OpenMP
// team waits for its slowest member at every barrier. The state is shared, so
// a helper that starts after all work is done finds nothing and leaves.
void ParallelFor(ffi::ThreadPool* pool, int64_t count,
                 const std::function<void(int64_t)>& fn) {
  int64_t helpers = pool ? std::min<int64_t>(pool->num_threads(), count - 1) : 0;
  if (helpers <= 0) {
    for (int64_t i = 0; i < count; ++i) fn(i);
    return;
  }
  struct State {
    std::atomic<int64_t> next{0};
    int64_t count = 0, done = 0;
    const std::function<void(int64_t)>* fn = nullptr;
    std::mutex mu;
    std::condition_variable cv;
    std::string error;
  };
  auto state = std::make_shared<State>();
  state->count = count;
  state->fn = &fn;  // Only dereferenced for claimed indices, before the wait ends.
  auto work = [state]() {
    for (;;) {
      int64_t i = state->next.fetch_add(1);
      if (i >= state->count) return;
      std::string error;
      try {
        (*state->fn)(i);
      } catch (const std::exception& e) {
        error = e.what();
      }
      std::lock_guard<std::mutex> lock(state->mu);
      if (!error.empty() && state->error.empty()) state->error = error;
      if (++state->done == state->count) state->cv.notify_all();
    }
  };
  for (int64_t h = 0; h < helpers; ++h) {
    auto task = work;  // Schedule takes ownership of an rvalue.
    pool->Schedule(std::move(task));
  }
  work();
  std::unique_lock<std::mutex> lock(state->mu);
  state->cv.wait(lock, [&] { return state->done == state->count; });
  if (!state->error.empty()) throw std::runtime_error(state->error);
}

uint16_t ToBf16(float f) {  // Round to nearest even.
  if (std::isnan(f)) return 0x7FC0;
  uint32_t u;
  std::memcpy(&u, &f, 4);
  u += 0x7FFF + ((u >> 16) & 1);
  return uint16_t(u >> 16);
}

ffi::Error Fail(const std::string& msg) {
  return ffi::Error::InvalidArgument("avjax onednn conv: " + msg);
}

// Leading (vmap) dims of a buffer that has `core` trailing dims.
std::vector<int64_t> Lead(ffi::AnyBuffer::Dimensions d, size_t core) {
  return std::vector<int64_t>(d.begin(), d.end() - core);
}

int64_t Prod(const std::vector<int64_t>& v) {
  int64_t r = 1;
  for (auto x : v) r *= x;
  return r;
}

// Offset (in elements of one core block) of leading index `flat` of the
// output's leading shape `out`, in an operand with leading shape `lead`
// (each dim equal or 1: broadcast).
int64_t LeadOffset(int64_t flat, const std::vector<int64_t>& out,
                   const std::vector<int64_t>& lead) {
  int64_t off = 0, stride = 1;
  for (int i = int(out.size()) - 1; i >= 0; --i) {
    int64_t idx = flat % out[i];
    flat /= out[i];
    if (lead[i] != 1) off += idx * stride;
    stride *= lead[i];
  }
  return off;
}

bool AllOnes(const std::vector<int64_t>& v) {
  for (auto x : v)
    if (x != 1) return false;
  return true;
}

// The shared body of the five handlers. `data` is the batched operand whose
// role is src (forward, weight grad) or diff_src (data grad); `grad` is
// dst/diff_dst; `w` the weights. `a`, `b` are the two inputs and `r` the
// result, in the order the pass's FFI signature has them; `bias` (cout,)
// and `relu` are the fused forward's, `dbias` (cout,) the weight gradient's
// second result.
ffi::Error Conv(ffi::ThreadPool* pool, Pass pass, ffi::AnyBuffer a,
                ffi::AnyBuffer b,
                ffi::Result<ffi::AnyBuffer> r, ffi::Span<const int64_t> strides,
                ffi::Span<const int64_t> dilation,
                ffi::Span<const int64_t> pad_lo,
                ffi::Span<const int64_t> pad_hi,
                ffi::AnyBuffer* bias = nullptr, bool relu = false,
                ffi::Result<ffi::AnyBuffer>* dbias = nullptr) {
  const int n = int(strides.size());
  if (n < 1 || n > 3 || dilation.size() != size_t(n) ||
      pad_lo.size() != size_t(n) || pad_hi.size() != size_t(n)) {
    return Fail("strides/dilation/padding need 1-3 entries each");
  }
  const size_t core = n + 2;
  // Map the pass's operands onto (x, w, y) roles.
  ffi::AnyBuffer::Dimensions xd, wd, yd;
  void *xp, *wp, *yp;
  ffi::DataType dt = a.element_type();
  if (b.element_type() != dt || r->element_type() != dt) {
    return Fail("operands and result must share one dtype");
  }
  if (pass == Pass::kForward) {  // (x, w) -> y
    xd = a.dimensions(), wd = b.dimensions(), yd = r->dimensions();
    xp = a.untyped_data(), wp = b.untyped_data(), yp = r->untyped_data();
  } else if (pass == Pass::kBackwardData) {  // (w, dy) -> dx
    wd = a.dimensions(), yd = b.dimensions(), xd = r->dimensions();
    wp = a.untyped_data(), yp = b.untyped_data(), xp = r->untyped_data();
  } else {  // (x, dy) -> dw
    xd = a.dimensions(), yd = b.dimensions(), wd = r->dimensions();
    xp = a.untyped_data(), yp = b.untyped_data(), wp = r->untyped_data();
  }
  if (xd.size() < core || wd.size() != xd.size() || yd.size() != xd.size()) {
    return Fail("operand ranks do not match a " + std::to_string(n) + "D conv");
  }
  Problem p;
  p.pass = pass;
  p.n = n;
  p.bias = bias != nullptr || dbias != nullptr;
  p.relu = relu;
  if (dt == ffi::DataType::F32) {
    p.dtype = memory::data_type::f32;
  } else if (dt == ffi::DataType::BF16) {
    p.dtype = memory::data_type::bf16;
  } else {
    return Fail("only float32 and bfloat16 are supported");
  }
  const size_t L = xd.size() - core;
  auto xlead = Lead(xd, core), wlead = Lead(wd, core), ylead = Lead(yd, core);
  p.batch = xd[L];
  p.cin = xd[xd.size() - 1];
  p.cout = yd[yd.size() - 1];
  for (int i = 0; i < n; ++i) {
    p.in.push_back(xd[L + 1 + i]);
    p.out.push_back(yd[L + 1 + i]);
    p.kernel.push_back(wd[L + i]);
    p.strides.push_back(strides[i]);
    p.dilation.push_back(dilation[i]);
    p.pad_lo.push_back(pad_lo[i]);
    p.pad_hi.push_back(pad_hi[i]);
    if (pad_lo[i] < 0 || pad_hi[i] < 0) return Fail("negative padding");
  }
  if (yd[L] != p.batch || wd[L + n] != p.cin || wd[L + n + 1] != p.cout) {
    return Fail("batch or channel counts do not match");
  }
  std::vector<int64_t> blead(L, 1);
  char* bp = nullptr;
  if (bias) {
    auto bd = bias->dimensions();
    if (bias->element_type() != dt || bd.size() != L + 1 || bd[L] != p.cout) {
      return Fail("the bias must be (cout,) in the operands' dtype");
    }
    blead = Lead(bd, 1);
    bp = static_cast<char*>(bias->untyped_data());
  }
  if (dbias) {
    auto bd = (*dbias)->dimensions();
    if ((*dbias)->element_type() != dt || bd.size() != L + 1 || bd[L] != p.cout ||
        Lead(bd, 1) != wlead) {
      return Fail("the bias gradient must be (cout,) like the weights' lead dims");
    }
    blead = wlead;
    bp = static_cast<char*>((*dbias)->untyped_data());
  }
  // The result's leading dims are the broadcast of the inputs'.
  const auto& rlead = pass == Pass::kForward         ? ylead
                      : pass == Pass::kBackwardData ? xlead
                                                     : wlead;
  const int64_t esize = p.dtype == memory::data_type::f32 ? 4 : 2;
  auto block = [&](ffi::AnyBuffer::Dimensions d) {
    int64_t e = esize;
    for (size_t i = L; i < d.size(); ++i) e *= d[i];
    return e;
  };
  const int64_t xb = block(xd), wb = block(wd), yb = block(yd);
  const int64_t count = Prod(rlead);
  p.wdtype = p.dtype;
  try {
    bool fold = pass != Pass::kBackwardWeights && AllOnes(wlead) &&
                AllOnes(blead) && xlead == rlead && ylead == rlead;
    int64_t leads = count;
    if (fold) {  // Unbatched weights: vmap dims are more batch.
      p.batch *= count;
      leads = 1;
    }
    int64_t sample_macs = p.cin * p.cout;
    for (int i = 0; i < n; ++i) sample_macs *= p.out[i] * p.kernel[i];
    // Chunks of at least g_macs_per_chunk each, at most a few per thread:
    // smaller ones run below oneDNN's speed, and each weight-gradient chunk
    // writes (and we sum) a whole kernel-sized partial, so those get one per
    // thread.
    const int64_t threads = std::max<int64_t>(1, pool ? pool->num_threads() : 1);
    const int64_t cap = pass == Pass::kBackwardWeights ? threads : 4 * threads;
    int64_t chunks = std::min<int64_t>(
        {p.batch, cap, std::max<int64_t>(1, sample_macs * p.batch / g_macs_per_chunk)});
    const int64_t per = (p.batch + chunks - 1) / chunks;
    chunks = (p.batch + per - 1) / per;
    const int64_t jobs = leads * chunks;
    const int64_t x_sample = xb / xd[L], y_sample = yb / yd[L];
    if (jobs == 1) {  // Nothing to split: oneDNN's own OpenMP team, by size.
      omp_set_num_threads(TeamSize(sample_macs * p.batch));
      Run(p, xp, wp, yp, bp);
      return ffi::Error::Success();
    }
    // Weight gradients of several chunks are f32 partials, summed below.
    const bool partials = pass == Pass::kBackwardWeights && chunks > 1;
    const int64_t w_elems = wb / esize;
    std::vector<float> partial(partials ? jobs * w_elems : 0);
    std::vector<float> partial_b(partials && dbias ? jobs * p.cout : 0);
    auto job = [&](int64_t j) {
      omp_set_num_threads(1);  // Parallel over jobs on XLA's threads instead.
      int64_t li = j / chunks, c = j % chunks;
      int64_t lead = fold ? 0 : li;
      Problem q = p;
      q.batch = std::min(per, p.batch - c * per);
      if (partials) q.wdtype = memory::data_type::f32;
      char* x = static_cast<char*>(xp) + LeadOffset(lead, rlead, xlead) * xb +
                c * per * x_sample;
      char* y = static_cast<char*>(yp) + LeadOffset(lead, rlead, ylead) * yb +
                c * per * y_sample;
      char* w = partials ? reinterpret_cast<char*>(partial.data() + j * w_elems)
                         : static_cast<char*>(wp) +
                               LeadOffset(lead, rlead, wlead) * wb;
      char* b = partials && dbias
                    ? reinterpret_cast<char*>(partial_b.data() + j * p.cout)
                : bp ? bp + LeadOffset(lead, rlead, blead) * p.cout * esize
                     : nullptr;
      Run(q, x, w, y, b);
    };
    ParallelFor(pool, jobs, job);
    if (partials) {
      for (int64_t li = 0; li < leads; ++li) {
        const float* src = partial.data() + li * chunks * w_elems;
        char* out = static_cast<char*>(wp) + li * wb;
        for (int64_t e = 0; e < w_elems; ++e) {
          float sum = 0;
          for (int64_t c = 0; c < chunks; ++c) sum += src[c * w_elems + e];
          if (p.dtype == memory::data_type::f32) {
            reinterpret_cast<float*>(out)[e] = sum;
          } else {
            reinterpret_cast<uint16_t*>(out)[e] = ToBf16(sum);
          }
        }
        if (!dbias) continue;
        const float* bsrc = partial_b.data() + li * chunks * p.cout;
        char* bout = bp + li * p.cout * esize;
        for (int64_t e = 0; e < p.cout; ++e) {
          float sum = 0;
          for (int64_t c = 0; c < chunks; ++c) sum += bsrc[c * p.cout + e];
          if (p.dtype == memory::data_type::f32) {
            reinterpret_cast<float*>(bout)[e] = sum;
          } else {
            reinterpret_cast<uint16_t*>(bout)[e] = ToBf16(sum);
          }
        }
      }
    }
  } catch (const std::exception& e) {
    return ffi::Error::Internal(std::string("avjax onednn conv: oneDNN: ") +
                                e.what() + " (" + p.Key() + ")");
  }
  return ffi::Error::Success();
}

ffi::Error Forward(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::AnyBuffer w,
                   ffi::Result<ffi::AnyBuffer> y, ffi::Span<const int64_t> s,
                   ffi::Span<const int64_t> d, ffi::Span<const int64_t> lo,
                   ffi::Span<const int64_t> hi) {
  return Conv(&pool, Pass::kForward, x, w, y, s, d, lo, hi);
}

ffi::Error ForwardBiasAct(ffi::ThreadPool pool, ffi::AnyBuffer x,
                          ffi::AnyBuffer w, ffi::AnyBuffer b,
                          ffi::Result<ffi::AnyBuffer> y,
                          ffi::Span<const int64_t> s,
                          ffi::Span<const int64_t> d,
                          ffi::Span<const int64_t> lo,
                          ffi::Span<const int64_t> hi, int64_t relu) {
  return Conv(&pool, Pass::kForward, x, w, y, s, d, lo, hi, &b, relu != 0);
}

ffi::Error BackwardData(ffi::ThreadPool pool, ffi::AnyBuffer w, ffi::AnyBuffer dy,
                        ffi::Result<ffi::AnyBuffer> dx,
                        ffi::Span<const int64_t> s, ffi::Span<const int64_t> d,
                        ffi::Span<const int64_t> lo,
                        ffi::Span<const int64_t> hi) {
  return Conv(&pool, Pass::kBackwardData, w, dy, dx, s, d, lo, hi);
}

ffi::Error BackwardWeights(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::AnyBuffer dy,
                           ffi::Result<ffi::AnyBuffer> dw,
                           ffi::Span<const int64_t> s,
                           ffi::Span<const int64_t> d,
                           ffi::Span<const int64_t> lo,
                           ffi::Span<const int64_t> hi) {
  return Conv(&pool, Pass::kBackwardWeights, x, dy, dw, s, d, lo, hi);
}

ffi::Error BackwardWeightsBias(ffi::ThreadPool pool, ffi::AnyBuffer x,
                               ffi::AnyBuffer dy,
                               ffi::Result<ffi::AnyBuffer> dw,
                               ffi::Result<ffi::AnyBuffer> db,
                               ffi::Span<const int64_t> s,
                               ffi::Span<const int64_t> d,
                               ffi::Span<const int64_t> lo,
                               ffi::Span<const int64_t> hi) {
  return Conv(&pool, Pass::kBackwardWeights, x, dy, dw, s, d, lo, hi, nullptr,
              false, &db);
}

}  // namespace

#define AVJAX_CONV_BINDING()                        \
  ffi::Ffi::Bind()                                  \
      .Ctx<ffi::ThreadPool>()                       \
      .Arg<ffi::AnyBuffer>()                        \
      .Arg<ffi::AnyBuffer>()                        \
      .Ret<ffi::AnyBuffer>()                        \
      .Attr<ffi::Span<const int64_t>>("strides")    \
      .Attr<ffi::Span<const int64_t>>("dilation")   \
      .Attr<ffi::Span<const int64_t>>("pad_lo")     \
      .Attr<ffi::Span<const int64_t>>("pad_hi")

XLA_FFI_DEFINE_HANDLER_SYMBOL(AvjaxOnednnConvForward, Forward,
                              AVJAX_CONV_BINDING());
XLA_FFI_DEFINE_HANDLER_SYMBOL(AvjaxOnednnConvForwardBiasAct, ForwardBiasAct,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<ffi::Span<const int64_t>>("strides")
                                  .Attr<ffi::Span<const int64_t>>("dilation")
                                  .Attr<ffi::Span<const int64_t>>("pad_lo")
                                  .Attr<ffi::Span<const int64_t>>("pad_hi")
                                  .Attr<int64_t>("relu"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(AvjaxOnednnConvBackwardData, BackwardData,
                              AVJAX_CONV_BINDING());
XLA_FFI_DEFINE_HANDLER_SYMBOL(AvjaxOnednnConvBackwardWeights, BackwardWeights,
                              AVJAX_CONV_BINDING());
XLA_FFI_DEFINE_HANDLER_SYMBOL(AvjaxOnednnConvBackwardWeightsBias,
                              BackwardWeightsBias,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<ffi::Span<const int64_t>>("strides")
                                  .Attr<ffi::Span<const int64_t>>("dilation")
                                  .Attr<ffi::Span<const int64_t>>("pad_lo")
                                  .Attr<ffi::Span<const int64_t>>("pad_hi"));

#define AVJAX_EXPORT __attribute__((visibility("default")))

extern "C" {

// OpenMP team size for later calls; 0: sized by each problem again.
AVJAX_EXPORT void avjax_onednn_set_threads(int n) { g_threads = n < 0 ? 0 : n; }

// MACs per job when splitting a call over its batch; <= 0 restores 2^22.
AVJAX_EXPORT void avjax_onednn_set_chunk_macs(int64_t macs) {
  g_macs_per_chunk = macs > 0 ? macs : int64_t(1) << 22;
}

// oneDNN's runtime version, e.g. 30200 for 3.2.0; a cheap load check.
AVJAX_EXPORT int avjax_onednn_version() {
  const dnnl_version_t* v = dnnl_version();
  return v->major * 10000 + v->minor * 100 + v->patch;
}

// The implementation oneDNN picked for a problem (benchmarks print it), or
// "" on error. pass: 0 forward, 1 data grad, 2 weight grad. dims: batch, cin,
// cout, then n values each of in, kernel, out, strides, dilation, pad_lo,
// pad_hi. Writes at most `cap` bytes into `buf`.
AVJAX_EXPORT int avjax_onednn_impl(int pass, int bf16, int n, const int64_t* dims,
                      char* buf, int cap) {
  Problem p;
  p.pass = Pass(pass);
  p.dtype = bf16 ? memory::data_type::bf16 : memory::data_type::f32;
  p.wdtype = p.dtype;
  p.n = n;
  p.batch = dims[0], p.cin = dims[1], p.cout = dims[2];
  const int64_t* d = dims + 3;
  for (Dims* v : {&p.in, &p.kernel, &p.out, &p.strides, &p.dilation,
                  &p.pad_lo, &p.pad_hi}) {
    v->assign(d, d + n);
    d += n;
  }
  std::string impl;
  try {
    impl = GetPlan(p).impl;
  } catch (const dnnl::error&) {
    return -1;
  }
  std::snprintf(buf, cap, "%s", impl.c_str());
  return int(impl.size());
}

}  // extern "C"
