// Document packing: assign documents to fixed-width rows, then fill the row tensors.
//
// Two strategies:
//   greedy   - order-preserving next-fit (the reference recipe's layout): a row is flushed when the next
//              document does not fit.
//   best_fit - best-fit decreasing: documents in decreasing length (ties by index) go to the open row with
//              the least free space that still fits them; fewer rows, less padding.
// Empty documents get row -1; documents longer than the capacity are truncated to it.
//
// Rows are written from flat int64 buffers (token ids, loss mask, document offsets), either as [rows, W]
// tensors or as one set of [W] tensors per row. flatten_sample_values fills those buffers from per-sample
// Python lists in one pass, without a tensor per sample.

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

namespace {

// Destination of one packed row: five int64 [capacity] buffers, every entry of which is written.
struct RowBuffers {
  int64_t* ids;
  int64_t* loss;
  int64_t* attn;
  int64_t* pos;
  int64_t* rem;
};

// Validate flat documents and their row assignment before anything is written; return the number of
// documents in each row.
std::vector<int64_t> docs_per_row(const int64_t* op, const int64_t* rp, int64_t n, int64_t total, int64_t num_rows,
                                  int64_t capacity) {
  TORCH_CHECK(capacity >= 1, "capacity must be >= 1, got ", capacity);
  TORCH_CHECK(num_rows >= 0, "num_rows must be >= 0, got ", num_rows);
  TORCH_CHECK(n == 0 || op[0] == 0, "offsets[0] must be 0, got ", n == 0 ? 0 : op[0]);
  TORCH_CHECK(op[n] == total, "offsets[-1] must equal len(token_ids) = ", total, ", got ", op[n]);
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
  for (int64_t r = 0; r < num_rows; ++r) {
    TORCH_CHECK(row_docs[r] > 0, "row ", r, " holds no document");
  }
  return row_docs;
}

// Write every document into its row (after the row's earlier documents), then each row's trailing pad:
// positions continue the last document (clamped to capacity - 1) and the pad count is folded into that
// document's length, so every row's seq_lens sums to the capacity. seq_lens[r] must be empty on entry.
void write_rows(const int64_t* idp, const int64_t* lmp, const int64_t* op, const int64_t* rp, int64_t n,
                int64_t capacity, int64_t pad_token_id, const std::vector<RowBuffers>& rows,
                std::vector<std::vector<int64_t>>& seq_lens) {
  const int64_t num_rows = static_cast<int64_t>(rows.size());
  std::vector<int64_t> cursor(num_rows, 0);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t r = rp[i];
    if (r < 0) continue;
    const int64_t l = std::min(op[i + 1] - op[i], capacity);
    const RowBuffers& row = rows[r];
    const int64_t c = cursor[r];
    const int64_t* src_ids = idp + op[i];
    const int64_t* src_loss = lmp + op[i];
    for (int64_t j = 0; j < l; ++j) {
      row.ids[c + j] = src_ids[j];
      row.loss[c + j] = src_loss[j] != 0 ? 1 : 0;
      row.attn[c + j] = 1;
      row.pos[c + j] = j;
      row.rem[c + j] = l - 1 - j;
    }
    seq_lens[r].push_back(l);
    cursor[r] += l;
  }
  for (int64_t r = 0; r < num_rows; ++r) {
    const RowBuffers& row = rows[r];
    const int64_t c = cursor[r];
    const int64_t last = seq_lens[r].back();
    for (int64_t j = 0; j < capacity - c; ++j) {
      row.ids[c + j] = pad_token_id;
      row.loss[c + j] = 0;
      row.attn[c + j] = 0;
      row.pos[c + j] = std::min(last + j, capacity - 1);
      row.rem[c + j] = 0;
    }
    seq_lens[r].back() += capacity - c;
  }
}

struct FlatInputs {
  torch::Tensor ids, loss, offsets, row_of_doc;
};

FlatInputs check_flat_inputs(const torch::Tensor& token_ids, const torch::Tensor& loss_mask,
                             const torch::Tensor& offsets, const torch::Tensor& row_of_doc) {
  check_1d_int64(token_ids, "token_ids");
  check_1d_int64(loss_mask, "loss_mask");
  check_1d_int64(offsets, "offsets");
  check_1d_int64(row_of_doc, "row_of_doc");
  TORCH_CHECK(offsets.numel() == row_of_doc.numel() + 1, "offsets must have len(row_of_doc) + 1 = ",
              row_of_doc.numel() + 1, " entries, got ", offsets.numel());
  TORCH_CHECK(loss_mask.numel() == token_ids.numel(), "loss_mask must have as many entries as token_ids (",
              token_ids.numel(), "), got ", loss_mask.numel());
  return {token_ids.contiguous(), loss_mask.contiguous(), offsets.contiguous(), row_of_doc.contiguous()};
}

}  // namespace

std::vector<torch::Tensor> fill_packed_rows(const torch::Tensor& token_ids, const torch::Tensor& loss_mask,
                                            const torch::Tensor& offsets, const torch::Tensor& row_of_doc,
                                            int64_t num_rows, int64_t capacity, int64_t pad_token_id) {
  const FlatInputs in = check_flat_inputs(token_ids, loss_mask, offsets, row_of_doc);
  const int64_t n = in.row_of_doc.numel();
  const int64_t* op = in.offsets.data_ptr<int64_t>();
  const int64_t* rp = in.row_of_doc.data_ptr<int64_t>();
  const std::vector<int64_t> row_docs = docs_per_row(op, rp, n, in.ids.numel(), num_rows, capacity);
  const int64_t max_docs = num_rows == 0 ? 0 : *std::max_element(row_docs.begin(), row_docs.end());

  auto opts = torch::TensorOptions().dtype(torch::kInt64);
  auto out_ids = torch::empty({num_rows, capacity}, opts);
  auto out_loss = torch::empty({num_rows, capacity}, opts);
  auto out_attn = torch::empty({num_rows, capacity}, opts);
  auto out_pos = torch::empty({num_rows, capacity}, opts);
  auto out_rem = torch::empty({num_rows, capacity}, opts);
  std::vector<RowBuffers> rows(num_rows);
  for (int64_t r = 0; r < num_rows; ++r) {
    const int64_t at = r * capacity;
    rows[r] = {out_ids.data_ptr<int64_t>() + at, out_loss.data_ptr<int64_t>() + at, out_attn.data_ptr<int64_t>() + at,
               out_pos.data_ptr<int64_t>() + at, out_rem.data_ptr<int64_t>() + at};
  }
  std::vector<std::vector<int64_t>> seq_lens(num_rows);
  write_rows(in.ids.data_ptr<int64_t>(), in.loss.data_ptr<int64_t>(), op, rp, n, capacity, pad_token_id, rows,
             seq_lens);

  auto out_seq = torch::zeros({num_rows, max_docs}, opts);
  auto out_ndocs = torch::empty({num_rows}, opts);
  int64_t* o_seq = out_seq.data_ptr<int64_t>();
  int64_t* o_nd = out_ndocs.data_ptr<int64_t>();
  for (int64_t r = 0; r < num_rows; ++r) {
    std::copy(seq_lens[r].begin(), seq_lens[r].end(), o_seq + r * max_docs);
    o_nd[r] = row_docs[r];
  }
  return {out_ids, out_loss, out_attn, out_pos, out_rem, out_seq, out_ndocs};
}

std::vector<PackedRow> packed_row_list(const torch::Tensor& token_ids, const torch::Tensor& loss_mask,
                                       const torch::Tensor& offsets, const torch::Tensor& row_of_doc,
                                       int64_t num_rows, int64_t capacity, int64_t pad_token_id) {
  const FlatInputs in = check_flat_inputs(token_ids, loss_mask, offsets, row_of_doc);
  const int64_t n = in.row_of_doc.numel();
  const int64_t* op = in.offsets.data_ptr<int64_t>();
  const int64_t* rp = in.row_of_doc.data_ptr<int64_t>();
  docs_per_row(op, rp, n, in.ids.numel(), num_rows, capacity);

  // One allocation per row tensor: each row owns its memory, so pickling or sending one row to a
  // dataloader worker never drags the whole packed set along.
  auto opts = torch::TensorOptions().dtype(torch::kInt64);
  std::vector<PackedRow> out(num_rows);
  std::vector<RowBuffers> rows(num_rows);
  for (int64_t r = 0; r < num_rows; ++r) {
    PackedRow& row = out[r];
    row = PackedRow{torch::empty({capacity}, opts), torch::empty({capacity}, opts), torch::empty({capacity}, opts),
                    torch::empty({capacity}, opts), torch::empty({capacity}, opts), {}};
    rows[r] = {std::get<0>(row).data_ptr<int64_t>(), std::get<1>(row).data_ptr<int64_t>(),
               std::get<2>(row).data_ptr<int64_t>(), std::get<3>(row).data_ptr<int64_t>(),
               std::get<4>(row).data_ptr<int64_t>()};
  }
  std::vector<std::vector<int64_t>> seq_lens(num_rows);
  write_rows(in.ids.data_ptr<int64_t>(), in.loss.data_ptr<int64_t>(), op, rp, n, capacity, pad_token_id, rows,
             seq_lens);
  for (int64_t r = 0; r < num_rows; ++r) std::get<5>(out[r]) = std::move(seq_lens[r]);
  return out;
}

// ---- Reading per-sample Python values into flat buffers -------------------------------------------------
// Runs with the GIL held (it reads Python objects) and creates no per-sample Python or torch objects for
// list / tuple values: each element is read once, straight into the output buffer.

namespace {

namespace py = pybind11;

// One sample's value for one column: a list / tuple read element by element, or an integer tensor viewed
// as flat contiguous int64.
struct SampleValue {
  PyObject* seq = nullptr;  // borrowed: the caller's column list keeps it alive
  torch::Tensor tensor;
  int64_t size = 0;
};

SampleValue open_value(py::handle obj, int64_t sample, const char* name) {
  PyObject* p = obj.ptr();
  SampleValue v;
  if (PyList_Check(p) || PyTuple_Check(p)) {
    v.seq = p;
    v.size = PySequence_Fast_GET_SIZE(p);
    return v;
  }
  if (THPVariable_Check(p)) {
    const torch::Tensor& t = THPVariable_Unpack(p);
    if (!at::isIntegralType(t.scalar_type(), /*includeBool=*/true)) {
      throw py::type_error(c10::str("sample ", sample, ": ", name, " must hold integers, got a tensor of dtype ",
                                    t.scalar_type()));
    }
    v.tensor = t.detach().reshape(-1).to(torch::kCPU, torch::kInt64).contiguous();
    v.size = v.tensor.numel();
    return v;
  }
  throw py::type_error(c10::str("sample ", sample, ": ", name,
                                " must be a list or tuple of ints, a tensor or an array, got ", Py_TYPE(p)->tp_name));
}

// Element `pos` of a list value as int64 (as 0 / 1 when `binary`). Python ints and bools take the fast
// path; numpy integers and 0-d integer tensors go through __index__; anything else (floats, strings,
// nested lists) is an error naming the sample and the position.
int64_t read_element(PyObject* item, bool binary, int64_t sample, int64_t pos, const char* name) {
  if (PyLong_Check(item)) {
    int overflow = 0;
    const long long x = PyLong_AsLongLongAndOverflow(item, &overflow);
    if (overflow == 0) return binary ? (x != 0) : x;
    if (binary) return 1;
    throw py::value_error(c10::str("sample ", sample, ": ", name, "[", pos, "] does not fit in int64"));
  }
  if (PyIndex_Check(item)) {
    py::object index = py::reinterpret_steal<py::object>(PyNumber_Index(item));
    if (index) return read_element(index.ptr(), binary, sample, pos, name);
    PyErr_Clear();
  }
  throw py::type_error(c10::str("sample ", sample, ": ", name, "[", pos, "] must be an int, got ",
                                Py_TYPE(item)->tp_name));
}

// Write the first n values of `v` to out (as 0 / 1 when `binary`).
void read_values(const SampleValue& v, int64_t n, bool binary, int64_t* out, int64_t sample, const char* name) {
  if (v.seq == nullptr) {
    const int64_t* src = v.tensor.data_ptr<int64_t>();
    for (int64_t j = 0; j < n; ++j) out[j] = binary ? (src[j] != 0) : src[j];
    return;
  }
  PyObject** items = PySequence_Fast_ITEMS(v.seq);
  for (int64_t j = 0; j < n; ++j) out[j] = read_element(items[j], binary, sample, j, name);
}

}  // namespace

std::vector<torch::Tensor> flatten_sample_values(const py::list& input_ids, const py::list& loss_mask,
                                                 const py::list& attention_mask) {
  const int64_t n = static_cast<int64_t>(input_ids.size());
  TORCH_CHECK(static_cast<int64_t>(loss_mask.size()) == n, "loss_mask must have one entry per sample (", n,
              "), got ", loss_mask.size());
  TORCH_CHECK(attention_mask.empty() || static_cast<int64_t>(attention_mask.size()) == n,
              "attention_mask must be empty or have one entry per sample (", n, "), got ", attention_mask.size());
  // Pass 1: open every value and fix each document's kept length, so pass 2 writes into one allocation.
  std::vector<SampleValue> ids(n), loss(n);
  auto offsets = torch::empty({n + 1}, torch::kInt64);
  int64_t* op = offsets.data_ptr<int64_t>();
  op[0] = 0;
  std::vector<int64_t> scratch;
  for (int64_t i = 0; i < n; ++i) {
    ids[i] = open_value(input_ids[i], i, "input_ids");
    loss[i] = open_value(loss_mask[i], i, "loss_mask");
    if (ids[i].size != loss[i].size) {
      throw py::value_error(c10::str("sample ", i, ": input_ids has ", ids[i].size, " tokens but loss_mask has ",
                                     loss[i].size));
    }
    int64_t kept = ids[i].size;
    if (!attention_mask.empty() && !attention_mask[i].is_none()) {
      // A pre-padded sample keeps its first attention_mask.sum() tokens (right padding).
      const SampleValue attn = open_value(attention_mask[i], i, "attention_mask");
      scratch.resize(attn.size);
      read_values(attn, attn.size, /*binary=*/false, scratch.data(), i, "attention_mask");
      int64_t real = 0;
      for (int64_t x : scratch) real += x;
      kept = std::max<int64_t>(0, std::min(real, kept));
    }
    op[i + 1] = op[i] + kept;
  }
  // Pass 2: every element read once, straight into the flat buffers.
  auto token_ids = torch::empty({op[n]}, torch::kInt64);
  auto flat_loss = torch::empty({op[n]}, torch::kInt64);
  int64_t* tp = token_ids.data_ptr<int64_t>();
  int64_t* lp = flat_loss.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) {
    const int64_t kept = op[i + 1] - op[i];
    read_values(ids[i], kept, /*binary=*/false, tp + op[i], i, "input_ids");
    read_values(loss[i], kept, /*binary=*/true, lp + op[i], i, "loss_mask");
  }
  return {token_ids, flat_loss, offsets};
}

}  // namespace eagle_ext
