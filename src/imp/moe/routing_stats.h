// Running totals of how MoE layers route each modality's tokens, for the logs
// and for checking that experts specialise rather than collapse.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "imp/moe/router.h"

namespace imp {

// Routing counts of one MoE layer for one modality, summed over forward passes.
struct RoutingCounts {
  std::vector<int64_t> tokens_per_expert;  // [E]; a token counts once per expert that took it
  int64_t num_tokens = 0;                  // real tokens in
  int64_t dropped_tokens = 0;              // real tokens that no expert processed
  int64_t num_passes = 0;                  // forward passes added
  std::vector<int64_t> top_choice_per_expert;  // [E]; real tokens whose first choice is e

  // Fraction of this modality's expert slots that each expert took,
  // tokens_per_expert[e] / sum(tokens_per_expert); all zero before any token.
  std::vector<double> expert_share() const;

  // Fraction of this modality's tokens whose first choice is each expert:
  // which experts the router sends the modality to. Under experts-choose,
  // where every expert fills its slots, this is what shows specialisation.
  std::vector<double> top_choice_share() const;
};

// Routing counts per MoE layer index and modality name ("image", "text", ...).
// Not thread-safe: one trainer thread adds and reads.
class RoutingStats {
 public:
  // Adds one forward pass. Throws c10::Error when the number of experts
  // differs from earlier passes of the same layer and modality.
  void add(int layer, const std::string& modality, const RoutingMetrics& metrics);

  void reset() { counts_.clear(); }
  bool empty() const { return counts_.empty(); }

  // Layers with any counts, ascending.
  std::vector<int> layers() const;
  // Modalities counted for `layer`, in name order; empty for an unknown layer.
  std::vector<std::string> modalities(int layer) const;
  // The counts of (layer, modality), or nullptr when none were added.
  const RoutingCounts* find(int layer, const std::string& modality) const;

  // {"layers": [{"layer": 3, "modalities": {"image": {"tokens_per_expert": [...],
  //   "expert_share": [...], "top_choice_per_expert": [...],
  //   "top_choice_share": [...], "num_tokens": n, "dropped_tokens": d,
  //   "dropped_fraction": d / n, "num_passes": p}, ...}}, ...]}, layers ascending.
  nlohmann::json to_json() const;
  // The inverse of to_json(), for resuming a run: replaces every count.
  // Throws std::invalid_argument when `json` does not have that layout.
  void from_json(const nlohmann::json& json);

  // A table for people: per MoE layer and modality, the share of the
  // modality's tokens that each expert takes (tokens_per_expert over tokens;
  // above 1/E in total when experts share tokens) and that pick it first.
  std::string report() const;

 private:
  std::map<int, std::map<std::string, RoutingCounts>> counts_;
};

}  // namespace imp
