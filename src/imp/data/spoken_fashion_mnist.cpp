#include "imp/data/spoken_fashion_mnist.h"

#include "imp/core/error.h"
#include "imp/core/random.h"
#include "imp/data/captions.h"

namespace imp {
namespace {

// Salts that split one example draw into independent choices.
constexpr uint64_t kWordingSalt = 1;
constexpr uint64_t kRenditionSalt = 3;

}  // namespace

std::vector<std::string> SpokenFashionMnist::caption_texts(
    const std::vector<std::string>& class_names) {
  return all_captions(class_names);
}

SpokenFashionMnist::SpokenFashionMnist(std::string name,
                                       std::shared_ptr<const ImageTextDataset> items,
                                       std::shared_ptr<const SpeechBank> speech)
    : Dataset(std::move(name)), items_(std::move(items)), speech_(std::move(speech)) {
  IMP_REQUIRE(ConfigError, speech_ != nullptr, "dataset '", Dataset::name(), "' needs speech");
  for (int64_t t = 0; t < speech_->num_texts(); ++t) text_ids_.emplace(speech_->texts()[t], t);
}

at::Tensor SpokenFashionMnist::input(const std::string& modality,
                                     const std::vector<int64_t>& indices,
                                     const std::vector<uint64_t>& draws) const {
  IMP_REQUIRE(ConfigError, modality == "audio", "dataset '", name(), "' has audio, not ",
              modality);
  std::vector<int64_t> texts(indices.size());
  std::vector<int> renditions(indices.size());
  for (size_t b = 0; b < indices.size(); ++b) {
    const std::string text = caption(indices[b], draws[b]);
    auto found = text_ids_.find(text);
    TORCH_CHECK(found != text_ids_.end(), "dataset '", name(), "': no speech for '", text, "'");
    texts[b] = found->second;
    renditions[b] =
        static_cast<int>(below(mix64(draws[b], kRenditionSalt), speech_->renditions()));
  }
  return speech_->gather(texts, renditions);
}

at::Tensor SpokenFashionMnist::eval_input(const std::string& modality,
                                          const std::vector<int64_t>& indices, int view) const {
  std::vector<uint64_t> draws(indices.size());
  for (size_t b = 0; b < indices.size(); ++b) draws[b] = eval_draw(indices[b]);
  return input(modality, indices, draws);
}

std::string SpokenFashionMnist::caption(int64_t index, uint64_t draw) const {
  return make_caption(items_->class_names()[items_->label(index)], items_->attributes(index),
                      mix64(draw, kWordingSalt));
}

std::vector<std::string> SpokenFashionMnist::text_corpus() const {
  return caption_corpus(items_->class_names());
}

}  // namespace imp
