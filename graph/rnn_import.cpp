// RNN, GRU and LSTM unrolled on import (ONNX's equations, gates in ONNX's order: LSTM i, o, f, c;
// GRU z, r, h).
#include "graph/rnn_import.h"

#include <onnx/onnx_pb.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <optional>
#include <string>
#include <tuple>
#include <unordered_map>
#include <utility>
#include <vector>

#include "graph/proto_emitter.h"
#include "graph/proto_names.h"
#include "graph/proto_shapes.h"
#include "kernels/error.h"

namespace qforge::graph {
namespace {

enum class Cell { kRnn, kGru, kLstm };

struct Recurrence {
  Cell cell = Cell::kRnn;
  int64_t hidden = 0;
  int64_t gates = 1;
  int64_t directions = 1;
  bool reverse = false;  // the one direction runs backwards
  int64_t layout = 0;
  bool linear_before_reset = false;
  std::string activation = "Tanh";  // RNN's
};

std::string input(const onnx::NodeProto& np, int i) {
  return i < np.input_size() ? np.input(i) : std::string();
}

std::string output(const onnx::NodeProto& np, int i) {
  return i < np.output_size() ? np.output(i) : std::string();
}

Recurrence read_recurrence(const onnx::NodeProto& np, const std::string& label) {
  Recurrence r;
  const std::string& op = np.op_type();
  r.cell = op == "LSTM" ? Cell::kLstm : op == "GRU" ? Cell::kGru : Cell::kRnn;
  r.gates = r.cell == Cell::kLstm ? 4 : r.cell == Cell::kGru ? 3 : 1;
  auto int_attribute = [&](const char* name, int64_t fallback) {
    const onnx::AttributeProto* a = find_attribute(np, name);
    if (!a) return fallback;
    if (a->type() != onnx::AttributeProto::INT) {
      throw_invalid(label + ": expected attribute '" + name + "' an int, got another type");
    }
    return a->i();
  };
  r.hidden = int_attribute("hidden_size", 0);
  if (r.hidden < 1) {
    throw_invalid(label + ": expected attribute 'hidden_size' >= 1, got " +
                  (find_attribute(np, "hidden_size") ? std::to_string(r.hidden) : "none"));
  }
  r.layout = int_attribute("layout", 0);
  if (r.layout != 0 && r.layout != 1) {
    throw_invalid(label + ": expected layout 0 or 1, got " + std::to_string(r.layout));
  }
  const int64_t lbr = int_attribute("linear_before_reset", 0);
  r.linear_before_reset = lbr != 0;
  if (int_attribute("input_forget", 0) != 0) {
    throw_unsupported(label +
                      ": expected input_forget 0 (qforge unrolls the cell without input "
                      "and forget gates coupled), got " +
                      std::to_string(int_attribute("input_forget", 0)));
  }
  if (find_attribute(np, "clip")) {
    throw_unsupported(label +
                      ": expected no attribute 'clip' (qforge does not clip the gates), "
                      "got one");
  }
  for (const char* name : {"activation_alpha", "activation_beta"}) {
    if (find_attribute(np, name)) {
      throw_unsupported(label + ": expected no attribute '" + name + "', got one");
    }
  }
  std::string direction = "forward";
  if (const onnx::AttributeProto* a = find_attribute(np, "direction")) direction = a->s();
  if (direction == "bidirectional") {
    r.directions = 2;
  } else if (direction == "reverse") {
    r.reverse = true;
  } else if (direction != "forward") {
    throw_invalid(label + ": expected direction forward, reverse or bidirectional, got '" +
                  direction + "'");
  }
  // The activations, per direction: the defaults for GRU and LSTM, one of three for RNN.
  std::vector<std::string> defaults =
      r.cell == Cell::kLstm  ? std::vector<std::string>{"Sigmoid", "Tanh", "Tanh"}
      : r.cell == Cell::kGru ? std::vector<std::string>{"Sigmoid", "Tanh"}
                             : std::vector<std::string>{"Tanh"};
  if (const onnx::AttributeProto* a = find_attribute(np, "activations")) {
    const auto per = static_cast<int>(defaults.size());
    if (a->strings_size() != per * r.directions) {
      throw_invalid(label + ": expected " + std::to_string(per * r.directions) +
                    " activations, got " + std::to_string(a->strings_size()));
    }
    for (int i = 0; i < a->strings_size(); ++i) {
      const std::string& f = a->strings(i);
      if (r.cell == Cell::kRnn) {
        if (f != "Tanh" && f != "Relu" && f != "Sigmoid") {
          throw_unsupported(label + ": expected activation Tanh, Relu or Sigmoid, got '" + f + "'");
        }
        if (i > 0 && f != a->strings(0)) {
          throw_unsupported(label + ": expected one activation for both directions, got '" +
                            a->strings(0) + "' and '" + f + "'");
        }
        r.activation = f;
      } else if (f != defaults[static_cast<size_t>(i % per)]) {
        std::string list;
        for (const auto& d : defaults) list += (list.empty() ? "" : ", ") + d;
        throw_unsupported(label + ": expected the activations " + list + ", got '" + f + "' at " +
                          std::to_string(i));
      }
    }
  }
  return r;
}

// Whether `name` is an int32 initializer whose every value is `steps`.
bool full_lengths(const onnx::GraphProto& g, const std::string& name, int64_t steps) {
  for (const auto& t : g.initializer()) {
    if (t.name() != name) continue;
    if (t.data_type() != onnx::TensorProto::INT32) return false;
    std::vector<int32_t> values(t.int32_data().begin(), t.int32_data().end());
    if (t.has_raw_data()) {
      values.resize(t.raw_data().size() / sizeof(int32_t));
      std::memcpy(values.data(), t.raw_data().data(), values.size() * sizeof(int32_t));
    }
    return !values.empty() &&
           std::all_of(values.begin(), values.end(), [&](int32_t v) { return v == steps; });
  }
  return false;
}

// "[2, 16, 3]", with "?" for an unknown dim.
std::string shape_text(const std::vector<int64_t>& dims) {
  std::string text = "[";
  for (size_t i = 0; i < dims.size(); ++i) {
    if (i) text += ", ";
    text += dims[i] < 0 ? std::string("?") : std::to_string(dims[i]);
  }
  return text + "]";
}

// The unrolled nodes of one recurrent node, written at opset 13 or later.
class Unroller {
 public:
  Unroller(const onnx::NodeProto& np, const std::string& name, const Recurrence& r, int64_t steps,
           FreshValueNames& names, Nodes& out)
      : np_(np), r_(r), steps_(steps), e_(name, names, out) {}

  void run() {
    const std::string x =
        r_.layout == 1 ? transpose(input(np_, 0), {1, 0, 2}, "x_steps_first") : input(np_, 0);
    std::vector<std::string> ys, hs, cs;
    for (int64_t d = 0; d < r_.directions; ++d) {
      Direction dir = direction(x, d);
      ys.push_back(dir.y);
      hs.push_back(dir.h);
      cs.push_back(dir.c);
    }
    const std::string y = output(np_, 0), y_h = output(np_, 1), y_c = output(np_, 2);
    if (!y.empty()) {
      // [T, D, B, H] (layout 0) or [B, T, D, H] (layout 1)
      std::vector<std::string> parts;
      for (size_t d = 0; d < ys.size(); ++d) {
        parts.push_back(unsqueeze(ys[d], 1, stem(d) + "y_axis"));
      }
      if (r_.layout == 1) {
        transpose(concat(parts, 1, "y_steps_first", ""), {2, 0, 1, 3}, "y", y);
      } else {
        concat(parts, 1, "y", y);
      }
    }
    for (auto [states, out, what] : {std::tuple{&hs, y_h, "y_h"}, std::tuple{&cs, y_c, "y_c"}}) {
      if (out.empty()) continue;
      std::vector<std::string> parts;
      for (size_t d = 0; d < states->size(); ++d) {
        parts.push_back(unsqueeze((*states)[d], 0, stem(d) + what + "_axis"));
      }
      if (r_.layout == 1) {
        transpose(concat(parts, 0, std::string(what) + "_directions_first", ""), {1, 0, 2}, what,
                  out);
      } else {
        concat(parts, 0, what, out);
      }
    }
  }

 private:
  struct Direction {
    std::string y, h, c;
  };

  // "d<d>/": the names of direction d's nodes.
  static std::string stem(int64_t d) {
    std::string s(1, 'd');
    s += std::to_string(d);
    s += '/';
    return s;
  }

  Direction direction(const std::string& x, int64_t d) {
    const std::string p = stem(d);
    const int64_t h = r_.hidden;
    const int64_t gh = r_.gates * h;
    const std::string w = transpose(gather(input(np_, 1), d, p + "w"), {1, 0}, p + "w_t");
    const std::string rec = gather(input(np_, 2), d, p + "r");
    std::string xw = e_.value("MatMul", p + "input_projection", {x, w});  // [T, B, G·H]
    // The biases: the input's on the projection with the recurrent one where it adds the same
    // way (all gates but GRU's h when linear_before_reset: that one is scaled by r).
    std::string recurrent_bias;
    if (!input(np_, 3).empty()) {
      const std::string b = gather(input(np_, 3), d, p + "b");
      const std::string wb = slice(b, 0, gh, 0, p + "wb");
      const std::string rb = slice(b, gh, 2 * gh, 0, p + "rb");
      if (r_.cell == Cell::kGru && r_.linear_before_reset) {
        xw = e_.value("Add", p + "input_bias", {xw, wb});
        recurrent_bias = rb;
      } else {
        xw = e_.value("Add", p + "input_bias", {xw, e_.value("Add", p + "bias", {wb, rb})});
      }
    }
    std::string rec_t, rec_zr_t, rec_h_t;
    if (r_.cell == Cell::kGru && !r_.linear_before_reset) {
      rec_zr_t = transpose(slice(rec, 0, 2 * h, 0, p + "r_zr"), {1, 0}, p + "r_zr_t");
      rec_h_t = transpose(slice(rec, 2 * h, 3 * h, 0, p + "r_h"), {1, 0}, p + "r_h_t");
    } else {
      rec_t = transpose(rec, {1, 0}, p + "r_t");
    }
    // The initial states are [D, B, H], or [B, D, H] in layout 1.
    const int64_t state_axis = r_.layout == 1 ? 1 : 0;
    std::string state = input(np_, 5).empty() ? "" : gather(input(np_, 5), d, p + "h0", state_axis);
    std::string cell = r_.cell != Cell::kLstm || input(np_, 6).empty()
                           ? ""
                           : gather(input(np_, 6), d, p + "c0", state_axis);
    std::string one;
    if (r_.cell == Cell::kGru) one = e_.floats(p + "one", 1.0f);

    const bool backwards = r_.reverse || d == 1;
    std::vector<std::string> outputs(static_cast<size_t>(steps_));
    for (int64_t k = 0; k < steps_; ++k) {
      const int64_t t = backwards ? steps_ - 1 - k : k;
      const std::string s = p + "t" + std::to_string(t) + "/";
      const std::string xt = gather(xw, t, s + "x");  // [B, G·H]
      if (r_.cell == Cell::kGru) {
        state = gru_step(xt, state, s, rec_t, rec_zr_t, rec_h_t, recurrent_bias, one);
        outputs[static_cast<size_t>(t)] = state;
        continue;
      }
      // RNN and LSTM: every gate's input and recurrent terms together.
      const std::string pre =
          state.empty()
              ? xt
              : e_.value("Add", s + "pre", {xt, e_.value("MatMul", s + "h_r", {state, rec_t})});
      if (r_.cell == Cell::kRnn) {
        state = e_.value(r_.activation, s + "h", {pre});
      } else {
        const std::string i = e_.value("Sigmoid", s + "i", {slice(pre, 0, h, 1, s + "i_pre")});
        const std::string o = e_.value("Sigmoid", s + "o", {slice(pre, h, 2 * h, 1, s + "o_pre")});
        const std::string f =
            e_.value("Sigmoid", s + "f", {slice(pre, 2 * h, 3 * h, 1, s + "f_pre")});
        const std::string g = e_.value("Tanh", s + "g", {slice(pre, 3 * h, 4 * h, 1, s + "g_pre")});
        const std::string fresh = e_.value("Mul", s + "i_g", {i, g});
        cell = cell.empty()
                   ? fresh
                   : e_.value("Add", s + "c", {e_.value("Mul", s + "f_c", {f, cell}), fresh});
        state = e_.value("Mul", s + "h", {o, e_.value("Tanh", s + "c_tanh", {cell})});
      }
      outputs[static_cast<size_t>(t)] = state;
    }
    Direction result;
    result.h = state;
    result.c = cell;
    std::vector<std::string> steps;
    for (int64_t t = 0; t < steps_; ++t) {
      steps.push_back(
          unsqueeze(outputs[static_cast<size_t>(t)], 0, p + "t" + std::to_string(t) + "/y_axis"));
    }
    result.y = concat(steps, 0, p + "y", "");  // [T, B, H]
    return result;
  }

  // H_t = (1 − z) ⊙ h̃ + z ⊙ H_{t−1}, with h̃ = tanh(x_h + r ⊙ (H_{t−1}·R_hᵀ + Rb_h)) when
  // linear_before_reset, else tanh(x_h + (r ⊙ H_{t−1})·R_hᵀ) (the biases are in x).
  std::string gru_step(const std::string& xt, const std::string& state, const std::string& s,
                       const std::string& rec_t, const std::string& rec_zr_t,
                       const std::string& rec_h_t, const std::string& recurrent_bias,
                       const std::string& one) {
    const int64_t h = r_.hidden;
    std::string zr = slice(xt, 0, 2 * h, 1, s + "x_zr");
    std::string x_h = slice(xt, 2 * h, 3 * h, 1, s + "x_h");
    std::string h_r;  // the recurrent term of all three gates (linear_before_reset)
    if (r_.linear_before_reset) {
      if (!state.empty()) h_r = e_.value("MatMul", s + "h_r", {state, rec_t});
      if (!recurrent_bias.empty()) {
        h_r = h_r.empty() ? recurrent_bias : e_.value("Add", s + "h_r_bias", {h_r, recurrent_bias});
      }
      if (!h_r.empty())
        zr = e_.value("Add", s + "zr_pre", {zr, slice(h_r, 0, 2 * h, -1, s + "h_r_zr")});
    } else if (!state.empty()) {
      zr = e_.value("Add", s + "zr_pre", {zr, e_.value("MatMul", s + "h_r_zr", {state, rec_zr_t})});
    }
    const std::string z = e_.value("Sigmoid", s + "z", {slice(zr, 0, h, 1, s + "z_pre")});
    const std::string r = e_.value("Sigmoid", s + "r", {slice(zr, h, 2 * h, 1, s + "r_pre")});
    std::string pre = x_h;
    if (r_.linear_before_reset && !h_r.empty()) {
      const std::string gated =
          e_.value("Mul", s + "r_h_r", {r, slice(h_r, 2 * h, 3 * h, -1, s + "h_r_h")});
      pre = e_.value("Add", s + "h_pre", {x_h, gated});
    } else if (!r_.linear_before_reset && !state.empty()) {
      const std::string reset = e_.value("Mul", s + "r_h", {r, state});
      pre = e_.value("Add", s + "h_pre", {x_h, e_.value("MatMul", s + "r_h_r", {reset, rec_h_t})});
    }
    const std::string candidate = e_.value("Tanh", s + "h_candidate", {pre});
    const std::string kept =
        e_.value("Mul", s + "new_part", {e_.value("Sub", s + "one_minus_z", {one, z}), candidate});
    if (state.empty()) return kept;
    return e_.value("Add", s + "h", {kept, e_.value("Mul", s + "old_part", {z, state})});
  }

  std::string gather(const std::string& x, int64_t index, const std::string& suffix,
                     int64_t axis = 0) {
    onnx::NodeProto& n = e_.node("Gather", suffix, {x, e_.ints(suffix + "_index", {index}, true)});
    Emitter::int_attribute(n, "axis", axis);
    return n.output(0);
  }

  // x[start:end] along `axis` (−1: the last axis of a rank-1 or rank-2 value). The bounds are
  // the same at every step: their constants are written once per node and shared.
  std::string slice(const std::string& x, int64_t start, int64_t end, int64_t axis,
                    const std::string& suffix) {
    auto [bounds, fresh] = slice_bounds_.try_emplace({start, end, axis});
    if (fresh) {
      bounds->second = {e_.ints(suffix + "_starts", {start}), e_.ints(suffix + "_ends", {end}),
                        e_.ints(suffix + "_axes", {axis})};
    }
    const auto& [starts, ends, axes] = bounds->second;
    return e_.value("Slice", suffix, {x, starts, ends, axes});
  }

  std::string transpose(const std::string& x, const std::vector<int64_t>& perm,
                        const std::string& suffix, const std::string& out = "") {
    onnx::NodeProto& n = e_.node("Transpose", suffix, {x}, out);
    Emitter::ints_attribute(n, "perm", perm);
    return n.output(0);
  }

  std::string unsqueeze(const std::string& x, int64_t axis, const std::string& suffix) {
    return e_.value("Unsqueeze", suffix, {x, e_.ints(suffix + "_axes", {axis})});
  }

  // Concat of `parts` along `axis` into `out` (a fresh value where empty).
  std::string concat(const std::vector<std::string>& parts, int64_t axis, const std::string& suffix,
                     const std::string& out) {
    onnx::NodeProto& n = e_.node("Concat", suffix, parts, out);
    Emitter::int_attribute(n, "axis", axis);
    return n.output(0);
  }

  const onnx::NodeProto& np_;
  const Recurrence& r_;
  int64_t steps_;
  Emitter e_;
  // A Slice's (start, end, axis): its three constants' values.
  std::map<std::tuple<int64_t, int64_t, int64_t>, std::tuple<std::string, std::string, std::string>>
      slice_bounds_;
};

}  // namespace

bool is_recurrent_op(const std::string& op) {
  return op == "LSTM" || op == "GRU" || op == "RNN";
}

void unroll_recurrent_nodes(onnx::ModelProto& model, int64_t opset) {
  onnx::GraphProto& g = *model.mutable_graph();
  bool any = false;
  for (const auto& np : g.node()) {
    any =
        any || ((np.domain().empty() || np.domain() == "ai.onnx") && is_recurrent_op(np.op_type()));
  }
  if (!any) return;
  // Sequence lengths are often what shape computations give (a CRNN's feature map width).
  const auto dims = inferred_dims(model, /*data_propagation=*/true);
  FreshValueNames names(g);
  Nodes rewritten;
  int index = 0;
  for (const auto& np : g.node()) {
    const std::string name = proto_node_name(np, index++);
    if (!(np.domain().empty() || np.domain() == "ai.onnx") || !is_recurrent_op(np.op_type())) {
      *rewritten.Add() = np;
      continue;
    }
    const std::string label = "import: node '" + name + "' (" + np.op_type() + ")";
    const Recurrence r = read_recurrence(np, label);
    if (np.input_size() < 3 || input(np, 0).empty() || input(np, 1).empty() ||
        input(np, 2).empty()) {
      throw_invalid(label + ": expected inputs X, W and R, got " + std::to_string(np.input_size()) +
                    " inputs");
    }
    if (r.cell == Cell::kLstm && !input(np, 7).empty()) {
      throw_unsupported(label + ": expected no peephole weights P, got input '" + input(np, 7) +
                        "'");
    }
    if (r.layout == 1 && opset < 14) {
      throw_invalid(label + ": expected layout 0 before opset 14, got layout 1 at opset " +
                    std::to_string(opset));
    }
    auto x = dims.find(input(np, 0));
    const int64_t time_axis = r.layout == 1 ? 1 : 0;
    if (x == dims.end() || x->second.size() != 3 || x->second[time_axis] < 1) {
      throw_unsupported(label + ": expected input '" + input(np, 0) +
                        "' of rank 3 with a sequence length its shape fixes (qforge unrolls the "
                        "sequence; give the model's input shape), got " +
                        (x == dims.end() ? std::string("an unknown shape")
                                         : "rank " + std::to_string(x->second.size())));
    }
    const int64_t steps = x->second[time_axis];
    if (steps > kMaxUnrolledSteps) {
      throw_unsupported(label + ": expected a sequence of at most " +
                        std::to_string(kMaxUnrolledSteps) + " steps (qforge unrolls it), got " +
                        std::to_string(steps));
    }
    // sequence_lens: absent, or an initializer that gives every sequence the full length (a
    // converter writes it so); shorter sequences (packed ones) are not unrolled.
    if (!input(np, 4).empty() && !full_lengths(g, input(np, 4), steps)) {
      throw_unsupported(label + ": expected no sequence_lens, or a constant one of " +
                        std::to_string(steps) +
                        " (the full length) for every sequence, got input '" + input(np, 4) + "'");
    }
    // The weights' and states' shapes where known: [D, G·H, I], [D, G·H, H], [D, 2·G·H],
    // [D, B, H] ([B, D, H] in layout 1).
    const int64_t gh = r.gates * r.hidden;
    const int64_t features = x->second[2];
    const int64_t batch = x->second[r.layout == 1 ? 0 : 1];
    const int64_t d0 = r.layout == 1 ? batch : r.directions;
    const int64_t d1 = r.layout == 1 ? r.directions : batch;
    const std::pair<int, std::vector<int64_t>> expected[] = {{1, {r.directions, gh, features}},
                                                             {2, {r.directions, gh, r.hidden}},
                                                             {3, {r.directions, 2 * gh}},
                                                             {5, {d0, d1, r.hidden}},
                                                             {6, {d0, d1, r.hidden}}};
    static const char* const kRoles[] = {"X",         "W",        "R", "B", "sequence_lens",
                                         "initial_h", "initial_c"};
    for (const auto& [i, want] : expected) {
      if (i == 6 && r.cell != Cell::kLstm) continue;
      auto known = dims.find(input(np, i));
      if (input(np, i).empty() || known == dims.end()) continue;
      bool fits = known->second.size() == want.size();
      for (size_t k = 0; fits && k < want.size(); ++k) {
        fits = want[k] < 0 || known->second[k] < 0 || known->second[k] == want[k];
      }
      if (!fits) {
        throw_invalid(label + ": expected " + kRoles[i] + " '" + input(np, i) + "' of shape " +
                      shape_text(want) + " (hidden_size " + std::to_string(r.hidden) + "), got " +
                      shape_text(known->second));
      }
    }
    Unroller(np, name, r, steps, names, rewritten).run();
  }
  *g.mutable_node() = std::move(rewritten);
}

}  // namespace qforge::graph
