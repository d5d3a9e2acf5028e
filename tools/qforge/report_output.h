// Console and file output the subcommands' reports share.
#pragma once

#include <cstddef>
#include <string>

#include <nlohmann/json.hpp>

#include "quant/smoothquant.h"
#include "tools/io/atomic_file.h"

namespace qforge::cli {

// Indents every line of a block of report text under its heading.
void print_indented(const std::string& text);

// Writes `text` and a newline to `file`, commits it as the command's final output
// (io::commit_together: SIGINT, SIGTERM and SIGHUP ignored from there) and prints "<label>
// written to <path>" with the label in the console's 12-column heading field.
void commit_text_file(io::AtomicFile& file, const std::string& text, const char* label,
                      const std::string& path);

// The SmoothQuant lines of `qforge calibrate`: alpha, the factor range, one line per smoothed
// LayerNorm and one per LayerNorm left as it was, with the reason.
// part / whole in percent; 0 when whole is 0.
double percent(size_t part, size_t whole);

void print_smoothquant(const quant::SmoothQuantResult& result);
// The same as a JSON object.
nlohmann::json smoothquant_json(const quant::SmoothQuantResult& result);

}  // namespace qforge::cli
