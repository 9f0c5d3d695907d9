// COD (conditional-on-distribution) sampling for P-EAGLE and sequence-partition assignment.
//
// Depth 0 is every position 0..L-1. Depth d >= 1 samples reference positions from a pool that holds the
// successors (p + 1) of the depth d-1 sample, so every chain is a complete prefix and ref = anchor + depth.
// Per-depth size: int(max(0, N - d) * max(r^d, r_min)); sampling stops at the first size <= 0, and a pool
// smaller than the size is kept whole.
//
// Randomness is counter based: element p at depth d gets the key splitmix64-mix of (seed, d, p); a depth
// keeps the `size` pool members with the smallest keys (ties by position). The same (seed, inputs) therefore
// gives the same indices on every machine and thread count, and tests/reference/cod.py reproduces it.

#include "ops.h"

#include <algorithm>
#include <cmath>
#include <utility>

namespace eagle_ext {

namespace {

constexpr uint64_t kGamma = 0x9E3779B97F4A7C15ULL;

inline uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

// Key of position p in stream s under seed: independent uniform 64-bit values for distinct (s, p).
inline uint64_t stream_base(uint64_t seed, uint64_t stream) { return mix64(mix64(seed + kGamma) ^ (stream * kGamma)); }
inline uint64_t position_key(uint64_t base, uint64_t p) { return mix64(base + (p + 1) * kGamma); }

// Keep the k members of `pool` (sorted positions) with the smallest (key, position); return them sorted by
// position. The k-th smallest key is found with nth_element on the bare keys, then one ordered scan keeps
// the keys below it and, among keys equal to it, the lowest positions: no pairs and no final sort.
std::vector<int64_t> sample_sorted(const std::vector<int64_t>& pool, size_t k, uint64_t seed, uint64_t stream) {
  if (pool.size() <= k) return pool;
  std::vector<int64_t> out;
  if (k == 0) return out;
  const uint64_t base = stream_base(seed, stream);
  std::vector<uint64_t> keys(pool.size());
  for (size_t i = 0; i < pool.size(); ++i) keys[i] = position_key(base, static_cast<uint64_t>(pool[i]));
  std::vector<uint64_t> scratch(keys);
  std::nth_element(scratch.begin(), scratch.begin() + (k - 1), scratch.end());
  const uint64_t threshold = scratch[k - 1];
  size_t ties = k;  // how many keys equal to the threshold may be kept
  for (size_t i = 0; i + 1 < k; ++i) ties -= scratch[i] < threshold ? 1 : 0;
  out.reserve(k);
  for (size_t i = 0; i < pool.size(); ++i) {
    if (keys[i] < threshold || (keys[i] == threshold && ties > 0)) {
      if (keys[i] == threshold) --ties;
      out.push_back(pool[i]);
    }
  }
  return out;
}

void check_1d(const torch::Tensor& t, const char* name, torch::ScalarType dtype) {
  TORCH_CHECK(t.dim() == 1, name, " must be a 1-D tensor, got shape ", t.sizes());
  TORCH_CHECK(t.scalar_type() == dtype, name, " must be ", dtype, ", got ", t.scalar_type());
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor, got device ", t.device());
}

}  // namespace

torch::Tensor cod_random_keys(const torch::Tensor& positions, uint64_t seed, uint64_t stream) {
  check_1d(positions, "positions", torch::kInt64);
  auto pos = positions.contiguous();
  auto out = torch::empty_like(pos);
  const int64_t* pp = pos.data_ptr<int64_t>();
  int64_t* op = out.data_ptr<int64_t>();
  const uint64_t base = stream_base(seed, stream);
  for (int64_t i = 0; i < pos.numel(); ++i) {
    op[i] = static_cast<int64_t>(position_key(base, static_cast<uint64_t>(pp[i])));
  }
  return out;
}

std::tuple<torch::Tensor, torch::Tensor> generate_cod_sample_indices(
    int64_t seq_length, const torch::Tensor& valid, int64_t num_depths, double down_sample_ratio,
    double down_sample_ratio_min, const torch::Tensor& document_ids, int64_t max_anchors, uint64_t seed) {
  TORCH_CHECK(seq_length >= 0, "seq_length must be >= 0, got ", seq_length);
  TORCH_CHECK(num_depths >= 1, "num_depths must be >= 1, got ", num_depths);
  TORCH_CHECK(down_sample_ratio > 0.0 && down_sample_ratio <= 1.0, "down_sample_ratio must be in (0, 1], got ",
              down_sample_ratio);
  TORCH_CHECK(down_sample_ratio_min > 0.0 && down_sample_ratio_min <= 1.0,
              "down_sample_ratio_min must be in (0, 1], got ", down_sample_ratio_min);
  check_1d(valid, "valid", torch::kBool);
  TORCH_CHECK(valid.numel() == seq_length, "valid must have seq_length = ", seq_length, " entries, got ",
              valid.numel());
  const bool has_doc = document_ids.numel() > 0;
  if (has_doc) {
    check_1d(document_ids, "document_ids", torch::kInt64);
    TORCH_CHECK(document_ids.numel() == seq_length, "document_ids must have seq_length = ", seq_length,
                " entries, got ", document_ids.numel());
  }
  auto vt = valid.contiguous();
  auto dt = has_doc ? document_ids.contiguous() : document_ids;
  const bool* v = vt.data_ptr<bool>();
  const int64_t* doc = has_doc ? dt.data_ptr<int64_t>() : nullptr;
  const int64_t L = seq_length;

  // A position q can extend a chain whose previous ref is q - 1 when it is supervised and, with document
  // ids, lies in the same (real) document as q - 1. Position 0 never qualifies: its anchor would be -1.
  auto extends = [&](int64_t q) {
    if (q <= 0 || q >= L || !v[q]) return false;
    return !has_doc || (doc[q] >= 0 && doc[q] == doc[q - 1]);
  };

  int64_t n_valid = 0;
  std::vector<int64_t> pool;
  for (int64_t p = 0; p < L; ++p) {
    n_valid += v[p] ? 1 : 0;
    if (extends(p)) pool.push_back(p);
  }
  int64_t n_seed = n_valid;
  if (max_anchors >= 0 && n_valid > max_anchors) {
    n_seed = max_anchors;
    pool = sample_sorted(pool, static_cast<size_t>(max_anchors), seed, 0);
  }

  std::vector<int64_t> anchors;
  std::vector<int64_t> depths;
  anchors.reserve(static_cast<size_t>(L) * 2);
  for (int64_t p = 0; p < L; ++p) anchors.push_back(p);
  depths.assign(static_cast<size_t>(L), 0);

  for (int64_t d = 1; d < num_depths; ++d) {
    const double keep = std::max(std::pow(down_sample_ratio, static_cast<double>(d)), down_sample_ratio_min);
    const int64_t size = static_cast<int64_t>(static_cast<double>(std::max<int64_t>(0, n_seed - d)) * keep);
    if (size <= 0) break;
    std::vector<int64_t> sel = sample_sorted(pool, static_cast<size_t>(size), seed, static_cast<uint64_t>(d));
    std::vector<int64_t> next;
    next.reserve(sel.size());
    for (int64_t q : sel) {
      anchors.push_back(q - d);
      depths.push_back(d);
      if (extends(q + 1)) next.push_back(q + 1);
    }
    pool.swap(next);
  }

  const int64_t n = static_cast<int64_t>(anchors.size());
  auto anchor_t = torch::empty({n}, torch::kInt64);
  auto depth_t = torch::empty({n}, torch::kInt64);
  std::copy(anchors.begin(), anchors.end(), anchor_t.data_ptr<int64_t>());
  std::copy(depths.begin(), depths.end(), depth_t.data_ptr<int64_t>());
  return {anchor_t, depth_t};
}

torch::Tensor assign_cod_segments(const torch::Tensor& anchor_pos, const torch::Tensor& depth, int64_t seq_length,
                                  int64_t num_segments) {
  check_1d(anchor_pos, "anchor_pos", torch::kInt64);
  check_1d(depth, "depth", torch::kInt64);
  TORCH_CHECK(anchor_pos.numel() == depth.numel(), "anchor_pos and depth must have the same length, got ",
              anchor_pos.numel(), " and ", depth.numel());
  TORCH_CHECK(seq_length >= 1, "seq_length must be >= 1, got ", seq_length);
  TORCH_CHECK(num_segments >= 1, "num_segments must be >= 1, got ", num_segments);
  auto a = anchor_pos.contiguous();
  auto dd = depth.contiguous();
  auto out = torch::empty_like(a);
  const int64_t* ap = a.data_ptr<int64_t>();
  const int64_t* dp = dd.data_ptr<int64_t>();
  int64_t* op = out.data_ptr<int64_t>();
  const int64_t n = a.numel();
#ifdef EAGLE_EXT_OPENMP
#pragma omp parallel for if (n > 65536) schedule(static)
#endif
  for (int64_t i = 0; i < n; ++i) {
    // Depth >= 1 elements inherit the segment of their rollout's depth-1 position, anchor + 1.
    const int64_t bucket = ap[i] + (dp[i] > 0 ? 1 : 0);
    const int64_t seg = bucket <= 0 ? 0 : (bucket * num_segments) / seq_length;
    op[i] = std::min<int64_t>(seg, num_segments - 1);
  }
  return out;
}

}  // namespace eagle_ext
