#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "../scratch_dir.h"
#include "imp/core/error.h"
#include "imp/data/fashion_mnist.h"

namespace {

// Where the dataset-fashion-mnist package installs the release files.
const std::string kDatasetRoot = "/usr/share/datasets/fashion-mnist";

using imp::testing::ScratchDir;

// Writes an uncompressed uint8 idx file with the given dimensions and values.
void write_idx(const std::string& path, const std::vector<uint32_t>& dims, const std::vector<uint8_t>& data) {
  std::vector<uint8_t> bytes = {0, 0, 0x08, static_cast<uint8_t>(dims.size())};
  for (uint32_t dim : dims) {
    for (int shift = 24; shift >= 0; shift -= 8) bytes.push_back(static_cast<uint8_t>(dim >> shift));
  }
  bytes.insert(bytes.end(), data.begin(), data.end());
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

std::string load_error(const std::string& root) {
  try {
    imp::load_fashion_mnist(root, /*train=*/false);
  } catch (const imp::DataError& error) {
    return error.what();
  }
  ADD_FAILURE() << "load_fashion_mnist accepted " << root;
  return "";
}

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

bool dataset_installed() { return std::filesystem::is_directory(kDatasetRoot); }

TEST(FashionMnist, TrainSplitShapesAndBalance) {
  if (!dataset_installed()) GTEST_SKIP() << kDatasetRoot << " is missing; install dataset-fashion-mnist";
  const imp::ImageClassData data = imp::load_fashion_mnist(kDatasetRoot, /*train=*/true);

  EXPECT_EQ(data.images.sizes(), torch::IntArrayRef({60000, 28, 28}));
  EXPECT_EQ(data.images.scalar_type(), torch::kUInt8);
  EXPECT_EQ(data.labels.sizes(), torch::IntArrayRef({60000}));
  EXPECT_EQ(data.labels.scalar_type(), torch::kInt64);
  // The release balances its classes: 6000 training images each.
  EXPECT_TRUE(torch::bincount(data.labels).equal(torch::full({10}, 6000, torch::kInt64)))
      << torch::bincount(data.labels);
  EXPECT_GT(data.images.max().item<int>(), 200) << "pixels should span most of [0, 255]";
}

TEST(FashionMnist, TestSplitShapesAndBalance) {
  if (!dataset_installed()) GTEST_SKIP() << kDatasetRoot << " is missing; install dataset-fashion-mnist";
  const imp::ImageClassData data = imp::load_fashion_mnist(kDatasetRoot, /*train=*/false);

  EXPECT_EQ(data.images.sizes(), torch::IntArrayRef({10000, 28, 28}));
  EXPECT_EQ(data.labels.sizes(), torch::IntArrayRef({10000}));
  EXPECT_TRUE(torch::bincount(data.labels).equal(torch::full({10}, 1000, torch::kInt64)));
}

TEST(FashionMnist, ClassNamesInLabelOrder) {
  const std::vector<std::string> expected = {"t-shirt", "trouser", "pullover", "dress", "coat",
                                             "sandal",  "shirt",   "sneaker",  "bag",   "ankle boot"};
  EXPECT_EQ(imp::fashion_mnist_class_names(), expected);
  if (!dataset_installed()) return;
  EXPECT_EQ(imp::load_fashion_mnist(kDatasetRoot, /*train=*/false).class_names, expected);
}

TEST(FashionMnist, UncompressedFilesAccepted) {
  ScratchDir dir;
  write_idx(dir.file("t10k-images-idx3-ubyte"), {2, 2, 2}, {0, 1, 2, 3, 4, 5, 6, 7});
  write_idx(dir.file("t10k-labels-idx1-ubyte"), {2}, {9, 0});

  const imp::ImageClassData data = imp::load_fashion_mnist(dir.path(), /*train=*/false);
  EXPECT_EQ(data.images.sizes(), torch::IntArrayRef({2, 2, 2}));
  EXPECT_TRUE(data.labels.equal(torch::tensor({9, 0}, torch::kInt64)));
}

TEST(FashionMnist, MissingFileNamed) {
  ScratchDir dir;
  const std::string message = load_error(dir.path());
  EXPECT_TRUE(contains(message, dir.file("t10k-images-idx3-ubyte.gz"))) << message;
  EXPECT_TRUE(contains(message, "not found")) << message;
  EXPECT_TRUE(contains(message, "dataset-fashion-mnist")) << message;
}

TEST(FashionMnist, CountMismatchNamesBothFiles) {
  ScratchDir dir;
  write_idx(dir.file("t10k-images-idx3-ubyte"), {3, 1, 1}, {0, 1, 2});
  write_idx(dir.file("t10k-labels-idx1-ubyte"), {2}, {0, 1});

  const std::string message = load_error(dir.path());
  EXPECT_TRUE(contains(message, dir.file("t10k-images-idx3-ubyte"))) << message;
  EXPECT_TRUE(contains(message, dir.file("t10k-labels-idx1-ubyte"))) << message;
  EXPECT_TRUE(contains(message, "3 images")) << message;
  EXPECT_TRUE(contains(message, "2 labels")) << message;
}

TEST(FashionMnist, LabelOutOfRange) {
  ScratchDir dir;
  write_idx(dir.file("t10k-images-idx3-ubyte"), {2, 1, 1}, {0, 1});
  write_idx(dir.file("t10k-labels-idx1-ubyte"), {2}, {3, 12});

  const std::string message = load_error(dir.path());
  EXPECT_TRUE(contains(message, dir.file("t10k-labels-idx1-ubyte"))) << message;
  EXPECT_TRUE(contains(message, "contains label 12")) << message;
}

TEST(FashionMnist, LabelsFileWithImageShape) {
  ScratchDir dir;
  write_idx(dir.file("t10k-images-idx3-ubyte"), {2, 1, 1}, {0, 1});
  write_idx(dir.file("t10k-labels-idx1-ubyte"), {2, 1, 1}, {0, 1});

  const std::string message = load_error(dir.path());
  EXPECT_TRUE(contains(message, dir.file("t10k-labels-idx1-ubyte"))) << message;
  EXPECT_TRUE(contains(message, "expected uint8 [N]")) << message;
}

}  // namespace
