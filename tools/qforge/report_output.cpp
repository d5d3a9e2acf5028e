#include "tools/qforge/report_output.h"

#include <cstdio>

namespace qforge::cli {

void print_indented(const std::string& text) {
  size_t begin = 0;
  while (begin < text.size()) {
    size_t end = text.find('\n', begin);
    if (end == std::string::npos) end = text.size();
    std::printf("  %.*s\n", static_cast<int>(end - begin), text.data() + begin);
    begin = end + 1;
  }
}

void commit_text_file(io::AtomicFile& file, const std::string& text, const char* label,
                      const std::string& path) {
  file.write(text);
  file.write("\n");
  io::commit_together({&file});
  std::printf("%-12s written to %s\n", label, path.c_str());
}

double percent(size_t part, size_t whole) {
  return whole == 0 ? 0.0 : 100.0 * static_cast<double>(part) / static_cast<double>(whole);
}

void print_smoothquant(const quant::SmoothQuantResult& result) {
  std::printf("smoothquant  alpha %g: %zu norms smoothed, factors in [%.5g, %.5g]; %zu kept\n",
              result.alpha, result.smoothed.size(), static_cast<double>(result.min_factor()),
              static_cast<double>(result.max_factor()), result.refused.size());
  for (const quant::SmoothedLayerNorm& s : result.smoothed) {
    std::string consumers;
    for (const std::string& c : s.consumers) {
      if (!consumers.empty()) consumers.append(", ");
      consumers.append(c);
    }
    std::printf("  smoothed %s: %zu channels, factors in [%.5g, %.5g]", s.layer_norm.c_str(),
                s.factors.size(), static_cast<double>(s.min_factor),
                static_cast<double>(s.max_factor));
    if (s.unit_channels > 0) {
      std::printf(" (%lld kept at 1: zero range)", static_cast<long long>(s.unit_channels));
    }
    std::printf(" -> %s\n", consumers.c_str());
  }
  for (const quant::SmoothQuantRefusal& r : result.refused) {
    std::printf("  kept %s: %s\n", r.layer_norm.c_str(), r.reason.c_str());
  }
}

nlohmann::json smoothquant_json(const quant::SmoothQuantResult& result) {
  nlohmann::json smoothed = nlohmann::json::array();
  for (const quant::SmoothedLayerNorm& s : result.smoothed) {
    smoothed.push_back({{"layer_norm", s.layer_norm},
                        {"consumers", s.consumers},
                        {"channels", s.factors.size()},
                        {"min_factor", s.min_factor},
                        {"max_factor", s.max_factor},
                        {"unit_channels", s.unit_channels},
                        {"factors", s.factors}});
  }
  nlohmann::json refused = nlohmann::json::array();
  for (const quant::SmoothQuantRefusal& r : result.refused) {
    refused.push_back({{"layer_norm", r.layer_norm}, {"reason", r.reason}});
  }
  return {{"alpha", result.alpha},
          {"min_factor", result.min_factor()},
          {"max_factor", result.max_factor()},
          {"smoothed", smoothed},
          {"refused", refused}};
}

}  // namespace qforge::cli
