// Document packing: assign documents to fixed-width rows, then fill the row tensors.
//
// Two strategies:
//   greedy   - order-preserving next-fit (the reference recipe's layout): a row is flushed when the next
//              document does not fit.
//   best_fit - best-fit decreasing: documents in decreasing length (ties by index) go to the open row with
//              the least free space that still fits them; fewer rows, less padding.
// Empty documents get row -1; documents longer than the capacity are truncated to it.

#include "ops.h"

#include <algorithm>
#include <numeric>
#include <set>
#include <utility>

namespace eagle_ext {

namespace {

void check_1d_int64(const torch::Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() == 1, name, " must be a 1-D tensor, got shape ", t.sizes());
  TORCH_CHECK(t.scalar_type() == torch::kInt64, name, " must be int64, got ", t.scalar_type());
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor, got device ", t.device());
}

// Throw naming the first negative length, if any. A separate (vectorisable) pass keeps the packing loops
// free of calls.
void check_lengths(const int64_t* len, int64_t n) {
  int64_t smallest = 0;
  for (int64_t i = 0; i < n; ++i) smallest = std::min(smallest, len[i]);
  if (smallest >= 0) return;
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK(len[i] >= 0, "lengths must be >= 0, got lengths[", i, "] = ", len[i]);
  }
}

int64_t pack_greedy(const int64_t* __restrict__ len, int64_t n, int64_t capacity, int64_t* __restrict__ row) {
  // Branch-free next-fit: whether a document opens a new row is data dependent and unpredictable, so the
  // state update uses selects instead of jumps.
  int64_t num_rows = 0;
  int64_t used = 0;  // tokens in the open row; 0 means no open row
  for (int64_t i = 0; i < n; ++i) {
    const int64_t l = len[i] < capacity ? len[i] : capacity;
    const bool opens = (l > 0) & ((used == 0) | (used + l > capacity));
    num_rows += opens;
    used = opens ? l : used + l;
    row[i] = l > 0 ? num_rows - 1 : -1;
  }
  return num_rows;
}

int64_t pack_best_fit(const int64_t* len, int64_t n, int64_t capacity, int64_t* row) {
  std::vector<int64_t> order;
  order.reserve(n);
  for (int64_t i = 0; i < n; ++i) {
    if (len[i] > 0) {
      order.push_back(i);
    } else {
      row[i] = -1;
    }
  }
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    return std::min(len[a], capacity) > std::min(len[b], capacity);
  });
  // Open rows keyed by (free space, row id): lower_bound(l) is the tightest row that fits.
  std::set<std::pair<int64_t, int64_t>> open;
  int64_t num_rows = 0;
  for (int64_t i : order) {
    const int64_t l = std::min(len[i], capacity);
    auto it = open.lower_bound({l, -1});
    int64_t r;
    int64_t free_after;
    if (it == open.end()) {
      r = num_rows++;
      free_after = capacity - l;
    } else {
      r = it->second;
      free_after = it->first - l;
      open.erase(it);
    }
    row[i] = r;
    if (free_after > 0) open.insert({free_after, r});
  }
  return num_rows;
}

}  // namespace

std::tuple<torch::Tensor, int64_t> pack_documents(const torch::Tensor& lengths, int64_t capacity,
                                                  const std::string& strategy) {
  check_1d_int64(lengths, "lengths");
  TORCH_CHECK(capacity >= 1, "capacity must be >= 1, got ", capacity);
  auto len = lengths.contiguous();
  const int64_t n = len.numel();
  const int64_t* lp = len.data_ptr<int64_t>();
  check_lengths(lp, n);
  auto row = torch::empty({n}, torch::kInt64);
  int64_t* rp = row.data_ptr<int64_t>();
  int64_t num_rows;
  if (strategy == "greedy") {
    num_rows = pack_greedy(lp, n, capacity, rp);
  } else if (strategy == "best_fit") {
    num_rows = pack_best_fit(lp, n, capacity, rp);
  } else {
    TORCH_CHECK(false, "strategy must be 'greedy' or 'best_fit', got '", strategy, "'");
  }
  return {row, num_rows};
}

std::vector<torch::Tensor> fill_packed_rows(const torch::Tensor& token_ids, const torch::Tensor& loss_mask,
                                            const torch::Tensor& offsets, const torch::Tensor& row_of_doc,
                                            int64_t num_rows, int64_t capacity, int64_t pad_token_id) {
  check_1d_int64(token_ids, "token_ids");
  check_1d_int64(loss_mask, "loss_mask");
  check_1d_int64(offsets, "offsets");
  check_1d_int64(row_of_doc, "row_of_doc");
  TORCH_CHECK(capacity >= 1, "capacity must be >= 1, got ", capacity);
  TORCH_CHECK(num_rows >= 0, "num_rows must be >= 0, got ", num_rows);
  const int64_t n = row_of_doc.numel();
  TORCH_CHECK(offsets.numel() == n + 1, "offsets must have len(row_of_doc) + 1 = ", n + 1, " entries, got ",
              offsets.numel());
  TORCH_CHECK(loss_mask.numel() == token_ids.numel(), "loss_mask must have as many entries as token_ids (",
              token_ids.numel(), "), got ", loss_mask.numel());
  auto ids = token_ids.contiguous();
  auto lm = loss_mask.contiguous();
  auto off = offsets.contiguous();
  auto rod = row_of_doc.contiguous();
  const int64_t* idp = ids.data_ptr<int64_t>();
  const int64_t* lmp = lm.data_ptr<int64_t>();
  const int64_t* op = off.data_ptr<int64_t>();
  const int64_t* rp = rod.data_ptr<int64_t>();
  const int64_t total = ids.numel();

  TORCH_CHECK(n == 0 || op[0] == 0, "offsets[0] must be 0, got ", n == 0 ? 0 : op[0]);
  TORCH_CHECK(op[n] == total, "offsets[-1] must equal len(token_ids) = ", total, ", got ", op[n]);
  // Documents per row, in original order; also validates the inputs before any write.
  std::vector<int64_t> row_used(num_rows, 0), row_docs(num_rows, 0);
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK(op[i + 1] >= op[i], "offsets must be non-decreasing, got offsets[", i, "] = ", op[i],
                " > offsets[", i + 1, "] = ", op[i + 1]);
    const int64_t l = std::min(op[i + 1] - op[i], capacity);
    const int64_t r = rp[i];
    if (r < 0) {
      TORCH_CHECK(l == 0, "row_of_doc[", i, "] is -1 but document ", i, " is not empty");
      continue;
    }
    TORCH_CHECK(r < num_rows, "row_of_doc[", i, "] = ", r, " is out of range for num_rows = ", num_rows);
    TORCH_CHECK(l > 0, "row_of_doc[", i, "] = ", r, " but document ", i, " is empty (expected -1)");
    row_used[r] += l;
    row_docs[r] += 1;
    TORCH_CHECK(row_used[r] <= capacity, "row ", r, " overflows capacity ", capacity);
  }
  int64_t max_docs = 0;
  for (int64_t r = 0; r < num_rows; ++r) {
    TORCH_CHECK(row_docs[r] > 0, "row ", r, " holds no document");
    max_docs = std::max(max_docs, row_docs[r]);
  }

  auto opts = torch::TensorOptions().dtype(torch::kInt64);
  auto out_ids = torch::full({num_rows, capacity}, pad_token_id, opts);
  auto out_loss = torch::zeros({num_rows, capacity}, opts);
  auto out_attn = torch::zeros({num_rows, capacity}, opts);
  auto out_pos = torch::zeros({num_rows, capacity}, opts);
  auto out_rem = torch::zeros({num_rows, capacity}, opts);
  auto out_seq = torch::zeros({num_rows, max_docs}, opts);
  auto out_ndocs = torch::zeros({num_rows}, opts);
  int64_t* o_ids = out_ids.data_ptr<int64_t>();
  int64_t* o_loss = out_loss.data_ptr<int64_t>();
  int64_t* o_attn = out_attn.data_ptr<int64_t>();
  int64_t* o_pos = out_pos.data_ptr<int64_t>();
  int64_t* o_rem = out_rem.data_ptr<int64_t>();
  int64_t* o_seq = out_seq.data_ptr<int64_t>();
  int64_t* o_nd = out_ndocs.data_ptr<int64_t>();

  std::vector<int64_t> cursor(num_rows, 0), last_len(num_rows, 0);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t r = rp[i];
    if (r < 0) continue;
    const int64_t l = std::min(op[i + 1] - op[i], capacity);
    const int64_t base = r * capacity + cursor[r];
    const int64_t src = op[i];
    for (int64_t j = 0; j < l; ++j) {
      o_ids[base + j] = idp[src + j];
      o_loss[base + j] = lmp[src + j] != 0 ? 1 : 0;
      o_attn[base + j] = 1;
      o_pos[base + j] = j;
      o_rem[base + j] = l - 1 - j;
    }
    o_seq[r * max_docs + o_nd[r]] = l;
    o_nd[r] += 1;
    cursor[r] += l;
    last_len[r] = l;
  }
  // Trailing pad: positions continue the last document (clamped to capacity - 1) and the pad count is
  // folded into that document's length, so every row's seq_lens sums to the capacity.
  for (int64_t r = 0; r < num_rows; ++r) {
    const int64_t pad = capacity - cursor[r];
    for (int64_t j = 0; j < pad; ++j) {
      o_pos[r * capacity + cursor[r] + j] = std::min(last_len[r] + j, capacity - 1);
    }
    o_seq[r * max_docs + o_nd[r] - 1] += pad;
  }
  return {out_ids, out_loss, out_attn, out_pos, out_rem, out_seq, out_ndocs};
}

}  // namespace eagle_ext
