// Counter-based random numbers. Every random choice in the data pipeline is a
// pure function of (seed, counter), so batches come out the same whatever
// thread builds them and on every platform (unlike std::shuffle or
// std::discrete_distribution, whose results depend on the standard library).
#pragma once

#include <cstdint>
#include <string>

namespace imp {

// SplitMix64's finaliser: a bijective mix of all 64 bits.
inline uint64_t mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

inline uint64_t mix64(uint64_t a, uint64_t b) { return mix64(a ^ mix64(b)); }

// FNV-1a of a string, for deriving per-name seeds.
inline uint64_t hash_name(const std::string& name) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (unsigned char c : name) h = (h ^ c) * 0x100000001b3ULL;
  return h;
}

// A uniform double in [0, 1) from the top 53 bits.
inline double unit_double(uint64_t bits) { return static_cast<double>(bits >> 11) * 0x1.0p-53; }

// A uniform integer in [0, n), n > 0; the modulo bias is below 2^-40 for n < 2^24.
inline uint64_t below(uint64_t bits, uint64_t n) { return bits % n; }

}  // namespace imp
