// The Reduce ops and argmax: one task per block of outputs, each output's reduced elements visited
// in row-major order.
#include "kernels/reduce.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <numeric>
#include <type_traits>
#include <vector>

#include "kernels/parallel.h"

namespace qforge::kernels {
namespace {

constexpr int64_t kTaskElements = 1 << 14;

// The merged axes of a ReducePlan split into the kept ones (an output's position) and the
// reduced ones (the elements it reads), with their strides in x.
struct ReduceWalk {
  int kept = 0;
  int reduced = 0;
  std::array<int64_t, kMaxReduceRank> kept_dims{};
  std::array<int64_t, kMaxReduceRank> kept_strides{};
  std::array<int64_t, kMaxReduceRank> reduced_dims{};
  std::array<int64_t, kMaxReduceRank> reduced_strides{};
  int64_t outputs = 1;
  int64_t per_output = 1;
};

ReduceWalk walk_of(const ReducePlan& plan) {
  ReduceWalk w;
  std::array<int64_t, kMaxReduceRank> stride{};
  int64_t s = 1;
  for (int a = plan.rank - 1; a >= 0; --a) {
    stride[a] = s;
    s *= plan.dims[a];
  }
  for (int a = 0; a < plan.rank; ++a) {
    if (plan.reduced[a]) {
      w.reduced_dims[w.reduced] = plan.dims[a];
      w.reduced_strides[w.reduced++] = stride[a];
      w.per_output *= plan.dims[a];
    } else {
      w.kept_dims[w.kept] = plan.dims[a];
      w.kept_strides[w.kept++] = stride[a];
      w.outputs *= plan.dims[a];
    }
  }
  return w;
}

// x's offset of the first element output `o` reads.
int64_t base_offset(const ReduceWalk& w, int64_t o) {
  int64_t base = 0;
  for (int a = w.kept - 1; a >= 0; --a) {
    base += (o % w.kept_dims[a]) * w.kept_strides[a];
    o /= w.kept_dims[a];
  }
  return base;
}

// Calls fn(offset) for each element output `o` reads, in row-major order of the reduced axes.
template <class Fn>
void for_each_reduced(const ReduceWalk& w, int64_t o, Fn&& fn) {
  const int64_t base = base_offset(w, o);
  if (w.reduced == 0) {
    fn(base);
    return;
  }
  const int last = w.reduced - 1;
  const int64_t run = w.reduced_dims[last];
  const int64_t step = w.reduced_strides[last];
  std::array<int64_t, kMaxReduceRank> index{};
  int64_t row = base;
  for (int64_t done = 0; done < w.per_output; done += run) {
    for (int64_t j = 0; j < run; ++j) fn(row + j * step);
    for (int a = last - 1; a >= 0; --a) {
      ++index[a];
      row += w.reduced_strides[a];
      if (index[a] < w.reduced_dims[a]) break;
      row -= index[a] * w.reduced_strides[a];
      index[a] = 0;
    }
  }
}

int64_t output_grain(const ReduceWalk& w) {
  return std::max<int64_t>(1, kTaskElements / std::max<int64_t>(1, w.per_output));
}

// y[o] = finish(the fold of step over output o's reduced values from init, in init's type), in
// row-major order.
template <class T, class A, class Step, class Finish>
void fold_reduced(const ReducePlan& plan, const T* x, T* y, A init, Step step, Finish finish) {
  const ReduceWalk w = walk_of(plan);
  parallel_for(w.outputs, output_grain(w), [&](int64_t begin, int64_t end) {
    for (int64_t o = begin; o < end; ++o) {
      A acc = init;
      for_each_reduced(w, o, [&](int64_t i) { acc = step(acc, x[i]); });
      y[o] = finish(acc);
    }
  });
}

// dx[i] = grad(i, o) for each element i that output o reads, where prepare(o) returns what
// grad needs of output o (a scale, a sum), computed once per output.
template <class Prepare, class Grad>
void spread_gradient(const ReducePlan& plan, float* dx, GradMode write, Prepare prepare,
                     Grad grad) {
  const ReduceWalk w = walk_of(plan);
  parallel_for(w.outputs, output_grain(w), [&](int64_t begin, int64_t end) {
    for (int64_t o = begin; o < end; ++o) {
      const auto per_output = prepare(w, o);
      for_each_reduced(w, o, [&](int64_t i) { store_gradient(dx[i], grad(i, per_output), write); });
    }
  });
}

float identity(float v) {
  return v;
}

// The max (or the min) of the reduced values; NaN as soon as one is NaN.
template <bool kMax>
float extremum_step(float best, float v) {
  if (std::isnan(best)) return best;
  if (std::isnan(v)) return v;
  return (kMax ? v > best : v < best) ? v : best;
}

}  // namespace

void reduce_sum(const ReducePlan& plan, const float* x, float* y) {
  fold_reduced(
      plan, x, y, 0.0f, [](float a, float v) { return a + v; }, identity);
}

namespace {

// The type a running sum adds in: integers as unsigned, which wraps where the signed sum would
// overflow.
template <typename T, bool = std::is_integral_v<T>>
struct SumOf {
  using type = T;
};
template <typename T>
struct SumOf<T, true> {
  using type = std::make_unsigned_t<T>;
};

}  // namespace

template <typename T>
void cumulative_sum(const T* x, int64_t outer, int64_t n, int64_t inner, bool exclusive,
                    bool reverse, T* y) {
  using Sum = typename SumOf<T>::type;
  // One task per [n, inner] block; within it row after row, each row the previous one's sums
  // plus one row of x (vectorised along inner).
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, n * inner));
  parallel_for(outer, grain, [&](int64_t begin, int64_t end) {
    for (int64_t o = begin; o < end; ++o) {
      const T* xo = x + o * n * inner;
      T* yo = y + o * n * inner;
      for (int64_t step = 0; step < n; ++step) {
        const int64_t i = reverse ? n - 1 - step : step;
        T* row = yo + i * inner;
        if (step == 0) {
          for (int64_t k = 0; k < inner; ++k) row[k] = exclusive ? T{0} : xo[i * inner + k];
          continue;
        }
        const int64_t before = reverse ? i + 1 : i - 1;
        const T* previous = yo + before * inner;
        // The x row this position adds: its own, or with `exclusive` the one before it.
        const T* add = xo + (exclusive ? before : i) * inner;
        for (int64_t k = 0; k < inner; ++k) {
          row[k] = static_cast<T>(static_cast<Sum>(previous[k]) + static_cast<Sum>(add[k]));
        }
      }
    }
  });
}

template void cumulative_sum<float>(const float*, int64_t, int64_t, int64_t, bool, bool, float*);
template void cumulative_sum<int32_t>(const int32_t*, int64_t, int64_t, int64_t, bool, bool,
                                      int32_t*);
template void cumulative_sum<int64_t>(const int64_t*, int64_t, int64_t, int64_t, bool, bool,
                                      int64_t*);

void cumulative_sum_backward(const float* dy, int64_t outer, int64_t n, int64_t inner,
                             bool exclusive, bool reverse, float* dx) {
  cumulative_sum(dy, outer, n, inner, exclusive, !reverse, dx);
}

void reduce_max(const ReducePlan& plan, const float* x, float* y) {
  fold_reduced(plan, x, y, -std::numeric_limits<float>::infinity(), extremum_step<true>, identity);
}

void reduce_min(const ReducePlan& plan, const float* x, float* y) {
  fold_reduced(plan, x, y, std::numeric_limits<float>::infinity(), extremum_step<false>, identity);
}

template <class T, bool kMax>
void integer_extremum(const ReducePlan& plan, const T* x, T* y) {
  fold_reduced(
      plan, x, y, kMax ? std::numeric_limits<T>::lowest() : std::numeric_limits<T>::max(),
      [](T best, T v) { return kMax ? std::max(best, v) : std::min(best, v); },
      [](T v) { return v; });
}

void reduce_max(const ReducePlan& plan, const int64_t* x, int64_t* y) {
  integer_extremum<int64_t, true>(plan, x, y);
}

void reduce_min(const ReducePlan& plan, const int64_t* x, int64_t* y) {
  integer_extremum<int64_t, false>(plan, x, y);
}

void reduce_max(const ReducePlan& plan, const int32_t* x, int32_t* y) {
  integer_extremum<int32_t, true>(plan, x, y);
}

void reduce_min(const ReducePlan& plan, const int32_t* x, int32_t* y) {
  integer_extremum<int32_t, false>(plan, x, y);
}

// Integer sums and products, exact in 128 bits (a product past them held at the bound of its
// sign) and saturated to the type's range at the end, as ONNX Runtime gives them (measured: the
// int32 product of 100000, 100000 and -1 is -2147483648, not the -2147483647 of saturating at each
// step; int64 sums past 2^63 - 1 give 2^63 - 1).
__extension__ using Int128 = __int128;

template <class T, class Term>
void integer_fold(const ReducePlan& plan, const T* x, T* y, bool product, Term term) {
  constexpr Int128 kMax = ~(Int128{1} << 127);
  fold_reduced(
      plan, x, y, product ? Int128{1} : Int128{0},
      [&](Int128 acc, T v) {
        const Int128 t = term(static_cast<Int128>(v));
        Int128 out;
        if (product ? __builtin_mul_overflow(acc, t, &out) : __builtin_add_overflow(acc, t, &out)) {
          const bool negative = product ? (acc < 0) != (t < 0) : t < 0;
          return negative ? -kMax - 1 : kMax;
        }
        return out;
      },
      [](Int128 acc) {
        return static_cast<T>(
            std::clamp<Int128>(acc, std::numeric_limits<T>::min(), std::numeric_limits<T>::max()));
      });
}

Int128 absolute(Int128 v) {
  return v < 0 ? -v : v;
}

Int128 square(Int128 v) {
  return v * v;  // |v| < 2^63: no overflow
}

void reduce_sum(const ReducePlan& plan, const int64_t* x, int64_t* y) {
  integer_fold(plan, x, y, false, [](Int128 v) { return v; });
}
void reduce_sum(const ReducePlan& plan, const int32_t* x, int32_t* y) {
  integer_fold(plan, x, y, false, [](Int128 v) { return v; });
}
void reduce_prod(const ReducePlan& plan, const int64_t* x, int64_t* y) {
  integer_fold(plan, x, y, true, [](Int128 v) { return v; });
}
void reduce_prod(const ReducePlan& plan, const int32_t* x, int32_t* y) {
  integer_fold(plan, x, y, true, [](Int128 v) { return v; });
}
void reduce_l1(const ReducePlan& plan, const int64_t* x, int64_t* y) {
  integer_fold(plan, x, y, false, absolute);
}
void reduce_l1(const ReducePlan& plan, const int32_t* x, int32_t* y) {
  integer_fold(plan, x, y, false, absolute);
}
void reduce_sum_square(const ReducePlan& plan, const int64_t* x, int64_t* y) {
  integer_fold(plan, x, y, false, square);
}
void reduce_sum_square(const ReducePlan& plan, const int32_t* x, int32_t* y) {
  integer_fold(plan, x, y, false, square);
}

void reduce_l2(const ReducePlan& plan, const float* x, float* y) {
  fold_reduced(
      plan, x, y, 0.0f, [](float a, float v) { return a + v * v; },
      [](float a) { return std::sqrt(a); });
}

void reduce_l1(const ReducePlan& plan, const float* x, float* y) {
  fold_reduced(
      plan, x, y, 0.0f, [](float a, float v) { return a + std::abs(v); }, identity);
}

void reduce_sum_square(const ReducePlan& plan, const float* x, float* y) {
  fold_reduced(
      plan, x, y, 0.0f, [](float a, float v) { return a + v * v; }, identity);
}

void reduce_prod(const ReducePlan& plan, const float* x, float* y) {
  fold_reduced(
      plan, x, y, 1.0f, [](float a, float v) { return a * v; }, identity);
}

void reduce_log_sum(const ReducePlan& plan, const float* x, float* y) {
  fold_reduced(
      plan, x, y, 0.0f, [](float a, float v) { return a + v; },
      [](float a) { return std::log(a); });
}

void reduce_log_sum_exp(const ReducePlan& plan, const float* x, float* y) {
  const ReduceWalk w = walk_of(plan);
  parallel_for(w.outputs, output_grain(w), [&](int64_t begin, int64_t end) {
    for (int64_t o = begin; o < end; ++o) {
      float m = -std::numeric_limits<float>::infinity();
      for_each_reduced(w, o, [&](int64_t i) { m = extremum_step<true>(m, x[i]); });
      if (!std::isfinite(m)) {
        y[o] = m;  // all -inf (or none): -inf; a +inf: +inf; a NaN: NaN
        continue;
      }
      float sum = 0.0f;
      for_each_reduced(w, o, [&](int64_t i) { sum += std::exp(x[i] - m); });
      y[o] = m + std::log(sum);
    }
  });
}

void reduce_sum_backward(const ReducePlan& plan, const float* dy, float* dx, GradMode write) {
  spread_gradient(
      plan, dx, write, [&](const ReduceWalk&, int64_t o) { return dy[o]; },
      [](int64_t, float g) { return g; });
}

void reduce_max_backward(const ReducePlan& plan, const float* x, const float* y, const float* dy,
                         float* dx, GradMode write) {
  struct Share {
    float extremum, share;
  };
  spread_gradient(
      plan, dx, write,
      [&](const ReduceWalk& w, int64_t o) {
        int64_t ties = 0;
        for_each_reduced(w, o, [&](int64_t i) { ties += x[i] == y[o]; });
        return Share{y[o], ties > 0 ? dy[o] / static_cast<float>(ties) : 0.0f};
      },
      [&](int64_t i, Share s) { return x[i] == s.extremum ? s.share : 0.0f; });
}

void reduce_l2_backward(const ReducePlan& plan, const float* x, const float* y, const float* dy,
                        float* dx, GradMode write) {
  spread_gradient(
      plan, dx, write,
      [&](const ReduceWalk&, int64_t o) { return y[o] == 0.0f ? 0.0f : dy[o] / y[o]; },
      [&](int64_t i, float scale) { return x[i] * scale; });
}

void reduce_l1_backward(const ReducePlan& plan, const float* x, const float* dy, float* dx,
                        GradMode write) {
  spread_gradient(
      plan, dx, write, [&](const ReduceWalk&, int64_t o) { return dy[o]; },
      [&](int64_t i, float g) { return x[i] > 0.0f   ? g
                                       : x[i] < 0.0f ? -g
                                                     : 0.0f; });
}

void reduce_sum_square_backward(const ReducePlan& plan, const float* x, const float* dy, float* dx,
                                GradMode write) {
  spread_gradient(
      plan, dx, write, [&](const ReduceWalk&, int64_t o) { return 2.0f * dy[o]; },
      [&](int64_t i, float g) { return x[i] * g; });
}

void reduce_prod_backward(const ReducePlan& plan, const float* x, const float* y, const float* dy,
                          float* dx, GradMode write) {
  // Per output: how many reduced values are 0, and with exactly one, the product of the others
  // (in the forward's order, that one skipped).
  struct Zeros {
    int64_t count;
    float others;  // the product of the nonzero values where count is 1
    float g, y;
  };
  spread_gradient(
      plan, dx, write,
      [&](const ReduceWalk& w, int64_t o) {
        Zeros z{0, 1.0f, dy[o], y[o]};
        for_each_reduced(w, o, [&](int64_t i) {
          if (x[i] == 0.0f) {
            ++z.count;
          } else {
            z.others *= x[i];
          }
        });
        return z;
      },
      [&](int64_t i, const Zeros& z) {
        if (z.count == 0) return z.g * z.y / x[i];
        return z.count == 1 && x[i] == 0.0f ? z.g * z.others : 0.0f;
      });
}

void reduce_log_sum_backward(const ReducePlan& plan, const float* x, const float* dy, float* dx,
                             GradMode write) {
  spread_gradient(
      plan, dx, write,
      [&](const ReduceWalk& w, int64_t o) {
        float sum = 0.0f;
        for_each_reduced(w, o, [&](int64_t i) { sum += x[i]; });
        return dy[o] / sum;
      },
      [](int64_t, float g) { return g; });
}

void reduce_log_sum_exp_backward(const ReducePlan& plan, const float* x, const float* y,
                                 const float* dy, float* dx, GradMode write) {
  struct Out {
    float y, g;
  };
  spread_gradient(
      plan, dx, write,
      [&](const ReduceWalk&, int64_t o) {
        return Out{y[o], dy[o]};
      },
      [&](int64_t i, Out out) { return out.g * std::exp(x[i] - out.y); });
}

namespace {

template <bool kMax, typename T>
void arg_extremum(const T* x, int64_t outer, int64_t axis_dim, int64_t inner, bool select_last,
                  int64_t* y) {
  // Only a float can be NaN; the test folds away for integers.
  auto is_nan = [](T v) { return v != v; };
  auto beyond = [](T v, T best) { return kMax ? v > best : v < best; };
  const int64_t grain = std::max<int64_t>(1, kTaskElements / std::max<int64_t>(1, axis_dim));
  parallel_for(outer * inner, grain, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t o = t / inner;
      const int64_t i = t % inner;
      const T* xr = x + o * axis_dim * inner + i;
      int64_t at = 0;
      T best = xr[0];
      for (int64_t k = 1; k < axis_dim; ++k) {
        const T v = xr[k * inner];
        if (is_nan(best) && !select_last) break;
        const bool better = select_last ? (beyond(v, best) || v == best || is_nan(v))
                                        : (beyond(v, best) || is_nan(v));
        if (better) {
          best = v;
          at = k;
        }
      }
      y[t] = at;
    }
  });
}

}  // namespace

template <typename T>
void arg_max(const T* x, int64_t outer, int64_t axis_dim, int64_t inner, bool select_last,
             int64_t* y) {
  arg_extremum<true>(x, outer, axis_dim, inner, select_last, y);
}

template <typename T>
void arg_min(const T* x, int64_t outer, int64_t axis_dim, int64_t inner, bool select_last,
             int64_t* y) {
  arg_extremum<false>(x, outer, axis_dim, inner, select_last, y);
}

void top_k(const float* x, int64_t outer, int64_t n, int64_t inner, int64_t k, bool largest,
           float* values, int64_t* indices) {
  if (outer * inner * k == 0) return;
  const int64_t grain = std::max<int64_t>(1, kTaskElements / std::max<int64_t>(1, n));
  parallel_for(outer * inner, grain, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> order(static_cast<size_t>(n));  // one per task, reused by its rows
    for (int64_t t = begin; t < end; ++t) {
      const int64_t o = t / inner;
      const int64_t i = t % inner;
      const float* xr = x + o * n * inner + i;
      // A strict total order: NaN beyond every number, then the value, then the index.
      auto before = [&](int64_t a, int64_t b) {
        const float va = xr[a * inner], vb = xr[b * inner];
        const bool na = std::isnan(va), nb = std::isnan(vb);
        if (na != nb) return largest ? na : nb;
        if (!na && va != vb) return largest ? va > vb : va < vb;
        return a < b;
      };
      std::iota(order.begin(), order.end(), int64_t{0});
      std::partial_sort(order.begin(), order.begin() + k, order.end(), before);
      for (int64_t j = 0; j < k; ++j) {
        const int64_t at = order[static_cast<size_t>(j)];
        values[(o * k + j) * inner + i] = xr[at * inner];
        indices[(o * k + j) * inner + i] = at;
      }
    }
  });
}

void top_k_backward(const int64_t* indices, const float* dy, int64_t outer, int64_t n,
                    int64_t inner, int64_t k, float* dx, GradMode write) {
  const int64_t grain = std::max<int64_t>(1, kTaskElements / std::max<int64_t>(1, n * inner));
  parallel_for(outer, grain, [&](int64_t begin, int64_t end) {
    for (int64_t o = begin; o < end; ++o) {
      float* dxo = dx + o * n * inner;
      if (write == GradMode::kOverwrite) std::fill_n(dxo, n * inner, 0.0f);
      for (int64_t j = 0; j < k; ++j) {
        for (int64_t i = 0; i < inner; ++i) {
          const int64_t at = (o * k + j) * inner + i;
          dxo[indices[at] * inner + i] += dy[at];  // each position selected at most once
        }
      }
    }
  });
}

template void arg_max<float>(const float*, int64_t, int64_t, int64_t, bool, int64_t*);
template void arg_max<int32_t>(const int32_t*, int64_t, int64_t, int64_t, bool, int64_t*);
template void arg_max<int64_t>(const int64_t*, int64_t, int64_t, int64_t, bool, int64_t*);
template void arg_min<float>(const float*, int64_t, int64_t, int64_t, bool, int64_t*);
template void arg_min<int32_t>(const int32_t*, int64_t, int64_t, int64_t, bool, int64_t*);
template void arg_min<int64_t>(const int64_t*, int64_t, int64_t, int64_t, bool, int64_t*);

}  // namespace qforge::kernels
