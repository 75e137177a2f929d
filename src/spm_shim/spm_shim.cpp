// SentencePiece behind the C interface of spm_shim.h. Entry points that can
// throw catch std::exception, because no exception may cross the C boundary.
#include "spm_shim/spm_shim.h"

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <unordered_map>
#include <vector>

struct imp_spm_model {
  sentencepiece::SentencePieceProcessor processor;
};

namespace {

thread_local std::string last_error;

// Stores `message` for imp_spm_last_error() and returns -1, the failure value
// of the functions that return a number.
int fail(const std::string& message) {
  last_error = message;
  return -1;
}

// Feeds lines to the trainer without a temporary text file.
class LineIterator : public sentencepiece::SentenceIterator {
 public:
  explicit LineIterator(const std::vector<std::string>& lines) : lines_(lines) {}
  bool done() const override { return index_ >= lines_.size(); }
  void Next() override { ++index_; }
  const std::string& value() const override { return lines_[index_]; }
  sentencepiece::util::Status status() const override { return {}; }

 private:
  const std::vector<std::string>& lines_;
  size_t index_ = 0;
};

// Returns the sentences, then one line per word occurrence that contains the
// word twice ("photo photo").
//
// The unigram trainer seeds its vocabulary only with substrings that are
// followed by at least two different characters somewhere in the corpus
// (internal nodes of a suffix tree; MakeSeedSentencePieces in SentencePiece's
// unigram_model_trainer.cc). In templated captions "photo" is always followed
// by " of" and a class name often only by the line end, so neither becomes a
// seed: trained on the caption corpus alone, the vocabulary stayed near single
// characters (59 pieces, 31 ids for a nine-word caption). In "photo photo"
// the word is followed by a space and by the line end, so every word is a
// seed. EM runs on word counts (lines are split at whitespace), and every
// count is tripled, so the word statistics keep their proportions.
std::vector<std::string> training_lines(const char* const* sentences, size_t count) {
  std::vector<std::string> lines(sentences, sentences + count);
  for (size_t i = 0; i < count; ++i) {
    std::istringstream words(sentences[i]);
    for (std::string word; words >> word;) lines.push_back(word + " " + word);
  }
  return lines;
}

// Trainer settings. Training uses one thread, no sentence sampling and no
// shuffling, so the same sentences always give the same model.
std::unordered_map<std::string, std::string> trainer_options(int vocab_size) {
  return {
      {"model_type", "unigram"},
      {"vocab_size", std::to_string(vocab_size)},
      // A small corpus may not support the requested size; accept a smaller
      // vocabulary instead of failing.
      {"hard_vocab_limit", "false"},
      {"pad_id", "0"},
      {"unk_id", "1"},
      {"eos_id", "2"},
      {"bos_id", "-1"},
      {"character_coverage", "1.0"},
      {"num_threads", "1"},
      {"input_sentence_size", "0"},
      {"shuffle_input_sentence", "false"},
      // Training logs every EM round at INFO; keep warnings and errors only.
      {"minloglevel", "1"},
  };
}

// Writes `bytes` to a temporary file beside `path`, then renames it over
// `path`, so a reader never sees a partial model.
bool write_atomically(const std::string& path, const std::string& bytes) {
  // The process id and a counter keep concurrent writers apart.
  static std::atomic<unsigned> temp_counter{0};
  const std::string temp_path =
      path + ".tmp." + std::to_string(getpid()) + "." + std::to_string(temp_counter++);
  {
    std::ofstream out(temp_path, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    out.close();
    if (!out) {
      const int error = errno;
      std::remove(temp_path.c_str());
      fail("failed to write '" + temp_path + "': " + std::strerror(error));
      return false;
    }
  }
  if (std::rename(temp_path.c_str(), path.c_str()) != 0) {
    const int error = errno;
    std::remove(temp_path.c_str());
    fail("failed to rename '" + temp_path + "' to '" + path + "': " + std::strerror(error));
    return false;
  }
  return true;
}

imp_spm_model* load_model(const sentencepiece::util::Status& status, imp_spm_model* model) {
  if (status.ok()) return model;
  fail(status.ToString());
  delete model;
  return nullptr;
}

}  // namespace

extern "C" {

int imp_spm_abi_version(void) { return IMP_SPM_SHIM_ABI_VERSION; }

const char* imp_spm_last_error(void) { return last_error.c_str(); }

int imp_spm_train(const char* const* sentences, size_t count, const char* model_path, int vocab_size) {
  try {
    last_error.clear();
    if (count == 0) return fail("no sentences to train on");
    const std::vector<std::string> lines = training_lines(sentences, count);
    LineIterator iterator(lines);
    std::string serialized;
    const auto status =
        sentencepiece::SentencePieceTrainer::Train(trainer_options(vocab_size), &iterator, &serialized);
    if (!status.ok()) return fail(status.ToString());
    return write_atomically(model_path, serialized) ? 0 : -1;
  } catch (const std::exception& error) {
    return fail(error.what());
  }
}

imp_spm_model* imp_spm_load_file(const char* path) {
  try {
    last_error.clear();
    auto* model = new imp_spm_model;
    return load_model(model->processor.Load(path), model);
  } catch (const std::exception& error) {
    fail(error.what());
    return nullptr;
  }
}

imp_spm_model* imp_spm_load_bytes(const char* bytes, size_t size) {
  try {
    last_error.clear();
    auto* model = new imp_spm_model;
    return load_model(model->processor.LoadFromSerializedProto(std::string_view(bytes, size)), model);
  } catch (const std::exception& error) {
    fail(error.what());
    return nullptr;
  }
}

void imp_spm_free(imp_spm_model* model) { delete model; }

int imp_spm_vocab_size(const imp_spm_model* model) { return model->processor.GetPieceSize(); }
int imp_spm_pad_id(const imp_spm_model* model) { return model->processor.pad_id(); }
int imp_spm_unk_id(const imp_spm_model* model) { return model->processor.unk_id(); }
int imp_spm_bos_id(const imp_spm_model* model) { return model->processor.bos_id(); }
int imp_spm_eos_id(const imp_spm_model* model) { return model->processor.eos_id(); }

int64_t imp_spm_encode(const imp_spm_model* model, const char* text, size_t size, int32_t* ids,
                       size_t capacity) {
  try {
    last_error.clear();
    std::vector<int> encoded;
    const auto status = model->processor.Encode(std::string_view(text, size), &encoded);
    if (!status.ok()) return fail(status.ToString());
    std::copy_n(encoded.begin(), std::min(encoded.size(), capacity), ids);
    return static_cast<int64_t>(encoded.size());
  } catch (const std::exception& error) {
    return fail(error.what());
  }
}

int64_t imp_spm_decode(const imp_spm_model* model, const int32_t* ids, size_t count, char* text,
                       size_t capacity) {
  try {
    last_error.clear();
    const int vocab_size = model->processor.GetPieceSize();
    for (size_t i = 0; i < count; ++i) {
      if (ids[i] < 0 || ids[i] >= vocab_size) {
        return fail("id " + std::to_string(ids[i]) + " at position " + std::to_string(i) +
                    " is outside the vocabulary [0, " + std::to_string(vocab_size) + ")");
      }
    }
    std::string decoded;
    const auto status = model->processor.Decode(std::vector<int>(ids, ids + count), &decoded);
    if (!status.ok()) return fail(status.ToString());
    std::copy_n(decoded.begin(), std::min(decoded.size(), capacity), text);
    return static_cast<int64_t>(decoded.size());
  } catch (const std::exception& error) {
    return fail(error.what());
  }
}

}  // extern "C"
