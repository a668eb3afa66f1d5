// The LIF neuron's two time loops on the CPU, as XLA FFI handlers (plif_jax.ops.lif_native).
//
// Same numerics as plif_jax.ops.lif_loop's XLA loops, compiled for the host with
// -ffp-contract=fast as XLA:CPU contracts a*b+c: the same spikes, gradients equal up to where
// XLA fuses an FMA, which depends on the program around the loop (tests/core/test_lif_native.py). The gain over XLA's loops is the layout of the work: one pass
// over each [T, n] tensor, the time loop inside a chunk of neurons (the chunk's state stays in L1),
// every neuron's chunk on one of the machine's cores. XLA:CPU runs each time step as 3 kernels on
// one core and copies H[t-1] and X[t] to temporaries first (docs/explanation/performance.md).
//
// Forward (t = 0 .. T-1; V[-1] = v0):
//   H[t] = V[t-1] + (X[t] - (V[t-1] - V_reset)) * k;  V[t] = H[t] - V_th >= 0 ? V_reset : H[t]
// (the spikes S[t] = H[t] - V_th >= 0 are left to XLA, which fuses them into their consumer)
// Backward (t = T-1 .. 0; ATan surrogate, dS/dz = alpha / (2 (1 + (pi/2 alpha z)^2)), z = H - V_th):
//   dL/dV[t] = dL/dv_final (t = T-1), else (1 - k) gH[t+1]
//   dL/dS[t] += dL/dV[t] (V_reset - H[t])                 (without detach_reset)
//   gH[t] = dL/dS[t] dS/dz + (S[t] ? 0 : dL/dV[t]);   dL/dX[t] = k gH[t]
//   acc_k += gH[t] (H[t] - V[t-1]);   acc_alpha += dL/dS[t] dS/dalpha   (per neuron)
// and gh0 = gH[0]. Paper: Fang et al., ICCV 2021, eqs. 4-7 and 12-16.

#include <algorithm>
#include <cstdint>
#include <thread>
#include <vector>

#include <sched.h>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kChunk = 4096;          // neurons per chunk: its state (3 x 16 KB) stays in L1
constexpr int64_t kMinPerThread = 1 << 17;  // elements ([T, chunk]) worth a thread of their own

int64_t Cores() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
  return std::max(1u, std::thread::hardware_concurrency());
}

// f(lo, hi) for every chunk [lo, hi) of [0, n), the chunks dealt round-robin to the threads.
template <typename F>
void ForChunks(int64_t T, int64_t n, F f) {
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  const int64_t threads =
      std::max<int64_t>(1, std::min({Cores(), chunks, (T * n) / kMinPerThread}));
  auto worker = [&](int64_t w) {
    for (int64_t c = w; c < chunks; c += threads) f(c * kChunk, std::min(n, (c + 1) * kChunk));
  };
  std::vector<std::thread> pool;
  for (int64_t w = 1; w < threads; ++w) pool.emplace_back(worker, w);
  worker(0);
  for (auto& t : pool) t.join();
}

// xh: X on entry, H on return (XLA aliases the two): step t reads X[t] and writes H[t].
void ForwardChunk(int64_t T, int64_t n, int64_t lo, int64_t hi, float* __restrict xh,
                  const float* __restrict v0, const float k, const float v_th,
                  const float v_reset) {
  float v[kChunk];
  const int64_t m = hi - lo;
  for (int64_t i = 0; i < m; ++i) v[i] = v0[lo + i];
  for (int64_t t = 0; t < T; ++t) {
    float* __restrict ht = xh + t * n + lo;
    for (int64_t i = 0; i < m; ++i) {
      const float vi = v[i];
      const float hv = vi + (ht[i] - (vi - v_reset)) * k;
      ht[i] = hv;
      v[i] = hv - v_th >= 0.0f ? v_reset : hv;
    }
  }
}

struct BackwardConsts {
  float k, one_minus_k, alpha, half_pi_alpha, v_th, v_reset;
};

// One step back in time over a chunk's m neurons (kFirst: t = 0; kLast: t = T-1).
// g: dL/dS[t] on entry, dL/dX[t] on return (XLA aliases the two).
template <bool kFirst, bool kLast, bool kDetach>
void BackwardRow(int64_t m, const float* __restrict ht, const float* __restrict hp,
                 const float* __restrict v0, const float* __restrict gv_final,
                 float* __restrict g_t, float* __restrict gh,
                 float* __restrict acc_k, float* __restrict acc_alpha, const BackwardConsts c) {
  for (int64_t i = 0; i < m; ++i) {
    const float h = ht[i];
    const float q = hp[i];
    const float v_prev = kFirst ? v0[i] : (q - c.v_th >= 0.0f ? c.v_reset : q);
    const float gv = kLast ? gv_final[i] : c.one_minus_k * gh[i];
    const float z = h - c.v_th;
    float gs = g_t[i];
    if (!kDetach) gs = gs + gv * (c.v_reset - h);
    const float y = c.half_pi_alpha * z;
    const float denom = 2.0f * (1.0f + y * y);
    const float g = gs * (c.alpha / denom) + (z >= 0.0f ? 0.0f : gv);
    acc_k[i] = acc_k[i] + g * (h - v_prev);
    acc_alpha[i] = acc_alpha[i] + gs * (z / denom);
    g_t[i] = g * c.k;
    gh[i] = g;
  }
}

template <bool kDetach>
void BackwardChunk(int64_t T, int64_t n, int64_t lo, int64_t hi, float* g, const float* h,
                   const float* v0, const float* gv_final, float* gh0, float* acc_k_out,
                   float* acc_alpha_out, const BackwardConsts c) {
  float gh[kChunk], acc_k[kChunk], acc_alpha[kChunk];
  const int64_t m = hi - lo;
  std::fill(gh, gh + m, 0.0f);
  std::fill(acc_k, acc_k + m, 0.0f);
  std::fill(acc_alpha, acc_alpha + m, 0.0f);
  for (int64_t t = T - 1; t >= 0; --t) {
    const float* ht = h + t * n + lo;
    const float* hp = h + (t > 0 ? t - 1 : 0) * n + lo;
    float* g_t = g + t * n + lo;
#define PLIF_ROW(FIRST, LAST) \
  BackwardRow<FIRST, LAST, kDetach>(m, ht, hp, v0 + lo, gv_final + lo, g_t, gh, acc_k, acc_alpha, c)
    if (t == 0 && t == T - 1) PLIF_ROW(true, true);
    else if (t == T - 1) PLIF_ROW(false, true);
    else if (t == 0) PLIF_ROW(true, false);
    else PLIF_ROW(false, false);
#undef PLIF_ROW
  }
  std::copy(gh, gh + m, gh0 + lo);
  std::copy(acc_k, acc_k + m, acc_k_out + lo);
  std::copy(acc_alpha, acc_alpha + m, acc_alpha_out + lo);
}

ffi::Error Forward(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> v0,
                   ffi::Buffer<ffi::F32> decay, float v_threshold, float v_reset,
                   ffi::ResultBuffer<ffi::F32> h) {
  const int64_t T = x.dimensions()[0];
  const int64_t n = T == 0 ? 0 : x.element_count() / T;
  if (v0.element_count() != n || decay.element_count() != 1)
    return ffi::Error::InvalidArgument("plif_lif_forward: v0 must be x[0]'s shape, decay a scalar");
  if (h->typed_data() != x.typed_data())
    return ffi::Error::InvalidArgument("plif_lif_forward: H must be aliased to x");
  const float k = decay.typed_data()[0];
  ForChunks(T, n, [&](int64_t lo, int64_t hi) {
    ForwardChunk(T, n, lo, hi, h->typed_data(), v0.typed_data(), k, v_threshold, v_reset);
  });
  return ffi::Error::Success();
}

ffi::Error Backward(ffi::Buffer<ffi::F32> gs, ffi::Buffer<ffi::F32> h, ffi::Buffer<ffi::F32> v0,
                    ffi::Buffer<ffi::F32> decay, ffi::Buffer<ffi::F32> alpha,
                    ffi::Buffer<ffi::F32> gv_final, float v_threshold, float v_reset,
                    bool detach_reset, ffi::ResultBuffer<ffi::F32> gx,
                    ffi::ResultBuffer<ffi::F32> gh0, ffi::ResultBuffer<ffi::F32> acc_k,
                    ffi::ResultBuffer<ffi::F32> acc_alpha) {
  const int64_t T = h.dimensions()[0];
  const int64_t n = T == 0 ? 0 : h.element_count() / T;
  if (v0.element_count() != n || gv_final.element_count() != n || decay.element_count() != 1 ||
      alpha.element_count() != 1)
    return ffi::Error::InvalidArgument("plif_lif_backward: operand shapes do not match");
  if (gx->typed_data() != gs.typed_data())
    return ffi::Error::InvalidArgument("plif_lif_backward: dL/dX must be aliased to dL/dS");
  const float k = decay.typed_data()[0];
  const float a = alpha.typed_data()[0];
  // (pi / 2) as float32 times alpha, as `(math.pi / 2.0) * alpha` in JAX.
  const BackwardConsts c{k, 1.0f - k, a, static_cast<float>(1.5707963267948966) * a,
                         v_threshold, v_reset};
  ForChunks(T, n, [&](int64_t lo, int64_t hi) {
    auto run = [&](auto chunk) {
      chunk(T, n, lo, hi, gx->typed_data(), h.typed_data(), v0.typed_data(),
            gv_final.typed_data(), gh0->typed_data(), acc_k->typed_data(),
            acc_alpha->typed_data(), c);
    };
    if (detach_reset) run(BackwardChunk<true>);
    else run(BackwardChunk<false>);
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(PlifLifForward, Forward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x [T, ...]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // v0 [...]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // decay k = 1/tau, scalar
                                  .Attr<float>("v_threshold")
                                  .Attr<float>("v_reset")
                                  .Ret<ffi::Buffer<ffi::F32>>());  // H [T, ...] (over x)

XLA_FFI_DEFINE_HANDLER_SYMBOL(PlifLifBackward, Backward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // dL/dS [T, ...]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // H [T, ...]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // v0 [...]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // decay, scalar
                                  .Arg<ffi::Buffer<ffi::F32>>()  // surrogate alpha, scalar
                                  .Arg<ffi::Buffer<ffi::F32>>()  // dL/dv_final [...]
                                  .Attr<float>("v_threshold")
                                  .Attr<float>("v_reset")
                                  .Attr<bool>("detach_reset")
                                  .Ret<ffi::Buffer<ffi::F32>>()   // dL/dX [T, ...]
                                  .Ret<ffi::Buffer<ffi::F32>>()   // gH[0] [...]
                                  .Ret<ffi::Buffer<ffi::F32>>()   // sum_t dL/dk terms [...]
                                  .Ret<ffi::Buffer<ffi::F32>>());  // sum_t dL/dalpha terms [...]
