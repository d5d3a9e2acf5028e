// Reference data-movement kernels: every output element located from its coordinates.
#include "kernels/reference/shape_reference.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "kernels/reference/reference_util.h"

namespace qforge::kernels::reference {

Tensor transpose(const Tensor& x, std::span<const int64_t> perm) {
  Shape out_shape(perm.size());
  for (size_t i = 0; i < perm.size(); ++i) out_shape[i] = x.shape()[static_cast<size_t>(perm[i])];
  Tensor y(x.dtype(), out_shape);
  for (int64_t i = 0; i < y.numel(); ++i) {
    const Shape out_index = unravel(i, out_shape);
    Shape in_index(perm.size());
    for (size_t d = 0; d < perm.size(); ++d) in_index[static_cast<size_t>(perm[d])] = out_index[d];
    copy_element(x, ravel(in_index, x.shape()), y, i);
  }
  return y;
}

Tensor slice(const Tensor& x, std::span<const int64_t> starts, std::span<const int64_t> ends,
             std::span<const int64_t> axes, std::span<const int64_t> steps) {
  const int64_t rank = x.rank();
  // Per axis, the list of input indices the slice selects, in order.
  std::vector<std::vector<int64_t>> picks(static_cast<size_t>(rank));
  for (int64_t d = 0; d < rank; ++d) {
    for (int64_t i = 0; i < x.shape()[static_cast<size_t>(d)]; ++i)
      picks[static_cast<size_t>(d)].push_back(i);
  }
  for (size_t k = 0; k < starts.size(); ++k) {
    int64_t axis = axes.empty() ? static_cast<int64_t>(k) : axes[k];
    if (axis < 0) axis += rank;
    const int64_t dim = x.shape()[static_cast<size_t>(axis)];
    const int64_t step = steps.empty() ? 1 : steps[k];
    // Work in a wide type: starts and ends may be the int64 extremes.
    auto resolve = [&](int64_t v) {
      long double w = static_cast<long double>(v);
      if (w < 0) w += dim;
      return w;
    };
    long double s = resolve(starts[k]);
    long double e = resolve(ends[k]);
    std::vector<int64_t> chosen;
    if (step > 0) {
      s = std::clamp<long double>(s, 0, dim);
      e = std::clamp<long double>(e, 0, dim);
      for (long double i = s; i < e; i += step) chosen.push_back(static_cast<int64_t>(i));
    } else {
      s = std::clamp<long double>(s, 0, dim - 1);
      e = std::clamp<long double>(e, -1, dim - 1);
      for (long double i = s; i > e; i += step) chosen.push_back(static_cast<int64_t>(i));
    }
    picks[static_cast<size_t>(axis)] = chosen;
  }
  Shape out_shape;
  for (const auto& p : picks) out_shape.push_back(static_cast<int64_t>(p.size()));
  Tensor y(x.dtype(), out_shape);
  for (int64_t i = 0; i < y.numel(); ++i) {
    Shape index = unravel(i, out_shape);
    for (size_t d = 0; d < index.size(); ++d) index[d] = picks[d][static_cast<size_t>(index[d])];
    copy_element(x, ravel(index, x.shape()), y, i);
  }
  return y;
}

Tensor concat(std::span<const Tensor> inputs, int64_t axis) {
  const int64_t rank = inputs.front().rank();
  if (axis < 0) axis += rank;
  Shape out_shape = inputs.front().shape();
  out_shape[static_cast<size_t>(axis)] = 0;
  for (const Tensor& t : inputs)
    out_shape[static_cast<size_t>(axis)] += t.shape()[static_cast<size_t>(axis)];
  Tensor y(inputs.front().dtype(), out_shape);
  for (int64_t i = 0; i < y.numel(); ++i) {
    Shape index = unravel(i, out_shape);
    int64_t along = index[static_cast<size_t>(axis)];
    for (const Tensor& t : inputs) {
      const int64_t size = t.shape()[static_cast<size_t>(axis)];
      if (along < size) {
        index[static_cast<size_t>(axis)] = along;
        copy_element(t, ravel(index, t.shape()), y, i);
        break;
      }
      along -= size;
    }
  }
  return y;
}

std::vector<Tensor> split(const Tensor& x, std::span<const int64_t> sizes, int64_t axis) {
  if (axis < 0) axis += x.rank();
  const auto ax = static_cast<size_t>(axis);
  std::vector<Tensor> outputs;
  int64_t start = 0;
  for (int64_t size : sizes) {
    Shape shape = x.shape();
    shape[ax] = size;
    Tensor y(x.dtype(), shape);
    for (int64_t i = 0; i < y.numel(); ++i) {
      Shape index = unravel(i, shape);
      index[ax] += start;
      copy_element(x, ravel(index, x.shape()), y, i);
    }
    outputs.push_back(y);
    start += size;
  }
  return outputs;
}

Tensor gather(const Tensor& data, const Tensor& indices, int64_t axis) {
  const int64_t rank = data.rank();
  if (axis < 0) axis += rank;
  const auto ax = static_cast<size_t>(axis);
  Shape out_shape(data.shape().begin(), data.shape().begin() + axis);
  out_shape.insert(out_shape.end(), indices.shape().begin(), indices.shape().end());
  out_shape.insert(out_shape.end(), data.shape().begin() + axis + 1, data.shape().end());
  Tensor y(data.dtype(), out_shape);
  const size_t q = indices.shape().size();
  for (int64_t i = 0; i < y.numel(); ++i) {
    const Shape out_index = unravel(i, out_shape);
    Shape idx_index(out_index.begin() + axis, out_index.begin() + axis + static_cast<int64_t>(q));
    int64_t v = get_int(indices, ravel(idx_index, indices.shape()));
    if (v < 0) v += data.shape()[ax];
    Shape in_index(out_index.begin(), out_index.begin() + axis);
    in_index.push_back(v);
    in_index.insert(in_index.end(), out_index.begin() + axis + static_cast<int64_t>(q),
                    out_index.end());
    copy_element(data, ravel(in_index, data.shape()), y, i);
  }
  return y;
}

Tensor gather_elements(const Tensor& data, const Tensor& indices, int64_t axis) {
  if (axis < 0) axis += data.rank();
  const auto ax = static_cast<size_t>(axis);
  Tensor y(data.dtype(), indices.shape());
  for (int64_t i = 0; i < y.numel(); ++i) {
    Shape c = unravel(i, indices.shape());
    int64_t v = get_int(indices, i);
    if (v < 0) v += data.shape()[ax];
    c[ax] = v;
    copy_element(data, ravel(c, data.shape()), y, i);
  }
  return y;
}

Tensor gather_nd(const Tensor& data, const Tensor& indices, int64_t batch_dims) {
  const Shape& ds = data.shape();
  const Shape& is = indices.shape();
  const auto b = static_cast<size_t>(batch_dims);
  const int64_t k = is.back();
  Shape out_shape(is.begin(), is.end() - 1);
  out_shape.insert(out_shape.end(), ds.begin() + static_cast<int64_t>(b) + k, ds.end());
  Tensor y(data.dtype(), out_shape);
  for (int64_t e = 0; e < y.numel(); ++e) {
    const Shape at = unravel(e, out_shape);
    // The tuple: indices at the output's leading (q − 1) coordinates.
    Shape tuple_at(at.begin(), at.begin() + static_cast<int64_t>(is.size()) - 1);
    tuple_at.push_back(0);
    Shape src(at.begin(), at.begin() + static_cast<int64_t>(b));
    for (int64_t q = 0; q < k; ++q) {
      tuple_at.back() = q;
      int64_t v = get_int(indices, ravel(tuple_at, is));
      if (v < 0) v += ds[b + static_cast<size_t>(q)];
      src.push_back(v);
    }
    src.insert(src.end(), at.begin() + static_cast<int64_t>(is.size()) - 1, at.end());
    copy_element(data, ravel(src, ds), y, e);
  }
  return y;
}

Tensor scatter_elements(const Tensor& data, const Tensor& indices, const Tensor& updates,
                        int64_t axis, bool add) {
  if (axis < 0) axis += data.rank();
  const auto ax = static_cast<size_t>(axis);
  Tensor y = data.clone();
  for (int64_t i = 0; i < indices.numel(); ++i) {
    Shape c = unravel(i, indices.shape());
    int64_t v = get_int(indices, i);
    if (v < 0) v += data.shape()[ax];
    c[ax] = v;
    const int64_t at = ravel(c, data.shape());
    if (add) {
      y.data<float>()[at] += updates.data<float>()[i];
    } else {
      copy_element(updates, i, y, at);
    }
  }
  return y;
}

Tensor pad(const Tensor& x, std::span<const int64_t> pads, PadMode mode, double constant_value) {
  const size_t rank = static_cast<size_t>(x.rank());
  Shape out_shape(rank);
  for (size_t d = 0; d < rank; ++d) out_shape[d] = x.shape()[d] + pads[d] + pads[rank + d];
  Tensor y(x.dtype(), out_shape);
  for (int64_t i = 0; i < y.numel(); ++i) {
    Shape index = unravel(i, out_shape);
    bool inside = true;
    for (size_t d = 0; d < rank; ++d) {
      const int64_t n = x.shape()[d];
      int64_t k = index[d] - pads[d];
      if (k < 0 || k >= n) {
        if (mode == PadMode::kConstant) {
          inside = false;
        } else if (mode == PadMode::kEdge) {
          k = std::clamp<int64_t>(k, 0, n - 1);
        } else {
          // Reflect about the first and last elements, repeatedly.
          while (k < 0 || k >= n) {
            if (n == 1) {
              k = 0;
            } else if (k < 0) {
              k = -k;
            } else {
              k = 2 * (n - 1) - k;
            }
          }
        }
      }
      index[d] = k;
    }
    if (inside) {
      copy_element(x, ravel(index, x.shape()), y, i);
    } else {
      set_double(y, i, constant_value);
    }
  }
  return y;
}

Tensor expand(const Tensor& x, std::span<const int64_t> shape) {
  const Shape out_shape = numpy_broadcast({x.shape(), Shape(shape.begin(), shape.end())});
  Tensor y(x.dtype(), out_shape);
  for (int64_t i = 0; i < y.numel(); ++i) {
    copy_element(x, broadcast_source(unravel(i, out_shape), x.shape()), y, i);
  }
  return y;
}

Tensor scatter_nd(const Tensor& data, const Tensor& indices, const Tensor& updates) {
  Tensor y = data.clone();
  const int64_t k = indices.shape().back();
  const int64_t tuples = indices.numel() / k;
  const int64_t slice = updates.numel() / std::max<int64_t>(tuples, 1);
  for (int64_t j = 0; j < tuples; ++j) {
    Shape index(data.shape().size(), 0);
    for (int64_t q = 0; q < k; ++q) {
      int64_t v = get_int(indices, j * k + q);
      if (v < 0) v += data.shape()[static_cast<size_t>(q)];
      index[static_cast<size_t>(q)] = v;
    }
    const int64_t base = ravel(index, data.shape());
    for (int64_t e = 0; e < slice; ++e) copy_element(updates, j * slice + e, y, base + e);
  }
  return y;
}

Tensor trilu(const Tensor& x, int64_t k, bool upper) {
  Tensor y(x.dtype(), x.shape());
  std::memset(y.raw(), 0, y.nbytes());
  const auto rank = x.shape().size();
  const int64_t rows = x.shape()[rank - 2];
  const int64_t cols = x.shape()[rank - 1];
  for (int64_t e = 0; e < x.numel(); ++e) {
    const int64_t i = (e / cols) % rows;
    const int64_t j = e % cols;
    if (upper ? j - i >= k : j - i <= k) copy_element(x, e, y, e);
  }
  return y;
}

}  // namespace qforge::kernels::reference
