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
  file.commit();
  std::printf("%-12s written to %s\n", label, path.c_str());
}

}  // namespace qforge::cli
