// SentencePiece tokenizer for the text modality.
//
// SentencePiece runs inside libimp_spm_shim.so, opened at run time (see
// spm_shim/spm_shim.h for why it cannot be linked). The shim is searched, and
// loaded once per process, in this order:
//   1. the path in the environment variable IMP_SPM_SHIM, if set;
//   2. libimp_spm_shim.so in the directory of the running executable;
//   3. libimp_spm_shim.so in that directory's parent (tests run from build/tests);
//   4. the path where the build wrote it.
#pragma once

#include <torch/types.h>

#include <memory>
#include <string>
#include <vector>

namespace imp {

// Token ids of a batch of texts, each row its text's ids, then end-of-text
// (when the model has that id), then padding. B texts, L = max_len.
struct TextBatch {
  torch::Tensor ids;   // [B, L] int64, padded with Tokenizer::pad_id()
  torch::Tensor mask;  // [B, L] bool, true for real tokens; every row has at least one
};

// A loaded SentencePiece model. Copies share the model, so copying is cheap,
// and all const methods may be called from several threads at once.
class Tokenizer {
 public:
  // An empty tokenizer, to be assigned from load(); any other use throws
  // std::logic_error.
  Tokenizer() = default;

  // Loads any SentencePiece .model file, whatever its special ids. Throws
  // DataError naming the path when it is missing or not a SentencePiece model.
  static Tokenizer load(const std::string& model_path);

  // Trains a unigram model on `sentences` and writes it to `model_path`
  // (through a temporary file and a rename). Special ids: pad 0, unk 1, eos 2,
  // no bos. The vocabulary may come out smaller than `vocab_size` when the
  // sentences do not support that many pieces. Training is deterministic:
  // the same sentences give the same model.
  static void train(const std::vector<std::string>& sentences, const std::string& model_path, int vocab_size);

  const std::string& model_path() const { return model_path_; }
  int vocab_size() const;
  // Padding id; 0 when the model defines none, which is safe because padded
  // positions are masked.
  int pad_id() const;
  int eos_id() const;  // -1 when the model defines none
  int unk_id() const;  // -1 when the model defines none
  int bos_id() const;  // -1 when the model defines none

  // Encodes a text into ids, without special tokens.
  std::vector<int> encode(const std::string& text) const;

  // Decodes ids into text. Control ids such as pad and eos decode to nothing.
  std::string decode(const std::vector<int>& ids) const;

  // Encodes each text into one row of max_len ids: its ids, then eos, then
  // padding. A text that does not fit is truncated so that eos stays its last
  // real token. An empty text gives a row of just eos, or of one real pad
  // token for a model without eos, so that no row is fully masked.
  TextBatch encode_batch(const std::vector<std::string>& texts, int max_len) const;

 private:
  struct Model;
  Tokenizer(std::shared_ptr<const Model> model, std::string model_path);
  const Model& model() const;

  std::shared_ptr<const Model> model_;
  std::string model_path_;
};

}  // namespace imp
