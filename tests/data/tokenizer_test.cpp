#include <gtest/gtest.h>
#include <stdlib.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "../scratch_dir.h"
#include "imp/config/config.h"
#include "imp/core/error.h"
#include "imp/data/captions.h"
#include "imp/data/fashion_mnist.h"
#include "imp/data/tokenizer.h"

namespace {

using imp::testing::ScratchDir;

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

std::string file_contents(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream contents;
  contents << in.rdbuf();
  return contents.str();
}

std::vector<int64_t> row_values(const torch::Tensor& tensor, int64_t row) {
  const torch::Tensor values = tensor[row].to(torch::kInt64).contiguous();
  return std::vector<int64_t>(values.data_ptr<int64_t>(), values.data_ptr<int64_t>() + values.numel());
}

// Expected row of encode_batch: ids, then `tail`, padded to max_len.
std::vector<int64_t> padded(const std::vector<int>& ids, std::vector<int> tail, int max_len, int pad_id) {
  std::vector<int64_t> row(ids.begin(), ids.end());
  row.insert(row.end(), tail.begin(), tail.end());
  row.resize(max_len, pad_id);
  return row;
}

// Expected mask row: `real` true entries, then false.
std::vector<int64_t> mask_row(int real, int max_len) {
  std::vector<int64_t> row(max_len, 0);
  std::fill(row.begin(), row.begin() + real, 1);
  return row;
}

// One model trained on the Fashion-MNIST caption corpus, shared by the tests.
class TokenizerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new ScratchDir;
    corpus_ = new std::vector<std::string>(imp::caption_corpus(imp::fashion_mnist_class_names()));
    imp::Tokenizer::train(*corpus_, dir_->file("captions.model"), /*vocab_size=*/256);
    tokenizer_ = new imp::Tokenizer(imp::Tokenizer::load(dir_->file("captions.model")));
  }
  static void TearDownTestSuite() {
    delete tokenizer_;
    delete corpus_;
    delete dir_;
  }

  static ScratchDir* dir_;
  static std::vector<std::string>* corpus_;
  static imp::Tokenizer* tokenizer_;
};

ScratchDir* TokenizerTest::dir_ = nullptr;
std::vector<std::string>* TokenizerTest::corpus_ = nullptr;
imp::Tokenizer* TokenizerTest::tokenizer_ = nullptr;

TEST_F(TokenizerTest, TrainedVocabAndSpecialIds) {
  EXPECT_GT(tokenizer_->vocab_size(), 20);
  EXPECT_LE(tokenizer_->vocab_size(), 256);
  EXPECT_EQ(tokenizer_->pad_id(), 0);
  EXPECT_EQ(tokenizer_->unk_id(), 1);
  EXPECT_EQ(tokenizer_->eos_id(), 2);
  EXPECT_EQ(tokenizer_->bos_id(), -1);
}

TEST_F(TokenizerTest, EncodeDecodeRoundTrip) {
  for (const std::string& caption : *corpus_) {
    const std::vector<int> ids = tokenizer_->encode(caption);
    ASSERT_FALSE(ids.empty()) << caption;
    for (int id : ids) {
      EXPECT_GE(id, 0) << caption;
      EXPECT_LT(id, tokenizer_->vocab_size()) << caption;
      EXPECT_NE(id, tokenizer_->unk_id()) << caption;
      EXPECT_NE(id, tokenizer_->eos_id()) << "encode adds no special tokens: " << caption;
    }
    EXPECT_EQ(tokenizer_->decode(ids), caption);
  }
}

// A caption with its eos should fit the default text length, so that no
// class name is cut off. That needs about one piece per word.
TEST_F(TokenizerTest, CaptionsFitDefaultMaxLen) {
  const int max_len = imp::TextConfig{}.max_len;
  for (const std::string& caption : *corpus_) {
    const size_t words = std::count(caption.begin(), caption.end(), ' ') + 1;
    const std::vector<int> ids = tokenizer_->encode(caption);
    EXPECT_LE(ids.size(), words + 2) << caption;
    EXPECT_LT(ids.size(), static_cast<size_t>(max_len)) << caption;
  }
}

TEST_F(TokenizerTest, DecodeSkipsPadAndEos) {
  std::vector<int> ids = tokenizer_->encode("a dark sandal");
  ids.push_back(tokenizer_->eos_id());
  ids.push_back(tokenizer_->pad_id());
  EXPECT_EQ(tokenizer_->decode(ids), "a dark sandal");
}

TEST_F(TokenizerTest, DecodeRejectsOutOfRangeId) {
  try {
    tokenizer_->decode({tokenizer_->vocab_size()});
    FAIL() << "decode accepted an id outside the vocabulary";
  } catch (const imp::DataError& error) {
    EXPECT_TRUE(contains(error.what(), "outside the vocabulary")) << error.what();
  }
}

TEST_F(TokenizerTest, EncodeBatchPadsAndMasks) {
  const std::vector<std::string> texts = {"a dark sandal", "a grayscale photo of a large light ankle boot"};
  constexpr int kMaxLen = 24;
  const imp::TextBatch batch = tokenizer_->encode_batch(texts, kMaxLen);

  ASSERT_EQ(batch.ids.sizes(), torch::IntArrayRef({2, kMaxLen}));
  ASSERT_EQ(batch.mask.sizes(), torch::IntArrayRef({2, kMaxLen}));
  EXPECT_EQ(batch.ids.scalar_type(), torch::kInt64);
  EXPECT_EQ(batch.mask.scalar_type(), torch::kBool);
  for (int64_t row = 0; row < 2; ++row) {
    const std::vector<int> ids = tokenizer_->encode(texts[row]);
    ASSERT_LT(ids.size() + 1, static_cast<size_t>(kMaxLen)) << texts[row];
    EXPECT_EQ(row_values(batch.ids, row), padded(ids, {tokenizer_->eos_id()}, kMaxLen, tokenizer_->pad_id()));
    EXPECT_EQ(row_values(batch.mask, row), mask_row(static_cast<int>(ids.size()) + 1, kMaxLen));
  }
}

TEST_F(TokenizerTest, EncodeBatchTruncatesKeepingEos) {
  const std::string text = "a grayscale photo of a large light ankle boot";
  const std::vector<int> ids = tokenizer_->encode(text);
  ASSERT_GT(ids.size(), 3u);

  const imp::TextBatch batch = tokenizer_->encode_batch({text}, /*max_len=*/3);
  EXPECT_EQ(row_values(batch.ids, 0), (std::vector<int64_t>{ids[0], ids[1], tokenizer_->eos_id()}));
  EXPECT_EQ(row_values(batch.mask, 0), mask_row(3, 3));

  const imp::TextBatch single = tokenizer_->encode_batch({text}, /*max_len=*/1);
  EXPECT_EQ(row_values(single.ids, 0), (std::vector<int64_t>{tokenizer_->eos_id()}));
  EXPECT_EQ(row_values(single.mask, 0), mask_row(1, 1));
}

TEST_F(TokenizerTest, EmptyAndBlankTextsGiveEos) {
  const imp::TextBatch batch = tokenizer_->encode_batch({"", "   ", "\t\n"}, /*max_len=*/4);
  for (int64_t row = 0; row < 3; ++row) {
    EXPECT_EQ(row_values(batch.ids, row), padded({}, {tokenizer_->eos_id()}, 4, tokenizer_->pad_id()));
    EXPECT_EQ(row_values(batch.mask, row), mask_row(1, 4));
  }
}

TEST_F(TokenizerTest, EncodeBatchRejectsZeroMaxLen) {
  EXPECT_THROW(tokenizer_->encode_batch({"a coat"}, /*max_len=*/0), imp::ConfigError);
}

TEST_F(TokenizerTest, ConcurrentEncodeMatchesSerial) {
  std::vector<std::vector<int>> serial;
  for (const std::string& caption : *corpus_) serial.push_back(tokenizer_->encode(caption));

  // Two threads encode the whole corpus at once through one shared model.
  constexpr int kThreads = 2;
  std::vector<std::vector<std::vector<int>>> results(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int repeat = 0; repeat < 20; ++repeat) {
        results[t].clear();
        for (const std::string& caption : *corpus_) results[t].push_back(tokenizer_->encode(caption));
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  for (int t = 0; t < kThreads; ++t) EXPECT_EQ(results[t], serial) << "thread " << t;
}

TEST_F(TokenizerTest, CopyOutlivesOriginal) {
  auto original = std::make_unique<imp::Tokenizer>(imp::Tokenizer::load(dir_->file("captions.model")));
  const imp::Tokenizer copy = *original;
  original.reset();
  EXPECT_EQ(copy.encode("a coat"), tokenizer_->encode("a coat"));
}

TEST_F(TokenizerTest, TrainingIsDeterministic) {
  ScratchDir dir;
  imp::Tokenizer::train(*corpus_, dir.file("again.model"), /*vocab_size=*/256);
  EXPECT_EQ(file_contents(dir.file("again.model")), file_contents(dir_->file("captions.model")));
}

TEST(Tokenizer, EmptyThrowsOnUse) {
  const imp::Tokenizer empty;
  EXPECT_THROW(empty.vocab_size(), std::logic_error);
  EXPECT_THROW(empty.encode("a coat"), std::logic_error);
}

TEST(Tokenizer, LoadMissingPathNamed) {
  ScratchDir dir;
  const std::string path = dir.file("absent.model");
  try {
    imp::Tokenizer::load(path);
    FAIL() << "load accepted a missing path";
  } catch (const imp::DataError& error) {
    EXPECT_TRUE(contains(error.what(), path)) << error.what();
    EXPECT_TRUE(contains(error.what(), "not found")) << error.what();
  }
}

TEST(Tokenizer, LoadNonModelNamed) {
  ScratchDir dir;
  const std::string path = dir.file("text.model");
  std::ofstream(path) << "this is plain text, not a model\n";
  try {
    imp::Tokenizer::load(path);
    FAIL() << "load accepted a text file";
  } catch (const imp::DataError& error) {
    EXPECT_TRUE(contains(error.what(), path)) << error.what();
    EXPECT_TRUE(contains(error.what(), "not a valid SentencePiece model")) << error.what();
  }
}

TEST(Tokenizer, TrainIntoMissingFolderNamed) {
  ScratchDir dir;
  const std::string path = dir.file("no-such-folder/captions.model");
  try {
    imp::Tokenizer::train({"a coat", "a dress"}, path, 32);
    FAIL() << "train wrote into a missing folder";
  } catch (const imp::DataError& error) {
    EXPECT_TRUE(contains(error.what(), path)) << error.what();
  }
}

TEST(Tokenizer, TrainSmallCorpusLargeVocab) {
  ScratchDir dir;
  imp::Tokenizer::train({"a coat", "a dress", "an ankle boot"}, dir.file("tiny.model"), 1000);
  const imp::Tokenizer tokenizer = imp::Tokenizer::load(dir.file("tiny.model"));
  EXPECT_LT(tokenizer.vocab_size(), 1000);
  EXPECT_EQ(tokenizer.decode(tokenizer.encode("an ankle boot")), "an ankle boot");
}

// Trains a model with the spm_train command, which uses SentencePiece's own
// default ids unless `flags` change them. Returns false when spm_train is
// not installed.
bool train_with_cli(const ScratchDir& dir, const std::string& name, const std::string& flags) {
  if (std::system("command -v spm_train > /dev/null 2>&1") != 0) return false;
  const std::string input = dir.file("corpus.txt");
  {
    std::ofstream out(input);
    for (const std::string& line : imp::caption_corpus(imp::fashion_mnist_class_names())) out << line << "\n";
  }
  const std::string command = "spm_train --input=" + input + " --model_prefix=" + dir.file(name) +
                              " --vocab_size=128 --hard_vocab_limit=false " + flags + " > " +
                              dir.file(name + ".log") + " 2>&1";
  EXPECT_EQ(std::system(command.c_str()), 0) << command << "\n" << file_contents(dir.file(name + ".log"));
  return true;
}

TEST(Tokenizer, LoadsSpmTrainDefaultIds) {
  ScratchDir dir;
  if (!train_with_cli(dir, "default", "")) GTEST_SKIP() << "spm_train is not installed";
  const imp::Tokenizer tokenizer = imp::Tokenizer::load(dir.file("default.model"));

  // SentencePiece's defaults: unk 0, bos 1, eos 2 and no pad.
  EXPECT_EQ(tokenizer.unk_id(), 0);
  EXPECT_EQ(tokenizer.bos_id(), 1);
  EXPECT_EQ(tokenizer.eos_id(), 2);
  EXPECT_EQ(tokenizer.pad_id(), 0) << "a model without pad pads with id 0";

  const std::vector<int> ids = tokenizer.encode("a small dark sneaker");
  EXPECT_EQ(tokenizer.decode(ids), "a small dark sneaker");
  const imp::TextBatch batch = tokenizer.encode_batch({"a small dark sneaker", ""}, /*max_len=*/16);
  EXPECT_EQ(row_values(batch.ids, 0), padded(ids, {2}, 16, 0));
  EXPECT_EQ(row_values(batch.mask, 0), mask_row(static_cast<int>(ids.size()) + 1, 16));
  EXPECT_EQ(row_values(batch.ids, 1), padded({}, {2}, 16, 0));
}

TEST(Tokenizer, ModelWithoutEosKeepsOneRealToken) {
  ScratchDir dir;
  if (!train_with_cli(dir, "no_eos", "--eos_id=-1")) GTEST_SKIP() << "spm_train is not installed";
  const imp::Tokenizer tokenizer = imp::Tokenizer::load(dir.file("no_eos.model"));
  ASSERT_EQ(tokenizer.eos_id(), -1);

  const std::vector<int> ids = tokenizer.encode("a coat");
  const imp::TextBatch batch = tokenizer.encode_batch({"a coat", " "}, /*max_len=*/8);
  EXPECT_EQ(row_values(batch.ids, 0), padded(ids, {}, 8, tokenizer.pad_id()));
  EXPECT_EQ(row_values(batch.mask, 0), mask_row(static_cast<int>(ids.size()), 8));
  EXPECT_EQ(row_values(batch.ids, 1), padded({}, {tokenizer.pad_id()}, 8, tokenizer.pad_id()));
  EXPECT_EQ(row_values(batch.mask, 1), mask_row(1, 8));
}

}  // namespace
