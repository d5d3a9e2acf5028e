// --input-shape and the import options it makes.
#include "tools/qforge/input_shape.h"

#include <filesystem>

#include "tools/io/npy.h"
#include "tools/qforge/cli_checks.h"

namespace qforge::cli {

void add_input_shape_option(CLI::App& cmd, InputShapeFlag& flag,
                            const PreprocessOverrides* preprocess) {
  flag.preprocess = preprocess;
  cmd.add_option("--input-shape", flag.dims,
                 "the model input's dims after the batch, C,H,W for images: fixes dynamic "
                 "(symbolic) height and width; default: the .npy data's rows, or an image folder's "
                 "--crop (or --preset's)")
      ->delimiter(',')
      ->check(integer_at_least(1));
}

graph::ImportOptions import_options_for(const InputShapeFlag& flag, const std::string& data) {
  graph::ImportOptions options;
  options.require_static_sample =
      "give them with --input-shape (the dims after the batch, e.g. 3,224,224), feed .npy data "
      "of that shape, or crop an image folder to a size (--crop or --preset)";
  if (!flag.dims.empty()) {
    options.sample_shape = graph::Shape(flag.dims.begin(), flag.dims.end());
    options.sample_shape_origin = "--input-shape";
    return options;
  }
  std::error_code ec;
  if (data.size() > 4 && data.ends_with(".npy") && std::filesystem::is_regular_file(data, ec)) {
    const io::NpyReader npy = io::NpyReader::open(data);
    if (npy.shape().size() >= 2) {
      options.sample_shape = graph::Shape(npy.shape().begin() + 1, npy.shape().end());
      options.sample_shape_origin = "the rows of '" + data + "'";
      options.sample_shape_must_match = false;  // the data's own checks name a mismatch
    }
    return options;
  }
  if (flag.preprocess && !data.empty() && std::filesystem::is_directory(data, ec)) {
    const PreprocessOverrides& pre = *flag.preprocess;
    std::vector<int> crop = pre.crop;
    std::string origin = "--crop";
    if (crop.empty() && pre.preset == "imagenet") {
      crop = {224};
      origin = "--preset imagenet's crop";
    }
    if (!crop.empty()) {
      const int64_t h = crop[0];
      const int64_t w = crop.size() > 1 ? crop[1] : crop[0];
      options.sample_shape = pre.layout == "NHWC" ? graph::Shape{h, w, 3} : graph::Shape{3, h, w};
      options.sample_shape_origin = origin;
      options.sample_shape_must_match = false;  // preprocessing names a size the model refuses
    }
  }
  return options;
}

std::unique_ptr<graph::Graph> load_model_to_run(const std::string& path, const InputShapeFlag& flag,
                                                const std::string& data) {
  return graph::load_onnx(path, import_options_for(flag, data));
}

}  // namespace qforge::cli
