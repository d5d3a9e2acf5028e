// Writes the seeds that are not files in the repository: the small models of
// fuzz/seed_models.h, the fusion plans `qforge plan -o` writes for the small CNN (the model
// the plan target applies plans to) and for a bundled model, and JPEGs in each layout TurboJPEG
// writes (chroma subsampling, gray, CMYK, progressive).
//   make_seeds <model dir> <plan dir> <bundled model.onnx> <jpeg dir>
#include <turbojpeg.h>

#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "fuzz/seed_models.h"
#include "graph/onnx_import.h"
#include "kernels/error.h"
#include "runtime/transform_pipeline.h"

namespace {

void write(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out << bytes;
  if (!out.flush()) qforge::throw_io("make_seeds: cannot write '" + path + "'");
}

std::string plan_json(const qforge::graph::Graph& model) {
  return qforge::runtime::plan_model(model, {}).plan.to_json();
}

// A 19x13 image of gradients in `format`'s channels, compressed with `subsampling` and `flags`.
std::string jpeg(int format, int subsampling, int flags) {
  const int width = 19, height = 13, channels = tjPixelSize[format];
  std::vector<unsigned char> pixels(static_cast<size_t>(width) * height * channels);
  for (size_t i = 0; i < pixels.size(); ++i) {
    pixels[i] = static_cast<unsigned char>((i * 37 + i / channels * 11) % 256);
  }
  tjhandle handle = tjInitCompress();
  unsigned char* out = nullptr;
  unsigned long out_size = 0;
  int status = tjCompress2(handle, pixels.data(), width, 0, height, format, &out, &out_size,
                           subsampling, 85, flags);
  std::string bytes = status == 0 ? std::string(reinterpret_cast<char*>(out), out_size) : "";
  tjFree(out);
  tjDestroy(handle);
  if (status != 0) qforge::throw_internal("make_seeds: TurboJPEG could not compress a seed");
  return bytes;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 5) {
    std::fprintf(stderr,
                 "usage: make_seeds <model dir> <plan dir> <bundled model.onnx> <jpeg dir>\n");
    return 2;
  }
  const std::string models = argv[1], plans = argv[2], bundled = argv[3], jpegs = argv[4];
  try {
    const std::string conv_net = qforge::fuzz::conv_net_model();
    write(models + "/conv_net.onnx", conv_net);
    write(models + "/token_net.onnx", qforge::fuzz::token_net_model());
    write(models + "/attention_net.onnx", qforge::fuzz::attention_net_model());
    write(models + "/sampling_net.onnx", qforge::fuzz::sampling_net_model());
    write(models + "/nms_tail.onnx", qforge::fuzz::nms_tail_model());
    write(models + "/recurrent_net.onnx", qforge::fuzz::recurrent_net_model());
    write(models + "/conv_net_external.onnx", qforge::fuzz::conv_net_model(/*external=*/true));
    write(plans + "/conv_net.plan.json",
          plan_json(*qforge::graph::parse_onnx(conv_net, "conv_net.onnx")));
    write(plans + "/bundled.plan.json", plan_json(*qforge::graph::load_onnx(bundled)));
    write(jpegs + "/rgb420.jpg", jpeg(TJPF_RGB, TJSAMP_420, TJFLAG_ACCURATEDCT));
    write(jpegs + "/rgb444.jpg", jpeg(TJPF_RGB, TJSAMP_444, 0));
    write(jpegs + "/rgb411.jpg", jpeg(TJPF_RGB, TJSAMP_411, 0));
    write(jpegs + "/gray.jpg", jpeg(TJPF_GRAY, TJSAMP_GRAY, 0));
    write(jpegs + "/cmyk.jpg", jpeg(TJPF_CMYK, TJSAMP_422, 0));
    write(jpegs + "/progressive.jpg", jpeg(TJPF_RGB, TJSAMP_420, TJFLAG_PROGRESSIVE));
  } catch (const qforge::Error& e) {
    std::fprintf(stderr, "make_seeds: %s\n", e.what());
    return 1;
  }
  return 0;
}
