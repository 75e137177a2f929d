#include "imp/data/fashion_mnist.h"

#include <filesystem>

#include "imp/core/error.h"
#include "imp/data/idx.h"

namespace imp {
namespace {

constexpr int64_t kNumClasses = 10;

// Returns the path of `name` under `root`, preferring the gzipped file that
// the release ships and accepting one that was unpacked.
std::string find_release_file(const std::string& root, const std::string& name) {
  const std::filesystem::path gzipped = std::filesystem::path(root) / (name + ".gz");
  const std::filesystem::path plain = std::filesystem::path(root) / name;
  if (std::filesystem::exists(gzipped)) return gzipped.string();
  if (std::filesystem::exists(plain)) return plain.string();
  throw DataError(str_cat("Fashion-MNIST file not found: neither '", gzipped.string(), "' nor '",
                          plain.string(), "' exists; install the dataset-fashion-mnist package "
                          "or set the dataset root to the folder that contains the release files"));
}

torch::Tensor load_images(const std::string& path) {
  torch::Tensor images = read_idx(path);
  IMP_REQUIRE(DataError, images.dim() == 3 && images.scalar_type() == torch::kUInt8,
              "Fashion-MNIST image file '", path, "' holds a ", images.scalar_type(), " tensor of shape ",
              images.sizes(), ", expected uint8 [N, 28, 28]; check that it is an images file");
  return images;
}

torch::Tensor load_labels(const std::string& path) {
  torch::Tensor labels = read_idx(path);
  IMP_REQUIRE(DataError, labels.dim() == 1 && labels.scalar_type() == torch::kUInt8,
              "Fashion-MNIST label file '", path, "' holds a ", labels.scalar_type(), " tensor of shape ",
              labels.sizes(), ", expected uint8 [N]; check that it is a labels file");
  if (labels.numel() > 0) {
    const int64_t max_label = labels.max().item<int64_t>();
    IMP_REQUIRE(DataError, max_label < kNumClasses, "Fashion-MNIST label file '", path, "' contains label ",
                max_label, ", expected labels in [0, ", kNumClasses, "); the file is corrupt, download it again");
  }
  return labels.to(torch::kInt64);
}

}  // namespace

const std::vector<std::string>& fashion_mnist_class_names() {
  // The label table of the Fashion-MNIST README (github.com/zalandoresearch/
  // fashion-mnist, installed as /usr/share/doc/dataset-fashion-mnist/README.md.gz),
  // lower-cased, with "T-shirt/top" shortened to "t-shirt".
  static const std::vector<std::string> names = {
      "t-shirt", "trouser", "pullover", "dress", "coat",
      "sandal",  "shirt",   "sneaker",  "bag",   "ankle boot"};
  return names;
}

ImageClassData load_fashion_mnist(const std::string& root, bool train) {
  const std::string prefix = train ? "train" : "t10k";
  const std::string images_path = find_release_file(root, prefix + "-images-idx3-ubyte");
  const std::string labels_path = find_release_file(root, prefix + "-labels-idx1-ubyte");

  ImageClassData data;
  data.images = load_images(images_path);
  data.labels = load_labels(labels_path);
  data.class_names = fashion_mnist_class_names();
  IMP_REQUIRE(DataError, data.images.size(0) == data.labels.size(0), "Fashion-MNIST files disagree: '",
              images_path, "' holds ", data.images.size(0), " images but '", labels_path, "' holds ",
              data.labels.size(0), " labels; one of them is from another release, download both again");
  return data;
}

}  // namespace imp
