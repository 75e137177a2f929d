// Spoken Fashion-MNIST: the captions of Fashion-MNIST images ("a small dark
// sandal") spoken by synthetic voices. Example i is the caption of image i of
// the split, so classes are as balanced as in the images. The test split is
// spoken only by the evaluation voices, which training never hears.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "imp/data/dataset.h"
#include "imp/data/image_text_dataset.h"
#include "imp/data/speech_bank.h"

namespace imp {

// Modalities: audio. One label set, "class".
class SpokenFashionMnist : public Dataset {
 public:
  // `speech` must hold caption_texts(items.class_names()).
  SpokenFashionMnist(std::string name, std::shared_ptr<const ImageTextDataset> items,
                     std::shared_ptr<const SpeechBank> speech);

  int64_t size() const override { return items_->size(); }
  const std::vector<LabelSet>& label_sets() const override { return items_->label_sets(); }
  int64_t label(int64_t index, int set = 0) const override { return items_->label(index); }
  std::vector<std::string> modalities() const override { return {"audio"}; }
  at::Tensor input(const std::string& modality, const std::vector<int64_t>& indices,
                   const std::vector<uint64_t>& draws) const override;
  at::Tensor eval_input(const std::string& modality, const std::vector<int64_t>& indices,
                        int view) const override;
  std::string caption(int64_t index, uint64_t draw) const override;
  std::vector<std::string> text_corpus() const override;
  void check_model_fits(const ModelConfig& model) const override {}

  // Every caption an image of these classes can have: the texts to speak.
  static std::vector<std::string> caption_texts(const std::vector<std::string>& class_names);

 private:
  std::shared_ptr<const ImageTextDataset> items_;
  std::shared_ptr<const SpeechBank> speech_;
  std::map<std::string, int64_t> text_ids_;  // caption -> index in the speech bank
};

}  // namespace imp
