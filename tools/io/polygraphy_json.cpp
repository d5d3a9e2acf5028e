// Polygraphy RunResults JSON: {"lst": [[runner, [iteration, ...]], ...], "polygraphy_class":
// "RunResults"}; an iteration is {"outputs": {name: array}, "runtime": s, "runner_name": ...};
// an array is {"array": base64 of np.save bytes, "polygraphy_class": "ndarray"}, possibly inside
// {"values": array, "polygraphy_class": "LazyArray"}.
#include "tools/io/polygraphy_json.h"

#include <array>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "tools/io/npy.h"

namespace qforge::io {
namespace {

using nlohmann::json;

[[noreturn]] void bad(const std::string& path, const std::string& what) {
  throw_invalid("'" + path + "': expected Polygraphy RunResults JSON, " + what);
}

kernels::Tensor decode_array(const json& value, const std::string& path, const std::string& name) {
  const std::string where = path + ": tensor '" + name + "'";
  if (!value.is_object()) bad(path, "got a non-object value for tensor '" + name + "'");
  if (value.contains("values")) return decode_array(value["values"], path, name);
  if (!value.contains("array") || !value["array"].is_string()) {
    bad(path, "got tensor '" + name + "' without an \"array\" string");
  }
  return parse_npy(decode_base64(value["array"].get_ref<const std::string&>(), where), where);
}

}  // namespace

std::string decode_base64(std::string_view text, const std::string& where) {
  std::array<int, 256> code;
  code.fill(-1);
  const char* alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  for (int i = 0; i < 64; ++i) code[static_cast<unsigned char>(alphabet[i])] = i;
  if (text.size() % 4 != 0) throw_invalid("'" + where + "': base64 length not a multiple of 4");
  std::string out;
  out.reserve(text.size() / 4 * 3);
  for (size_t i = 0; i < text.size(); i += 4) {
    int v[4];
    int pad = 0;
    for (int k = 0; k < 4; ++k) {
      const char c = text[i + static_cast<size_t>(k)];
      if (c == '=' && i + 4 == text.size() && k >= 2) {
        v[k] = 0;
        ++pad;
        continue;
      }
      v[k] = pad ? -1 : code[static_cast<unsigned char>(c)];
      if (v[k] < 0) {
        throw_invalid("'" + where + "': invalid base64 at character " + std::to_string(i + k));
      }
    }
    const uint32_t bits = (static_cast<uint32_t>(v[0]) << 18) |
                          (static_cast<uint32_t>(v[1]) << 12) | (static_cast<uint32_t>(v[2]) << 6) |
                          static_cast<uint32_t>(v[3]);
    out.push_back(static_cast<char>(bits >> 16));
    if (pad < 2) out.push_back(static_cast<char>((bits >> 8) & 0xff));
    if (pad < 1) out.push_back(static_cast<char>(bits & 0xff));
  }
  return out;
}

PolygraphyOutputs read_polygraphy_outputs(const std::string& path, const std::string& runner) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw_io("cannot read '" + path + "'");
  json doc;
  try {
    doc = json::parse(in);
  } catch (const json::exception& e) {
    throw_invalid("'" + path + "': invalid JSON: " + e.what());
  }
  if (!doc.is_object() || !doc.contains("lst") || !doc["lst"].is_array()) {
    bad(path, "got no \"lst\" list");
  }
  PolygraphyOutputs result;
  result.runners = doc["lst"].size();
  std::string names;
  const json* chosen = nullptr;
  for (const json& entry : doc["lst"]) {
    if (!entry.is_array() || entry.size() != 2 || !entry[0].is_string() || !entry[1].is_array()) {
      bad(path, "got a \"lst\" entry that is not [runner name, [iterations]]");
    }
    const std::string& name = entry[0].get_ref<const std::string&>();
    names.append(names.empty() ? "" : ", ").append(name);
    if (!chosen && (runner.empty() || runner == name)) {
      chosen = &entry;
      result.runner = name;
    }
  }
  if (!chosen) {
    if (runner.empty()) bad(path, "got no runner");
    throw_invalid("'" + path + "': no runner '" + runner + "' (the file holds: " + names + ")");
  }
  const json& iterations = (*chosen)[1];
  result.iterations = iterations.size();
  if (iterations.empty()) bad(path, "got no iteration for runner '" + result.runner + "'");
  const json& first = iterations[0];
  if (!first.is_object() || !first.contains("outputs") || !first["outputs"].is_object()) {
    bad(path, "got an iteration of runner '" + result.runner + "' without \"outputs\"");
  }
  for (const auto& [name, value] : first["outputs"].items()) {
    result.tensors[name] = decode_array(value, path, name);
  }
  return result;
}

}  // namespace qforge::io
