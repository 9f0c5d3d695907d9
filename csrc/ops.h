// Declarations of the C++ hot paths bound in bindings.cpp.
#pragma once

#include <torch/extension.h>

#include <cstdint>
#include <string>
#include <tuple>
#include <vector>

namespace eagle_ext {

// Packing (packing.cpp).
std::tuple<torch::Tensor, int64_t> pack_documents(const torch::Tensor& lengths, int64_t capacity,
                                                  const std::string& strategy);
std::vector<torch::Tensor> fill_packed_rows(const torch::Tensor& token_ids, const torch::Tensor& loss_mask,
                                            const torch::Tensor& offsets, const torch::Tensor& row_of_doc,
                                            int64_t num_rows, int64_t capacity, int64_t pad_token_id);
// One packed row: input_ids, loss_mask, attention_mask, position_ids, doc_remaining (int64 [capacity], each
// its own allocation) and seq_lens.
using PackedRow = std::tuple<torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor,
                             std::vector<int64_t>>;
std::vector<PackedRow> packed_row_list(const torch::Tensor& token_ids, const torch::Tensor& loss_mask,
                                       const torch::Tensor& offsets, const torch::Tensor& row_of_doc,
                                       int64_t num_rows, int64_t capacity, int64_t pad_token_id);
// Per-sample Python values (lists / tuples of ints, or integer tensors) to flat (token_ids, loss_mask 0/1,
// offsets) int64 buffers; needs the GIL.
std::vector<torch::Tensor> flatten_sample_values(const pybind11::list& input_ids, const pybind11::list& loss_mask,
                                                 const pybind11::list& attention_mask);

// COD sampling and sequence partitioning (cod.cpp).
std::tuple<torch::Tensor, torch::Tensor> generate_cod_sample_indices(
    int64_t seq_length, const torch::Tensor& valid, int64_t num_depths, double down_sample_ratio,
    double down_sample_ratio_min, const torch::Tensor& document_ids, int64_t max_anchors, uint64_t seed);
torch::Tensor assign_cod_segments(const torch::Tensor& anchor_pos, const torch::Tensor& depth, int64_t seq_length,
                                  int64_t num_segments);
torch::Tensor cod_random_keys(const torch::Tensor& positions, uint64_t seed, uint64_t stream);

}  // namespace eagle_ext
