// One harness over the catalog: every unit (ONNX op, internal op, fused module) has a case in
// tests/runtime/catalog_harness_cases.h and declares how its gradient is defined; its kernel's
// forward meets ONNX Runtime (or its lowering there, or a naive reference), its backward meets
// finite differences (or a closed form), a module's lowering trains, and outputs and gradients
// do not depend on the thread count. A check that cannot fail is no check: the last test
// injects faults and expects them caught.
#include <gtest/gtest-spi.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "graph/catalog.h"
#include "runtime/resolve.h"
#include "runtime/training.h"
#include "tests/runtime/catalog_harness_cases.h"
#include "tests/support/catalog_harness.h"

namespace qforge {
namespace {

using graph::Gradient;
using graph::SchemaKind;
using testing::harness::HarnessCase;
using testing::harness::KernelRun;
using testing::harness::Role;
using testing::harness::Tensor;

const std::vector<HarnessCase>& cases() {
  static const std::vector<HarnessCase> all = testing::harness::harness_cases();
  return all;
}

std::map<std::string, std::vector<const HarnessCase*>> cases_by_unit() {
  std::map<std::string, std::vector<const HarnessCase*>> out;
  for (const HarnessCase& c : cases()) out[c.op_type].push_back(&c);
  return out;
}

uint32_t seed_of(size_t index) {
  return 1000u + static_cast<uint32_t>(index);
}

// Coverage: a unit added to the catalog without a case, or without saying how its gradient is
// defined, fails here by name; so does a gradient rule the runtime does not keep.
TEST(CatalogHarness, EveryUnitHasACaseAndAGradientRule) {
  const auto by_unit = cases_by_unit();
  for (const graph::OpSchema* s : graph::all_schemas()) {
    const std::string unit(s->op_type);
    EXPECT_TRUE(by_unit.count(unit))
        << unit << ": no harness case (add one to tests/runtime/catalog_harness_cases.h)";
    switch (s->gradient) {
      case Gradient::kUndeclared:
        ADD_FAILURE() << unit
                      << ": the catalog does not say how its gradient is defined (kBackward, "
                         "kThroughLowering, or kNone with a reason)";
        break;
      case Gradient::kNone:
        EXPECT_FALSE(s->no_gradient_reason.empty()) << unit << ": kNone without a reason";
        break;
      case Gradient::kThroughLowering:
        EXPECT_EQ(s->kind, SchemaKind::kModule) << unit << ": only modules lower";
        EXPECT_NE(s->lower, nullptr) << unit << ": differentiated through a lowering it lacks";
        break;
      case Gradient::kBackward:
        break;
    }
  }
  for (const auto& [unit, unit_cases] : by_unit) {
    ASSERT_NE(graph::find_schema(unit), nullptr)
        << unit << ": a case for an op outside the catalog";
  }
}

// What each unit's runtime kernel differentiates agrees with the catalog: a unit with a
// backward differentiates every float data input of its cases (and at least one), one without
// (kNone) or differentiated through its lowering differentiates nothing.
TEST(CatalogHarness, RuntimeBackwardFollowsTheCatalog) {
  for (const auto& [unit, unit_cases] : cases_by_unit()) {
    const graph::OpSchema& s = *graph::find_schema(unit);
    bool any = false;
    for (const HarnessCase* c : unit_cases) {
      // A module's kernel serves inference only (its constant parameters prepared at creation).
      KernelRun run(*c, s.kind == SchemaKind::kModule ? KernelRun::Mode::kInference
                                                      : KernelRun::Mode::kTraining);
      for (size_t i = 0; i < c->inputs.size(); ++i) {
        if (c->inputs[i].role == Role::kAbsent) continue;
        const bool claims = run.kernel().differentiable_input(i);
        any = any || claims;
        if (s.gradient != Gradient::kBackward) {
          EXPECT_FALSE(claims) << c->label() << ": the catalog says "
                               << (s.gradient == Gradient::kNone ? "no gradient ("
                                                                 : "through its lowering (")
                               << s.no_gradient_reason << "), yet input " << i << " has a backward";
        } else {
          EXPECT_EQ(claims, c->differentiates(i))
              << c->label() << ": input " << i
              << (claims
                      ? " is a setting (or the form has no gradient: " + c->no_gradient_here +
                            "), yet the kernel differentiates it"
                      : std::string(" is differentiable, yet the kernel has no backward for it"));
        }
      }
    }
    if (s.gradient == Gradient::kBackward) {
      EXPECT_TRUE(any) << unit << ": the catalog says it has a backward, no case reaches one";
    }
  }
}

TEST(CatalogHarness, ForwardMatchesTheReference) {
  const std::vector<std::vector<Tensor>> ort = testing::harness::ort_references(cases());
  for (size_t i = 0; i < cases().size(); ++i) {
    const HarnessCase& c = cases()[i];
    SCOPED_TRACE(c.label());
    std::vector<Tensor> inputs = testing::harness::input_values(c);
    const std::vector<Tensor> want = c.naive ? c.naive(inputs) : ort[i];
    if (!c.training_forward) {
      testing::harness::expect_forward_matches(
          testing::harness::kernel_forward(c, KernelRun::Mode::kInference), want,
          c.forward_tolerance,
          c.label() + (c.naive ? " against its naive reference" : " against ONNX Runtime"));
    } else {
      testing::harness::expect_forward_matches(
          testing::harness::kernel_forward(c, KernelRun::Mode::kTraining), want,
          c.forward_tolerance, c.label() + " training kernel");
    }
  }
}

TEST(CatalogHarness, BackwardMatchesFiniteDifferencesOrClosedForm) {
  for (size_t i = 0; i < cases().size(); ++i) {
    const HarnessCase& c = cases()[i];
    if (testing::harness::schema_of(c).gradient != Gradient::kBackward) continue;
    SCOPED_TRACE(c.label());
    testing::harness::check_backward(c, seed_of(i));
  }
}

// What a backward reads is what its kernel declares: the training executor lets the rest go
// (another value may own the buffer by the backward), so the harness hands backward NaN there.
// The check bites: some units leave inputs or outputs out (ReLU its input, Conv its output).
TEST(CatalogHarness, BackwardReadsOnlyWhatItDeclares) {
  size_t poisoned = 0;
  for (size_t i = 0; i < cases().size(); ++i) {
    const HarnessCase& c = cases()[i];
    if (testing::harness::schema_of(c).gradient != Gradient::kBackward) continue;
    SCOPED_TRACE(c.label());
    poisoned += testing::harness::check_backward_reads(c, seed_of(i)).size();
  }
  EXPECT_GT(poisoned, 0u) << "no unit's backward left anything out: the check tested nothing";
}

// A unit's compact record (OpKernel::Record) gives its backward the same bits with what it
// spares gone, and its outputs again where it says so. The check bites: ReLU, FakeQuant and
// MaxPool offer records.
TEST(CatalogHarness, RecordsStandInForWhatTheySpare) {
  std::set<std::string> offered;
  for (size_t i = 0; i < cases().size(); ++i) {
    const HarnessCase& c = cases()[i];
    if (testing::harness::schema_of(c).gradient != Gradient::kBackward) continue;
    SCOPED_TRACE(c.label());
    if (testing::harness::check_record(c, seed_of(i))) offered.insert(c.op_type);
  }
  EXPECT_TRUE(offered.count("Relu")) << "ReLU made no offer: the check tested less";
  EXPECT_TRUE(offered.count("FakeQuant")) << "FakeQuant made no offer: the check tested less";
  EXPECT_TRUE(offered.count("MaxPool")) << "MaxPool made no offer: the check tested less";
}

// What the training executor makes again instead of keeping is the forward's output, bit for
// bit. The check bites: FakeQuant and BatchNormalization (on batch statistics: again from the
// statistics its forward saved) are cheap to recompute.
TEST(CatalogHarness, RecomputedOutputsAreTheForwardsBits) {
  std::set<std::string> recomputing;
  for (size_t i = 0; i < cases().size(); ++i) {
    const HarnessCase& c = cases()[i];
    if (testing::harness::schema_of(c).gradient != Gradient::kBackward) continue;
    SCOPED_TRACE(c.label());
    if (testing::harness::check_recompute(c)) recomputing.insert(c.op_type);
  }
  EXPECT_TRUE(recomputing.count("FakeQuant"));
  EXPECT_TRUE(recomputing.count("BatchNormalization"));
}

// A module is trained through its lowering (quant::build_training_graph lowers every module):
// the lowered graph, with the case's float data and weights as parameters, runs in the training
// executor, and its gradients meet finite differences of its forward.
TEST(CatalogHarness, ModulesTrainThroughTheirLowering) {
  for (size_t index = 0; index < cases().size(); ++index) {
    const HarnessCase& c = cases()[index];
    const graph::OpSchema& s = testing::harness::schema_of(c);
    if (s.gradient != Gradient::kThroughLowering) continue;
    SCOPED_TRACE(c.label());
    const std::vector<runtime::TensorInfo> infos =
        KernelRun(c, KernelRun::Mode::kInference).output_infos();
    graph::Graph g;
    graph::NodeSpec spec{
        .name = "module", .op_type = c.op_type, .attributes = c.attributes, .domain = "qforge"};
    std::vector<std::string> parameters;
    std::vector<size_t> parameter_inputs;
    for (size_t i = 0; i < c.inputs.size(); ++i) {
      if (c.inputs[i].role == Role::kAbsent) {
        spec.inputs.push_back(nullptr);
        continue;
      }
      std::string name("in");
      name.append(std::to_string(i));
      spec.inputs.push_back(g.add_constant(name, c.inputs[i].value.clone()));
      if (c.differentiates(i)) {
        parameters.push_back(name);
        parameter_inputs.push_back(i);
      }
    }
    for (size_t k = 0; k < c.outputs; ++k) {
      std::string name("out");
      spec.output_names.push_back(name.append(std::to_string(k)));
    }
    graph::Node* node = g.add_node(std::move(spec));
    for (size_t k = 0; k < c.outputs; ++k) {
      node->output(k)->set_type(infos[k].dtype, infos[k].shape);
    }
    graph::Lowered lowered;
    s.lower(g, *node, lowered);
    for (size_t k = 0; k < c.outputs; ++k) {
      std::string name("out");
      g.mark_output(g.find_value(name.append(std::to_string(k))));
    }
    runtime::ResolveOptions resolve_options;
    resolve_options.parameters.insert(parameters.begin(), parameters.end());
    runtime::resolve(g, resolve_options);
    runtime::TrainingOptions options{parameters};
    options.batch_norm_running_statistics = true;  // the BN of a module is its inference BN
    runtime::TrainingExecutor executor(g, options);

    const std::vector<Tensor> r = testing::harness::random_directions(infos, seed_of(index));
    auto loss = [&] {
      std::vector<Tensor> y;
      for (const Tensor& t : executor.forward({})) y.push_back(t);
      return testing::harness::functional(y, r);
    };
    std::vector<std::vector<double>> want;
    for (runtime::Parameter& p : executor.parameters()) {
      want.push_back(testing::harness::finite_differences(p.value.data<float>(), p.value.numel(),
                                                          loss, testing::harness::kLoweringStep));
    }
    executor.forward({});
    executor.backward(r);
    ASSERT_EQ(executor.parameters().size(), parameters.size());
    for (size_t k = 0; k < parameters.size(); ++k) {
      const runtime::Parameter& p = executor.parameters()[k];
      ASSERT_TRUE(p.trainable()) << c.label() << ": no gradient reaches input "
                                 << parameter_inputs[k] << " through the lowering";
      std::string why;
      EXPECT_TRUE(
          testing::harness::gradient_matches(testing::harness::as_double(p.grad), want[k], &why))
          << c.label() << ": lowered gradient of " << p.name << ": " << why;
    }
  }
}

TEST(CatalogHarness, OutputsAndGradientsDoNotDependOnTheThreadCount) {
  for (size_t i = 0; i < cases().size(); ++i) {
    SCOPED_TRACE(cases()[i].label());
    testing::harness::check_thread_invariance(cases()[i], seed_of(i));
  }
}

// The bounds can fail: a forward off by 1e-4 relative, a gradient scaled by 1.01, and one
// gradient element off by 2% of the largest are each reported, for finite-difference and
// closed-form cases alike.
TEST(CatalogHarness, InjectedFaultsAreCaught) {
  std::set<std::string> probed;
  for (size_t i = 0; i < cases().size(); ++i) {
    const HarnessCase& c = cases()[i];
    if (testing::harness::schema_of(c).gradient != Gradient::kBackward) continue;
    const std::vector<bool> wanted = testing::harness::differentiated_inputs(c);
    if (std::find(wanted.begin(), wanted.end(), true) == wanted.end()) continue;
    if (!probed.insert(c.op_type).second) continue;  // the first differentiated case of a unit
    SCOPED_TRACE(c.label());
    std::vector<std::string> failures;
    testing::harness::check_backward(c, seed_of(i), {}, &failures);
    EXPECT_TRUE(failures.empty()) << failures.front();
    failures.clear();
    testing::harness::check_backward(
        c, seed_of(i),
        [](std::vector<double>& g) {
          for (double& v : g) v *= 1.01;
        },
        &failures);
    EXPECT_FALSE(failures.empty()) << c.label() << ": a gradient scaled by 1.01 passed";
    failures.clear();
    testing::harness::check_backward(
        c, seed_of(i),
        [](std::vector<double>& g) {
          size_t at = 0;
          double largest = 0;
          for (size_t k = 0; k < g.size(); ++k) {
            if (std::abs(g[k]) > largest) largest = std::abs(g[at = k]);
          }
          g[(at + g.size() / 2) % g.size()] += 0.02 * largest;
        },
        &failures);
    EXPECT_FALSE(failures.empty()) << c.label() << ": one element off by 2% of the largest passed";
  }
  for (const graph::OpSchema* s : graph::all_schemas()) {
    if (s->gradient == Gradient::kBackward) {
      EXPECT_TRUE(probed.count(std::string(s->op_type))) << s->op_type << ": no fault injected";
    }
  }
  const HarnessCase& conv = *cases_by_unit().at("Conv").front();
  const std::vector<Tensor> y = testing::harness::kernel_forward(conv, KernelRun::Mode::kInference);
  std::vector<Tensor> off = testing::harness::clones(y);
  for (float& v : off[0].span<float>()) v *= 1.0001f;
  ::testing::TestPartResultArray reported;
  {
    ::testing::ScopedFakeTestPartResultReporter intercept(
        ::testing::ScopedFakeTestPartResultReporter::INTERCEPT_ONLY_CURRENT_THREAD, &reported);
    testing::harness::expect_forward_matches(off, y, conv.forward_tolerance, "faulty Conv");
  }
  EXPECT_GT(reported.size(), 0) << "a Conv output off by 1e-4 relative passed";
}

}  // namespace
}  // namespace qforge
