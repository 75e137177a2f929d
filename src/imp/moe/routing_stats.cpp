#include "imp/moe/routing_stats.h"

#include <cstdio>
#include <numeric>
#include <stdexcept>
#include <utility>

namespace imp {

std::vector<double> RoutingCounts::expert_share() const {
  const int64_t total =
      std::accumulate(tokens_per_expert.begin(), tokens_per_expert.end(), int64_t{0});
  std::vector<double> share(tokens_per_expert.size(), 0.0);
  if (total == 0) return share;
  for (size_t e = 0; e < share.size(); ++e) {
    share[e] = static_cast<double>(tokens_per_expert[e]) / static_cast<double>(total);
  }
  return share;
}

std::vector<double> RoutingCounts::top_choice_share() const {
  std::vector<double> share(top_choice_per_expert.size(), 0.0);
  if (num_tokens == 0) return share;
  for (size_t e = 0; e < share.size(); ++e) {
    share[e] = static_cast<double>(top_choice_per_expert[e]) / static_cast<double>(num_tokens);
  }
  return share;
}

void RoutingStats::add(int layer, const std::string& modality, const RoutingMetrics& metrics) {
  TORCH_CHECK(metrics.tokens_per_expert.defined() && metrics.tokens_per_expert.dim() == 1,
              "routing metrics of layer ", layer, " (", modality,
              ") need tokens_per_expert of shape [E]");
  torch::Tensor per_expert = metrics.tokens_per_expert.to(torch::kCPU, torch::kLong).contiguous();
  const int64_t num_experts = per_expert.size(0);

  RoutingCounts& counts = counts_[layer][modality];
  if (counts.num_passes == 0) {
    counts.tokens_per_expert.assign(num_experts, 0);
  }
  TORCH_CHECK(static_cast<int64_t>(counts.tokens_per_expert.size()) == num_experts, "layer ", layer,
              " (", modality, ") was counted with ", counts.tokens_per_expert.size(),
              " experts before and now reports ", num_experts);

  const int64_t* data = per_expert.data_ptr<int64_t>();
  for (int64_t e = 0; e < num_experts; ++e) counts.tokens_per_expert[e] += data[e];
  if (metrics.top_choice_per_expert.defined()) {
    torch::Tensor top = metrics.top_choice_per_expert.to(torch::kCPU, torch::kLong).contiguous();
    TORCH_CHECK(top.numel() == num_experts, "layer ", layer, " (", modality, ") reports ",
                top.numel(), " first-choice counts for ", num_experts, " experts");
    counts.top_choice_per_expert.resize(num_experts, 0);
    for (int64_t e = 0; e < num_experts; ++e) counts.top_choice_per_expert[e] += top.data_ptr<int64_t>()[e];
  }
  counts.num_tokens += metrics.num_tokens;
  counts.dropped_tokens += metrics.dropped_tokens;
  counts.num_passes += 1;
}

std::vector<int> RoutingStats::layers() const {
  std::vector<int> result;
  for (const auto& entry : counts_) result.push_back(entry.first);
  return result;
}

std::vector<std::string> RoutingStats::modalities(int layer) const {
  std::vector<std::string> result;
  auto it = counts_.find(layer);
  if (it == counts_.end()) return result;
  for (const auto& entry : it->second) result.push_back(entry.first);
  return result;
}

const RoutingCounts* RoutingStats::find(int layer, const std::string& modality) const {
  auto layer_it = counts_.find(layer);
  if (layer_it == counts_.end()) return nullptr;
  auto modality_it = layer_it->second.find(modality);
  return modality_it == layer_it->second.end() ? nullptr : &modality_it->second;
}

nlohmann::json RoutingStats::to_json() const {
  nlohmann::json layers = nlohmann::json::array();
  for (const auto& [layer, by_modality] : counts_) {
    nlohmann::json modalities = nlohmann::json::object();
    for (const auto& [modality, counts] : by_modality) {
      const double dropped_fraction =
          counts.num_tokens > 0 ? static_cast<double>(counts.dropped_tokens) / counts.num_tokens
                                : 0.0;
      modalities[modality] = {
          {"tokens_per_expert", counts.tokens_per_expert},
          {"expert_share", counts.expert_share()},
          {"top_choice_per_expert", counts.top_choice_per_expert},
          {"top_choice_share", counts.top_choice_share()},
          {"num_tokens", counts.num_tokens},
          {"dropped_tokens", counts.dropped_tokens},
          {"dropped_fraction", dropped_fraction},
          {"num_passes", counts.num_passes},
      };
    }
    nlohmann::json entry = {{"layer", layer}, {"modalities", modalities}};
    layers.push_back(std::move(entry));
  }
  nlohmann::json result = {{"layers", layers}};
  return result;
}

void RoutingStats::from_json(const nlohmann::json& json) {
  std::map<int, std::map<std::string, RoutingCounts>> counts;
  try {
    for (const nlohmann::json& entry : json.at("layers")) {
      const int layer = entry.at("layer").get<int>();
      for (const auto& [modality, values] : entry.at("modalities").items()) {
        RoutingCounts& c = counts[layer][modality];
        c.tokens_per_expert = values.at("tokens_per_expert").get<std::vector<int64_t>>();
        c.top_choice_per_expert = values.at("top_choice_per_expert").get<std::vector<int64_t>>();
        c.num_tokens = values.at("num_tokens").get<int64_t>();
        c.dropped_tokens = values.at("dropped_tokens").get<int64_t>();
        c.num_passes = values.at("num_passes").get<int64_t>();
      }
    }
  } catch (const nlohmann::json::exception& e) {
    throw std::invalid_argument(std::string("routing counts do not have the layout RoutingStats "
                                            "writes: ") + e.what());
  }
  counts_ = std::move(counts);
}

std::string RoutingStats::report() const {
  std::string out;
  char line[256];
  for (const auto& [layer, by_modality] : counts_) {
    std::snprintf(line, sizeof(line), "routing, MoE layer %d: share of each modality's tokens per expert"
                  " (taken / first choice)\n", layer);
    out += line;
    for (const auto& [modality, counts] : by_modality) {
      std::snprintf(line, sizeof(line), "  %-6s", modality.c_str());
      out += line;
      const std::vector<double> first = counts.top_choice_share();
      for (size_t e = 0; e < counts.tokens_per_expert.size(); ++e) {
        const double taken = counts.num_tokens > 0 ? static_cast<double>(counts.tokens_per_expert[e]) /
                                                         static_cast<double>(counts.num_tokens)
                                                   : 0.0;
        std::snprintf(line, sizeof(line), "  e%zu %5.1f%% / %5.1f%%", e, 100.0 * taken,
                      e < first.size() ? 100.0 * first[e] : 0.0);
        out += line;
      }
      out += "\n";
    }
  }
  return out;
}

}  // namespace imp
