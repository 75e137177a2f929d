// Loader for the Fashion-MNIST release (Xiao, Rasul and Vollgraf, 2017,
// arXiv:1708.07747):
// 28x28 grayscale images of clothing in 10 classes, 60000 for training and
// 10000 for testing, stored as idx files.
#pragma once

#include <torch/types.h>

#include <string>
#include <vector>

namespace imp {

// A labelled image classification set.
struct ImageClassData {
  torch::Tensor images;                  // [N, H, W] uint8, 0 is background
  torch::Tensor labels;                  // [N] int64, in [0, class_names.size())
  std::vector<std::string> class_names;  // indexed by label
};

// Class names of Fashion-MNIST in label order, lower case so that they read
// well inside captions.
const std::vector<std::string>& fashion_mnist_class_names();

// Loads the training split (train-*-ubyte files) or the test split (t10k-*)
// from `root`, the folder that contains the release files, gzipped or not.
// Throws DataError naming the file when one is missing or malformed, when the
// image and label counts differ, or when a label is outside [0, 10).
ImageClassData load_fashion_mnist(const std::string& root, bool train);

}  // namespace imp
