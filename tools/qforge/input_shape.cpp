// --input-shape and the import options it makes.
#include "tools/qforge/input_shape.h"

#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "graph/tail.h"
#include "tools/io/npy.h"
#include "tools/io/npz.h"
#include "tools/qforge/cli_checks.h"

namespace qforge::cli {

namespace {

// A spec's name (empty for the unnamed form) and dims; the message of what is wrong, else empty.
std::string parse_spec(const std::string& spec, std::string* name, std::vector<int64_t>* dims) {
  const size_t eq = spec.find('=');
  *name = eq == std::string::npos ? std::string() : spec.substr(0, eq);
  if (eq != std::string::npos && name->empty()) {
    return "expected NAME=D1,D2,... or D1,D2,..., got '" + spec + "'";
  }
  const std::string list = eq == std::string::npos ? spec : spec.substr(eq + 1);
  dims->clear();
  const CLI::Validator positive = integer_at_least(1);
  size_t begin = 0;
  while (true) {
    const size_t comma = list.find(',', begin);
    std::string item =
        list.substr(begin, comma == std::string::npos ? std::string::npos : comma - begin);
    if (std::string why = positive(item); !why.empty()) return why;
    dims->push_back(std::stoll(item));
    if (comma == std::string::npos) return {};
    begin = comma + 1;
  }
}

}  // namespace

void add_input_shape_option(CLI::App& cmd, InputShapeFlag& flag,
                            const PreprocessOverrides* preprocess) {
  flag.preprocess = preprocess;
  cmd.add_option("--input-shape", flag.specs,
                 "the model input's dims after the batch, C,H,W for images: fixes dynamic "
                 "(symbolic) height and width; NAME=D1,D2,... for each input of a model of "
                 "several (NAME=12 for token ids of 12 tokens); default: the .npy data's rows, "
                 "an .npz's rows of each input, or an image folder's --crop (or --preset's)")
      ->check(CLI::Validator(
          [](std::string& spec) {
            std::string name;
            std::vector<int64_t> dims;
            return parse_spec(spec, &name, &dims);
          },
          "DIMS|NAME=DIMS"));
  cmd.add_flag("--no-batch-axis", flag.no_batch_axis,
               "the model's input is one sample without a batch axis (torchvision's detectors "
               "take one image [3, H, W]): qforge gives it one of size 1, runs it one sample at a "
               "time and writes the file's shapes back; an image folder or an .npy of one dim "
               "more than the input says so without the flag");
}

graph::ImportOptions import_options_for(const InputShapeFlag& flag, const std::string& data) {
  graph::ImportOptions options;
  options.require_static_sample =
      "give them with --input-shape (the dims after the batch, e.g. 3,224,224, or NAME=DIMS "
      "for each input of several), feed data of that shape (.npy, or an .npz of every input), "
      "or crop an image folder to a size (--crop or --preset)";
  options.no_batch_axis = flag.no_batch_axis;
  std::error_code ec;
  // A sample's rank: a model whose input has this rank takes one sample without a batch axis.
  if (data.size() > 4 && data.ends_with(".npy") && std::filesystem::is_regular_file(data, ec)) {
    const auto shape = io::NpyReader::open(data).shape();
    if (!shape.empty()) options.data_sample_rank = shape.size() - 1;
  } else if (flag.preprocess && !data.empty() && std::filesystem::is_directory(data, ec)) {
    options.data_sample_rank = 3;  // an image: C, H, W (H, W, C with --layout NHWC)
  }
  if (!flag.specs.empty()) {
    options.sample_shape_origin = "--input-shape";
    for (const std::string& spec : flag.specs) {
      std::string name;
      std::vector<int64_t> dims;
      if (std::string why = parse_spec(spec, &name, &dims); !why.empty()) {
        throw_invalid("--input-shape: " + why);
      }
      if (name.empty() && flag.specs.size() > 1) {
        throw_invalid("--input-shape: '" + spec +
                      "' names no input; with several, give each as NAME=D1,D2,...");
      }
      const graph::Shape shape(dims.begin(), dims.end());
      if (name.empty()) {
        options.sample_shape = shape;
      } else if (!options.input_sample_shapes.emplace(name, shape).second) {
        throw_invalid("--input-shape: input '" + name + "' is given twice");
      }
    }
    return options;
  }
  if (data.size() > 4 && data.ends_with(".npy") && std::filesystem::is_regular_file(data, ec)) {
    const io::NpyReader npy = io::NpyReader::open(data);
    if (npy.shape().size() >= 2) {
      options.sample_shape = graph::Shape(npy.shape().begin() + 1, npy.shape().end());
      options.sample_shape_origin = "the rows of '" + data + "'";
      options.sample_shape_must_match = false;  // the data's own checks name a mismatch
    }
    return options;
  }
  if (data.size() > 4 && data.ends_with(".npz") && std::filesystem::is_regular_file(data, ec)) {
    // Each array's rows give its input's dims (a text model's sequence length); the other
    // arrays ('labels') name no input and are left alone.
    for (const auto& [name, shape] : io::read_npz_shapes(data)) {
      if (shape.size() >= 2)
        options.input_sample_shapes[name] = graph::Shape(shape.begin() + 1, shape.end());
    }
    options.sample_shape_origin = "the rows of '" + data + "'";
    options.sample_shape_must_match = false;  // the data's own checks name a mismatch
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
                                                const std::string& data, bool note_tail) {
  auto model = graph::load_onnx(path, import_options_for(flag, data));
  if (model->added_batch_axis.any()) {
    const graph::Value* input = model->inputs().front();
    const graph::Shape& shape = input->known_shape();
    std::fprintf(stderr,
                 "qforge: note: '%s': input '%s' %s has no batch axis: the model takes one "
                 "sample, and qforge runs it one sample at a time (batch 1) and writes it as the "
                 "file has it\n",
                 path.c_str(), input->name().c_str(),
                 kernels::shape_str(graph::Shape(shape.begin() + 1, shape.end())).c_str());
  }
  if (note_tail && model->tail) {
    std::string reads;
    for (const graph::Value* out : model->outputs())
      reads += (reads.empty() ? "'" : ", '") + out->name() + "'";
    std::fprintf(stderr,
                 "qforge: note: '%s': %s is written back to the models qforge writes but not "
                 "run; qforge's outputs are %s\n",
                 path.c_str(), graph::describe_tail(*model->tail).c_str(), reads.c_str());
  }
  return model;
}

int64_t batch_for(const graph::Graph& model, int64_t batch) {
  return model.added_batch_axis.any() ? 1 : batch;
}

}  // namespace qforge::cli
