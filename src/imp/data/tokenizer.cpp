#include "imp/data/tokenizer.h"

#include <dlfcn.h>

#include <cstdlib>
#include <filesystem>
#include <type_traits>

#include "imp/core/error.h"
#include "spm_shim/spm_shim.h"

namespace imp {
namespace {

constexpr const char* kShimFileName = "libimp_spm_shim.so";

// The shim takes ids as int32_t, so std::vector<int> buffers can be passed as they are.
static_assert(std::is_same_v<int32_t, int>, "the shim's int32_t ids must be int");

// Entry points of the shim, resolved with dlsym.
struct ShimApi {
  decltype(&imp_spm_abi_version) abi_version = nullptr;
  decltype(&imp_spm_last_error) last_error = nullptr;
  decltype(&imp_spm_train) train = nullptr;
  decltype(&imp_spm_load_file) load_file = nullptr;
  decltype(&imp_spm_free) free = nullptr;
  decltype(&imp_spm_vocab_size) vocab_size = nullptr;
  decltype(&imp_spm_pad_id) pad_id = nullptr;
  decltype(&imp_spm_unk_id) unk_id = nullptr;
  decltype(&imp_spm_bos_id) bos_id = nullptr;
  decltype(&imp_spm_eos_id) eos_id = nullptr;
  decltype(&imp_spm_encode) encode = nullptr;
  decltype(&imp_spm_decode) decode = nullptr;
};

std::vector<std::string> shim_candidate_paths() {
  const char* override_path = std::getenv("IMP_SPM_SHIM");
  if (override_path != nullptr && override_path[0] != '\0') return {override_path};

  std::vector<std::string> paths;
  std::error_code error;
  const std::filesystem::path executable = std::filesystem::read_symlink("/proc/self/exe", error);
  if (!error) {
    paths.push_back((executable.parent_path() / kShimFileName).string());
    paths.push_back((executable.parent_path().parent_path() / kShimFileName).string());
  }
  paths.push_back(IMP_SPM_SHIM_BUILD_PATH);
  return paths;
}

template <typename Function>
void resolve(void* library, const char* name, const std::string& path, Function& function) {
  function = reinterpret_cast<Function>(dlsym(library, name));
  IMP_REQUIRE(DataError, function != nullptr, "SentencePiece shim '", path, "' has no function ", name,
              ": it comes from another version of imp; rebuild the imp_spm_shim target");
}

ShimApi resolve_api(void* library, const std::string& path) {
  ShimApi api;
  resolve(library, "imp_spm_abi_version", path, api.abi_version);
  IMP_REQUIRE(DataError, api.abi_version() == IMP_SPM_SHIM_ABI_VERSION, "SentencePiece shim '", path,
              "' has interface version ", api.abi_version(), ", expected ", IMP_SPM_SHIM_ABI_VERSION,
              ": it comes from another version of imp; rebuild the imp_spm_shim target");
  resolve(library, "imp_spm_last_error", path, api.last_error);
  resolve(library, "imp_spm_train", path, api.train);
  resolve(library, "imp_spm_load_file", path, api.load_file);
  resolve(library, "imp_spm_free", path, api.free);
  resolve(library, "imp_spm_vocab_size", path, api.vocab_size);
  resolve(library, "imp_spm_pad_id", path, api.pad_id);
  resolve(library, "imp_spm_unk_id", path, api.unk_id);
  resolve(library, "imp_spm_bos_id", path, api.bos_id);
  resolve(library, "imp_spm_eos_id", path, api.eos_id);
  resolve(library, "imp_spm_encode", path, api.encode);
  resolve(library, "imp_spm_decode", path, api.decode);
  return api;
}

// Opens the first shim candidate that loads. RTLD_DEEPBIND makes the shim
// and libsentencepiece bind to their own symbols before the process's, so
// SentencePiece's protobuf never resolves to LibTorch's. The library is never
// closed: models may live until exit.
ShimApi open_shim() {
  std::string attempts;
  for (const std::string& path : shim_candidate_paths()) {
    std::error_code error;
    if (!std::filesystem::exists(path, error)) {
      attempts += str_cat("\n  ", path, ": not found");
      continue;
    }
    void* library = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
    if (library != nullptr) return resolve_api(library, path);
    attempts += str_cat("\n  ", path, ": ", dlerror());
  }
  throw DataError(str_cat("failed to load the SentencePiece shim ", kShimFileName, "; tried:", attempts,
                          "\nBuild the imp_spm_shim target, or set IMP_SPM_SHIM to the path of ",
                          kShimFileName));
}

// The shim is opened on first use. A failed attempt throws and is retried by
// the next call; the static's initialization is thread-safe.
const ShimApi& shim_api() {
  static const ShimApi api = open_shim();
  return api;
}

}  // namespace

// Owns one model handle of the shim, with its vocabulary facts read once.
struct Tokenizer::Model {
  Model(const ShimApi& shim_api, imp_spm_model* model_handle)
      : api(shim_api),
        handle(model_handle),
        vocab_size(api.vocab_size(handle)),
        pad_id(api.pad_id(handle)),
        unk_id(api.unk_id(handle)),
        bos_id(api.bos_id(handle)),
        eos_id(api.eos_id(handle)) {}
  ~Model() { api.free(handle); }
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  const ShimApi& api;
  imp_spm_model* const handle;
  const int vocab_size;
  const int pad_id;  // -1 when the model defines none
  const int unk_id;
  const int bos_id;
  const int eos_id;
};

Tokenizer::Tokenizer(std::shared_ptr<const Model> model, std::string model_path)
    : model_(std::move(model)), model_path_(std::move(model_path)) {}

const Tokenizer::Model& Tokenizer::model() const {
  if (!model_) throw std::logic_error("Tokenizer is empty: assign it from Tokenizer::load before use");
  return *model_;
}

Tokenizer Tokenizer::load(const std::string& model_path) {
  std::error_code error;
  IMP_REQUIRE(DataError, std::filesystem::is_regular_file(model_path, error), "SentencePiece model '",
              model_path, "' not found: check the path, or train a model with Tokenizer::train or spm_train");

  const ShimApi& api = shim_api();
  imp_spm_model* handle = api.load_file(model_path.c_str());
  IMP_REQUIRE(DataError, handle != nullptr, "'", model_path, "' is not a valid SentencePiece model (",
              api.last_error(), "); pass a .model file written by spm_train or Tokenizer::train");
  return Tokenizer(std::make_shared<const Model>(api, handle), model_path);
}

void Tokenizer::train(const std::vector<std::string>& sentences, const std::string& model_path,
                      int vocab_size) {
  IMP_REQUIRE(ConfigError, vocab_size > 0, "tokenizer vocab_size must be positive, got ", vocab_size);
  IMP_REQUIRE(DataError, !sentences.empty(), "failed to train SentencePiece model '", model_path,
              "': no sentences given; pass the texts the tokenizer should cover");

  std::vector<const char*> pointers;
  pointers.reserve(sentences.size());
  for (const std::string& sentence : sentences) pointers.push_back(sentence.c_str());

  const ShimApi& api = shim_api();
  const int status = api.train(pointers.data(), pointers.size(), model_path.c_str(), vocab_size);
  IMP_REQUIRE(DataError, status == 0, "failed to train SentencePiece model '", model_path, "': ", api.last_error(),
              "; check that the folder of the path exists and is writable");
}

int Tokenizer::vocab_size() const { return model().vocab_size; }
int Tokenizer::pad_id() const { return model().pad_id >= 0 ? model().pad_id : 0; }
int Tokenizer::eos_id() const { return model().eos_id; }
int Tokenizer::unk_id() const { return model().unk_id; }
int Tokenizer::bos_id() const { return model().bos_id; }

std::vector<int> Tokenizer::encode(const std::string& text) const {
  // Normalization can lengthen a text, so the first guess may be too small.
  // The shim then returns the full count, and the second call fits.
  std::vector<int> ids(text.size() + 8);
  int64_t count = 0;
  for (int attempt = 0; attempt < 2; ++attempt) {
    count = model().api.encode(model().handle, text.data(), text.size(), ids.data(), ids.size());
    IMP_REQUIRE(DataError, count >= 0, "failed to encode a text with SentencePiece model '", model_path_,
                "': ", model().api.last_error());
    if (static_cast<size_t>(count) <= ids.size()) break;
    ids.resize(count);
  }
  ids.resize(count);
  return ids;
}

std::string Tokenizer::decode(const std::vector<int>& ids) const {
  std::string text(16 * ids.size() + 8, '\0');
  int64_t length = 0;
  for (int attempt = 0; attempt < 2; ++attempt) {
    length = model().api.decode(model().handle, ids.data(), ids.size(), text.data(), text.size());
    IMP_REQUIRE(DataError, length >= 0, "failed to decode ids with SentencePiece model '", model_path_, "': ",
                model().api.last_error());
    if (static_cast<size_t>(length) <= text.size()) break;
    text.resize(length);
  }
  text.resize(length);
  return text;
}

TextBatch Tokenizer::encode_batch(const std::vector<std::string>& texts, int max_len) const {
  IMP_REQUIRE(ConfigError, max_len >= 1, "text max_len must be at least 1, got ", max_len);
  const int64_t batch_size = static_cast<int64_t>(texts.size());
  TextBatch batch;
  batch.ids = torch::full({batch_size, max_len}, pad_id(), torch::kInt64);  // [B, L]
  batch.mask = torch::zeros({batch_size, max_len}, torch::kBool);           // [B, L]
  auto ids = batch.ids.accessor<int64_t, 2>();
  auto mask = batch.mask.accessor<bool, 2>();

  for (int64_t row = 0; row < batch_size; ++row) {
    std::vector<int> tokens = encode(texts[row]);
    if (eos_id() >= 0) {
      // Truncate first so that eos, appended last, always survives.
      tokens.resize(std::min<size_t>(tokens.size(), max_len - 1));
      tokens.push_back(eos_id());
    } else {
      tokens.resize(std::min<size_t>(tokens.size(), max_len));
      if (tokens.empty()) tokens.push_back(pad_id());
    }
    for (size_t position = 0; position < tokens.size(); ++position) {
      ids[row][position] = tokens[position];
      mask[row][position] = true;
    }
  }
  return batch;
}

}  // namespace imp
