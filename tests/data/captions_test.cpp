#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <set>
#include <string>
#include <vector>

#include "imp/data/captions.h"
#include "imp/data/fashion_mnist.h"

namespace {

const std::string kDatasetRoot = "/usr/share/datasets/fashion-mnist";

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

// Enough variants to cycle through every template several times.
constexpr uint64_t kVariants = 64;

const std::vector<imp::ImageAttributes> kAllAttributes = {
    {"dark", "small"}, {"dark", "large"}, {"light", "small"}, {"light", "large"}};

TEST(Captions, SameInputsSameCaption) {
  const imp::ImageAttributes attributes{"dark", "small"};
  for (uint64_t variant = 0; variant < kVariants; ++variant) {
    EXPECT_EQ(imp::make_caption("sandal", attributes, variant), imp::make_caption("sandal", attributes, variant));
  }
}

TEST(Captions, AtLeastEightTemplates) {
  std::set<std::string> captions;
  for (uint64_t variant = 0; variant < kVariants; ++variant) {
    const std::string caption = imp::make_caption("coat", {"light", "large"}, variant);
    EXPECT_TRUE(contains(caption, "coat")) << caption;
    captions.insert(caption);
  }
  EXPECT_GE(captions.size(), 8u);
}

TEST(Captions, WordsComeFromAttributes) {
  for (uint64_t variant = 0; variant < kVariants; ++variant) {
    const std::string caption = imp::make_caption("bag", {"dark", "small"}, variant);
    EXPECT_FALSE(contains(caption, "light")) << caption;
    EXPECT_FALSE(contains(caption, "large")) << caption;
  }
}

TEST(Captions, ArticleBeforeVowelSound) {
  for (const imp::ImageAttributes& attributes : kAllAttributes) {
    for (uint64_t variant = 0; variant < kVariants; ++variant) {
      const std::string caption = imp::make_caption("ankle boot", attributes, variant);
      EXPECT_FALSE(contains(caption, "a ankle")) << caption;
      EXPECT_FALSE(contains(caption, "a image")) << caption;
      EXPECT_FALSE(contains(caption, "an dark")) << caption;
      EXPECT_FALSE(contains(caption, "an small")) << caption;
    }
  }
  EXPECT_EQ(imp::fill_prompt("a {}", "ankle boot"), "an ankle boot");
  EXPECT_EQ(imp::fill_prompt("a {}", "coat"), "a coat");
  EXPECT_EQ(imp::fill_prompt("an image of a {}", "ankle boot"), "an image of an ankle boot");
  EXPECT_EQ(imp::fill_prompt("an {}", "t-shirt"), "a t-shirt");
  EXPECT_EQ(imp::fill_prompt("A {}", "umbrella"), "An umbrella");
  EXPECT_EQ(imp::fill_prompt("a {}", "uniform"), "a uniform");
  EXPECT_EQ(imp::fill_prompt("a {}", "hour glass"), "an hour glass");
}

TEST(Captions, DefaultPromptsHavePlaceholder) {
  const std::vector<std::string> prompts = imp::default_prompts();
  EXPECT_GE(prompts.size(), 4u);
  for (const std::string& prompt : prompts) EXPECT_TRUE(contains(prompt, "{}")) << prompt;
}

// Hand-made 28x28 images: 784 pixels, the thresholds are a foreground mean
// above 150 for "light" and a foreground fraction above 0.5 for "large".
TEST(CaptionAttributes, HandMadeImages) {
  torch::Tensor small_bright = torch::zeros({28, 28}, torch::kUInt8);
  small_bright.slice(0, 10, 14).slice(1, 10, 14).fill_(250);  // 16 of 784 pixels, mean 250
  const imp::ImageAttributes small_light = imp::image_attributes(small_bright);
  EXPECT_EQ(small_light.brightness, "light");
  EXPECT_EQ(small_light.size, "small");

  const torch::Tensor full_dim = torch::full({28, 28}, 40, torch::kUInt8);  // every pixel, mean 40
  const imp::ImageAttributes large_dark = imp::image_attributes(full_dim);
  EXPECT_EQ(large_dark.brightness, "dark");
  EXPECT_EQ(large_dark.size, "large");

  // The background does not dilute the mean: 16 pixels at 200 are light.
  torch::Tensor sparse = torch::zeros({28, 28}, torch::kUInt8);
  sparse.slice(0, 0, 4).slice(1, 0, 4).fill_(200);
  EXPECT_EQ(imp::image_attributes(sparse).brightness, "light");

  const imp::ImageAttributes blank = imp::image_attributes(torch::zeros({28, 28}, torch::kUInt8));
  EXPECT_EQ(blank.brightness, "dark");
  EXPECT_EQ(blank.size, "small");
}

TEST(CaptionAttributes, PlausibleOnFashionMnist) {
  if (!std::filesystem::is_directory(kDatasetRoot)) GTEST_SKIP() << kDatasetRoot << " is missing";
  const imp::ImageClassData data = imp::load_fashion_mnist(kDatasetRoot, /*train=*/false);

  // Sneakers are wide but flat, so they cover little of the square; pullovers
  // fill most of it.
  constexpr int64_t kSneaker = 7;
  constexpr int64_t kPullover = 2;
  std::vector<int64_t> large_count(10, 0), class_count(10, 0);
  int64_t light_count = 0;
  for (int64_t i = 0; i < data.images.size(0); ++i) {
    const imp::ImageAttributes attributes = imp::image_attributes(data.images[i]);
    const int64_t label = data.labels[i].item<int64_t>();
    class_count[label] += 1;
    large_count[label] += attributes.size == "large";
    light_count += attributes.brightness == "light";
  }
  EXPECT_LT(large_count[kSneaker], class_count[kSneaker] / 10);
  EXPECT_GT(large_count[kPullover], class_count[kPullover] * 9 / 10);
  // The brightness threshold is the training median, so about half the test
  // images should be light.
  EXPECT_GT(light_count, data.images.size(0) * 4 / 10);
  EXPECT_LT(light_count, data.images.size(0) * 6 / 10);
}

TEST(CaptionCorpus, ContainsEveryCaptionAndPrompt) {
  const std::vector<std::string> class_names = imp::fashion_mnist_class_names();
  const std::vector<std::string> corpus = imp::caption_corpus(class_names);
  const std::set<std::string> corpus_set(corpus.begin(), corpus.end());
  EXPECT_EQ(corpus_set.size(), corpus.size()) << "the corpus should hold no duplicates";

  for (const std::string& class_name : class_names) {
    for (const imp::ImageAttributes& attributes : kAllAttributes) {
      for (uint64_t variant = 0; variant < kVariants; ++variant) {
        const std::string caption = imp::make_caption(class_name, attributes, variant);
        EXPECT_EQ(corpus_set.count(caption), 1u) << caption;
      }
    }
    for (const std::string& prompt : imp::default_prompts()) {
      const std::string filled = imp::fill_prompt(prompt, class_name);
      EXPECT_EQ(corpus_set.count(filled), 1u) << filled;
    }
  }
}

}  // namespace
