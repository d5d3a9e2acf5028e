// quant::Sgd and quant::AdamW against PyTorch's trajectories (data/generate/optimizer_goldens.py),
// weight-decay exclusion, state saved and restored for a bit-identical resume, and validation.
#include "quant/optimizer.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "quant/lr_schedule.h"
#include "tests/support/errors.h"
#include "tests/support/random.h"
#include "tests/support/test_support.h"
#include "tests/support/thread_count.h"
#include "tools/io/npz.h"

namespace qforge {
namespace {

using kernels::DType;
using kernels::Tensor;
using testing::data_path;

nlohmann::json golden_settings() {
  std::ifstream file(data_path("golden/optim/settings.json"));
  return nlohmann::json::parse(file);
}

// The golden parameters at their initial values, in the script's order, with zero gradients.
std::vector<runtime::Parameter> golden_parameters(const nlohmann::json& settings,
                                                  const std::map<std::string, Tensor>& trajectory) {
  std::vector<runtime::Parameter> parameters;
  for (const auto& p : settings.at("parameters")) {
    const std::string name = p.at("name");
    Tensor value = trajectory.at("initial/" + name).clone();
    Tensor grad(DType::kFloat32, value.shape());
    parameters.push_back({name, value, grad});
  }
  return parameters;
}

// PyTorch's single-tensor kernels round every operation to float32 and fuse each add with an
// alpha into one fma; quant/optimizer.cpp keeps that order and those fusions, so on this machine
// the trajectories agree bit for bit. 1e-6 relative per element (about 8 float ulps) leaves room
// for another libm's pow or sqrt of a double, not for another formula: dropping one of the fmas
// alone moves some elements by more than 1e-6 within these ten steps.
void expect_within_float_rounding(const Tensor& got, const Tensor& want, const std::string& what) {
  ASSERT_EQ(got.shape(), want.shape()) << what;
  const float* g = got.data<float>();
  const float* w = want.data<float>();
  int failures = 0;
  for (int64_t i = 0; i < want.numel(); ++i) {
    if (!(std::abs(double(g[i]) - w[i]) <= 1e-6 * std::abs(double(w[i])))) {
      if (++failures <= 3) {
        ADD_FAILURE() << what << ": element " << i << " is " << g[i] << ", PyTorch's " << w[i];
      }
    }
  }
  EXPECT_EQ(failures, 0) << what;
}

quant::LrSchedule golden_schedule(const nlohmann::json& settings, double base_lr) {
  const nlohmann::json& s = settings.at("schedule");
  return quant::LrSchedule({.base_lr = base_lr,
                            .decay = quant::parse_lr_decay(s.at("decay").get<std::string>()),
                            .warmup_steps = s.at("warmup_steps").get<int64_t>(),
                            .total_steps = s.at("total_steps").get<int64_t>()});
}

// Runs the golden trajectory with `optimizer` and compares every parameter after every step,
// and the final state, with PyTorch's.
void expect_golden_trajectory(quant::Optimizer& optimizer, const std::string& which) {
  const nlohmann::json settings = golden_settings();
  const auto trajectory = io::read_npz(data_path("golden/optim/trajectory.npz"));
  const auto golden = io::read_npz(data_path("golden/optim/" + which + ".npz"));
  const nlohmann::json& options = settings.at(which);
  const quant::LrSchedule schedule = golden_schedule(settings, options.at("lr").get<double>());
  std::vector<runtime::Parameter> parameters = golden_parameters(settings, trajectory);
  const int steps = settings.at("steps").get<int>();
  for (int step = 0; step < steps; ++step) {
    const double lr = schedule.lr(step);
    EXPECT_EQ(lr, options.at("lrs").at(step).get<double>()) << "step " << step;
    optimizer.set_lr(lr);
    for (runtime::Parameter& p : parameters) {
      p.grad.copy_from(trajectory.at("grad/" + std::to_string(step) + "/" + p.name));
    }
    optimizer.step(parameters);
    for (const runtime::Parameter& p : parameters) {
      expect_within_float_rounding(p.value,
                                   golden.at("param/" + std::to_string(step) + "/" + p.name),
                                   which + " step " + std::to_string(step) + " " + p.name);
    }
  }
  const quant::OptimizerState state = optimizer.state();
  size_t state_members = 0;
  for (const auto& [key, want] : golden) {
    if (key.starts_with("param/")) continue;
    ++state_members;
    ASSERT_TRUE(state.contains(key)) << "no state '" << key << "'";
    const Tensor& got = state.at(key);
    if (want.dtype() == DType::kInt64) {
      ASSERT_EQ(got.dtype(), DType::kInt64) << key;
      EXPECT_EQ(got.data<int64_t>()[0], want.data<int64_t>()[0]) << key;
    } else {
      expect_within_float_rounding(got, want, which + " state " + key);
    }
  }
  EXPECT_EQ(state.size(), state_members) << "state members PyTorch does not have";
}

TEST(OptimizerGolden, SgdNesterovWithDecayExclusionMatchesPyTorch) {
  const nlohmann::json o = golden_settings().at("sgd");
  quant::Sgd sgd({.lr = o.at("lr").get<double>(),
                  .momentum = o.at("momentum").get<double>(),
                  .dampening = o.at("dampening").get<double>(),
                  .weight_decay = o.at("weight_decay").get<double>(),
                  .nesterov = o.at("nesterov").get<bool>(),
                  .no_weight_decay = quant::is_vector_parameter});
  expect_golden_trajectory(sgd, "sgd");
}

TEST(OptimizerGolden, AdamWWithDecayExclusionMatchesPyTorch) {
  const nlohmann::json o = golden_settings().at("adamw");
  quant::AdamW adamw({.lr = o.at("lr").get<double>(),
                      .beta1 = o.at("beta1").get<double>(),
                      .beta2 = o.at("beta2").get<double>(),
                      .eps = o.at("eps").get<double>(),
                      .weight_decay = o.at("weight_decay").get<double>(),
                      .no_weight_decay = quant::is_vector_parameter});
  expect_golden_trajectory(adamw, "adamw");
}

TEST(OptimizerGolden, ExclusionFollowsTheScriptsParameterGroups) {
  const nlohmann::json settings = golden_settings();
  const auto trajectory = io::read_npz(data_path("golden/optim/trajectory.npz"));
  for (const runtime::Parameter& p : golden_parameters(settings, trajectory)) {
    bool decays = true;
    for (const auto& q : settings.at("parameters")) {
      if (q.at("name") == p.name) decays = q.at("weight_decay").get<bool>();
    }
    EXPECT_EQ(quant::is_vector_parameter(p), !decays) << p.name;
  }
}

// ---------------------------------------------------------------------------------------------
// Behaviour on small hand-made parameters.

runtime::Parameter random_parameter(const std::string& name, kernels::Shape shape, uint32_t seed) {
  return {name, testing::random_f32(shape, seed, -1.0f, 1.0f), Tensor(DType::kFloat32, shape)};
}

std::vector<runtime::Parameter> small_model() {
  std::vector<runtime::Parameter> parameters;
  parameters.push_back(random_parameter("conv.weight", {7, 3, 3, 3}, 1));
  parameters.push_back(random_parameter("conv.bias", {7}, 3));
  parameters.push_back(random_parameter("head.weight", {5, 13}, 5));
  // BatchNorm running statistics: state without a gradient, which no optimizer touches.
  parameters.push_back({"bn.running_mean", Tensor::from_vector<float>({3}, {1, 2, 3}), Tensor()});
  return parameters;
}

std::vector<runtime::Parameter> copy_of(const std::vector<runtime::Parameter>& parameters) {
  std::vector<runtime::Parameter> copy;
  for (const runtime::Parameter& p : parameters) {
    copy.push_back({p.name, p.value.clone(), p.grad.defined() ? p.grad.clone() : Tensor()});
  }
  return copy;
}

// A gradient per step that depends on the step and the current value, as a real one would.
void set_gradients(std::vector<runtime::Parameter>& parameters, int step) {
  for (runtime::Parameter& p : parameters) {
    if (!p.trainable()) continue;
    const float* v = p.value.data<float>();
    float* g = p.grad.data<float>();
    for (int64_t i = 0; i < p.value.numel(); ++i) {
      g[i] = 0.3f * v[i] + 0.01f * float((i * 7 + step * 3) % 11) - 0.05f;
    }
  }
}

void expect_same_values(const std::vector<runtime::Parameter>& a,
                        const std::vector<runtime::Parameter>& b, const std::string& what) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    ASSERT_EQ(a[i].value.shape(), b[i].value.shape()) << what << " " << a[i].name;
    EXPECT_EQ(std::memcmp(a[i].value.raw(), b[i].value.raw(), a[i].value.nbytes()), 0)
        << what << ": " << a[i].name;
  }
}

struct OptimizerCase {
  std::string name;
  std::function<std::unique_ptr<quant::Optimizer>(quant::NoWeightDecay)> make;
};

// gtest prints a parameter it cannot name byte by byte, the std::function's unset bytes included.
void PrintTo(const OptimizerCase& c, std::ostream* os) {
  *os << c.name;
}

std::vector<OptimizerCase> optimizer_cases() {
  return {
      {"SgdNesterov",
       [](quant::NoWeightDecay exclude) {
         return std::make_unique<quant::Sgd>(quant::SgdOptions{.lr = 0.05,
                                                               .momentum = 0.9,
                                                               .weight_decay = 0.1,
                                                               .nesterov = true,
                                                               .no_weight_decay = exclude});
       }},
      {"SgdDampened",
       [](quant::NoWeightDecay exclude) {
         return std::make_unique<quant::Sgd>(quant::SgdOptions{.lr = 0.05,
                                                               .momentum = 0.8,
                                                               .dampening = 0.25,
                                                               .weight_decay = 0.1,
                                                               .no_weight_decay = exclude});
       }},
      {"AdamW",
       [](quant::NoWeightDecay exclude) {
         return std::make_unique<quant::AdamW>(
             quant::AdamWOptions{.lr = 0.01, .weight_decay = 0.2, .no_weight_decay = exclude});
       }},
  };
}

class OptimizerBehaviour : public ::testing::TestWithParam<OptimizerCase> {};

// Five steps, a snapshot of the parameters and the optimizer's state (through an .npz file, as a
// checkpoint keeps it), five more steps; then a fresh optimizer restored from the snapshot takes
// the same five steps from the snapshot's parameters: the same bits. The learning rate follows a
// schedule, set before each step, as a training loop does.
TEST_P(OptimizerBehaviour, ResumesBitIdenticallyFromSavedState) {
  const quant::LrSchedule schedule(
      {.base_lr = 0.05, .decay = quant::LrDecay::kCosine, .warmup_steps = 2, .total_steps = 10});
  std::vector<runtime::Parameter> parameters = small_model();
  auto optimizer = GetParam().make(quant::is_vector_parameter);
  auto run = [&](quant::Optimizer& opt, std::vector<runtime::Parameter>& params, int from) {
    for (int step = from; step < from + 5; ++step) {
      set_gradients(params, step);
      opt.set_lr(schedule.lr(step));
      opt.step(params);
    }
  };
  run(*optimizer, parameters, 0);
  testing::TempDir dir;
  io::write_npz(dir.file("optimizer.npz"), optimizer->state());
  const std::vector<runtime::Parameter> snapshot = copy_of(parameters);
  run(*optimizer, parameters, 5);

  auto restored = GetParam().make(quant::is_vector_parameter);
  restored->load_state(io::read_npz(dir.file("optimizer.npz")));
  std::vector<runtime::Parameter> resumed = copy_of(snapshot);
  run(*restored, resumed, 5);
  expect_same_values(parameters, resumed, "resumed run");
  const quant::OptimizerState a = optimizer->state();
  const quant::OptimizerState b = restored->state();
  ASSERT_EQ(a.size(), b.size());
  for (const auto& [key, tensor] : a) {
    ASSERT_TRUE(b.contains(key)) << key;
    EXPECT_EQ(std::memcmp(tensor.raw(), b.at(key).raw(), tensor.nbytes()), 0) << key;
  }

  // Without the state the same steps from the same parameters end elsewhere: the check can fail.
  std::vector<runtime::Parameter> cold = copy_of(snapshot);
  auto fresh = GetParam().make(quant::is_vector_parameter);
  run(*fresh, cold, 5);
  EXPECT_NE(
      std::memcmp(cold[0].value.raw(), parameters[0].value.raw(), parameters[0].value.nbytes()), 0);
}

// An excluded parameter moves exactly as it would with weight_decay 0; the others do not.
TEST_P(OptimizerBehaviour, ExcludedParametersGetNoWeightDecay) {
  std::vector<runtime::Parameter> excluded = small_model();
  std::vector<runtime::Parameter> decayed = copy_of(excluded);
  auto with_exclusion = GetParam().make(quant::is_vector_parameter);
  auto without = GetParam().make(nullptr);
  for (int step = 0; step < 3; ++step) {
    set_gradients(excluded, step);
    set_gradients(decayed, step);
    with_exclusion->step(excluded);
    without->step(decayed);
  }
  // The bias (index 1) is excluded: compare it with a run without any weight decay.
  std::vector<runtime::Parameter> no_decay = small_model();
  std::unique_ptr<quant::Optimizer> zero;
  if (GetParam().name == "AdamW") {
    zero = std::make_unique<quant::AdamW>(quant::AdamWOptions{.lr = 0.01, .weight_decay = 0});
  } else if (GetParam().name == "SgdNesterov") {
    zero = std::make_unique<quant::Sgd>(
        quant::SgdOptions{.lr = 0.05, .momentum = 0.9, .nesterov = true});
  } else {
    zero = std::make_unique<quant::Sgd>(
        quant::SgdOptions{.lr = 0.05, .momentum = 0.8, .dampening = 0.25});
  }
  for (int step = 0; step < 3; ++step) {
    set_gradients(no_decay, step);
    zero->step(no_decay);
  }
  EXPECT_EQ(
      std::memcmp(excluded[1].value.raw(), no_decay[1].value.raw(), no_decay[1].value.nbytes()), 0);
  EXPECT_NE(
      std::memcmp(decayed[1].value.raw(), no_decay[1].value.raw(), no_decay[1].value.nbytes()), 0);
  // The weights decay either way, identically.
  EXPECT_EQ(std::memcmp(excluded[0].value.raw(), decayed[0].value.raw(), decayed[0].value.nbytes()),
            0);
  EXPECT_NE(
      std::memcmp(excluded[0].value.raw(), no_decay[0].value.raw(), no_decay[0].value.nbytes()), 0);
}

// Parameters without a gradient (BN running statistics) are neither changed nor given state.
TEST_P(OptimizerBehaviour, LeavesStateWithoutGradientAlone) {
  std::vector<runtime::Parameter> parameters = small_model();
  auto optimizer = GetParam().make(nullptr);
  set_gradients(parameters, 0);
  optimizer->step(parameters);
  const std::vector<float> running_mean = parameters[3].value.to_float_vector();
  EXPECT_EQ(running_mean, (std::vector<float>{1, 2, 3}));
  for (const auto& [key, tensor] : optimizer->state()) {
    EXPECT_EQ(key.find("bn.running_mean"), std::string::npos) << key;
  }
}

// The state is kept by name: the parameters may come in another order at the next step.
TEST_P(OptimizerBehaviour, StateFollowsParametersByName) {
  std::vector<runtime::Parameter> in_order = small_model();
  std::vector<runtime::Parameter> reversed = copy_of(in_order);
  auto a = GetParam().make(quant::is_vector_parameter);
  auto b = GetParam().make(quant::is_vector_parameter);
  for (int step = 0; step < 4; ++step) {
    set_gradients(in_order, step);
    set_gradients(reversed, step);
    a->step(in_order);
    // Parameters share their tensors' storage: the reversed list updates `reversed`.
    std::vector<runtime::Parameter> order = reversed;
    if (step % 2) order.assign(reversed.rbegin(), reversed.rend());
    b->step(order);
  }
  expect_same_values(in_order, reversed, "reordered parameters");
}

// Element-wise updates on fixed chunks: the same bits on 1 and 2 threads, for a parameter large
// enough to be split.
TEST_P(OptimizerBehaviour, SameBitsOnOneAndTwoThreads) {
  auto run = [&](int threads) {
    testing::ThreadCount count(threads);
    std::vector<runtime::Parameter> parameters;
    parameters.push_back(random_parameter("big.weight", {3, 40001}, 11));
    auto optimizer = GetParam().make(nullptr);
    for (int step = 0; step < 3; ++step) {
      set_gradients(parameters, step);
      optimizer->step(parameters);
    }
    return parameters;
  };
  expect_same_values(run(1), run(2), "1 against 2 threads");
}

TEST_P(OptimizerBehaviour, RefusesAStateOfAnotherShape) {
  std::vector<runtime::Parameter> parameters = small_model();
  auto optimizer = GetParam().make(nullptr);
  set_gradients(parameters, 0);
  optimizer->step(parameters);
  std::vector<runtime::Parameter> other = small_model();
  other[2] = random_parameter("head.weight", {5, 12}, 5);
  set_gradients(other, 1);
  auto restored = GetParam().make(nullptr);
  restored->load_state(optimizer->state());
  const std::string message =
      testing::error_of(ErrorKind::kInvalid, [&] { restored->step(other); });
  EXPECT_NE(message.find("head.weight': expected the shape [5, 12] of its parameter, got [5, 13]"),
            std::string::npos)
      << message;
}

INSTANTIATE_TEST_SUITE_P(Optimizers, OptimizerBehaviour, ::testing::ValuesIn(optimizer_cases()),
                         [](const auto& p) { return p.param.name; });

TEST(OptimizerState, KeysNameTheFieldAndTheParameter) {
  std::vector<runtime::Parameter> parameters = small_model();
  set_gradients(parameters, 0);
  quant::Sgd sgd({.lr = 0.1, .momentum = 0.9});
  sgd.step(parameters);
  std::vector<std::string> keys;
  for (const auto& [key, tensor] : sgd.state()) keys.push_back(key);
  EXPECT_EQ(keys,
            (std::vector<std::string>{"momentum_buffer/conv.bias", "momentum_buffer/conv.weight",
                                      "momentum_buffer/head.weight"}));

  quant::AdamW adamw({.lr = 0.1});
  adamw.step(parameters);
  adamw.step(parameters);
  const quant::OptimizerState state = adamw.state();
  EXPECT_EQ(state.size(), 9u);
  EXPECT_EQ(state.at("exp_avg/conv.bias").shape(), (kernels::Shape{7}));
  EXPECT_EQ(state.at("exp_avg_sq/head.weight").shape(), (kernels::Shape{5, 13}));
  EXPECT_EQ(state.at("step/conv.weight").data<int64_t>()[0], 2);
}

TEST(OptimizerState, SgdWithoutMomentumHasNoState) {
  std::vector<runtime::Parameter> parameters = small_model();
  set_gradients(parameters, 0);
  quant::Sgd sgd({.lr = 0.1});
  sgd.step(parameters);
  EXPECT_TRUE(sgd.state().empty());
}

TEST(OptimizerState, RefusesKeysItDoesNotWrite) {
  quant::Sgd sgd({.lr = 0.1, .momentum = 0.9});
  std::string message = testing::error_of(ErrorKind::kInvalid, [&] {
    sgd.load_state({{"exp_avg/w", Tensor(DType::kFloat32, {2})}});
  });
  EXPECT_NE(message.find("SGD: state 'exp_avg/w': expected a key 'momentum_buffer/<parameter>'"),
            std::string::npos)
      << message;

  quant::AdamW adamw({.lr = 0.1});
  message = testing::error_of(ErrorKind::kInvalid, [&] {
    adamw.load_state(
        {{"exp_avg/w", Tensor(DType::kFloat32, {2})}, {"step/w", Tensor::scalar_i64(3)}});
  });
  EXPECT_NE(message.find("AdamW: state of parameter 'w': expected exp_avg, exp_avg_sq and step"),
            std::string::npos)
      << message;
  message = testing::error_of(ErrorKind::kInvalid, [&] {
    adamw.load_state({{"exp_avg/w", Tensor(DType::kFloat32, {2})},
                      {"exp_avg_sq/w", Tensor(DType::kFloat32, {2})},
                      {"step/w", Tensor::scalar_f32(3)}});
  });
  EXPECT_NE(message.find("AdamW: state 'step/w': expected an int64 scalar >= 1"), std::string::npos)
      << message;
}

TEST(OptimizerOptions, RefusesInvalidHyperparameters) {
  std::string message = testing::error_of(
      ErrorKind::kInvalid, [] { quant::Sgd({.lr = 0.1, .momentum = 0, .nesterov = true}); });
  EXPECT_NE(message.find("Nesterov only with momentum"), std::string::npos) << message;
  message = testing::error_of(ErrorKind::kInvalid, [] { quant::AdamW({.beta2 = 1.0}); });
  EXPECT_NE(message.find("0 <= beta2 < 1"), std::string::npos) << message;
  quant::AdamW adamw({});
  message = testing::error_of(ErrorKind::kInvalid, [&] { adamw.set_lr(-1e-3); });
  EXPECT_NE(message.find("AdamW: expected a finite learning rate >= 0"), std::string::npos)
      << message;
  adamw.set_lr(0);  // where a schedule ends
  EXPECT_EQ(adamw.lr(), 0);
}

}  // namespace
}  // namespace qforge
