// Document packing: assign documents to fixed-width rows, then fill the row tensors.
//
// Two strategies:
//   greedy   - order-preserving next-fit (the reference recipe's layout): a row is flushed when the next
//              document does not fit.
//   best_fit - best-fit decreasing: documents in decreasing length (ties by index) go to the open row with
//              the least free space that still fits them; fewer rows, less padding.
// Empty documents get row -1; documents longer than the capacity are truncated to it.
//
// Rows are written from flat buffers (token ids and loss mask in any integer dtype, int64 document offsets),
// either as [rows, W] int64 tensors or as one set of [W] int64 tensors per row, rows in parallel.
// flatten_sample_values fills those buffers from per-sample Python lists in one pass, without a tensor per
// sample.

#include "ops.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

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

// The documents of each row in input order, as CSR: row r holds doc_index[row_ptr[r] .. row_ptr[r + 1]).
struct RowDocs {
  std::vector<int64_t> row_ptr;
  std::vector<int64_t> doc_index;
  int64_t num_docs(int64_t r) const { return row_ptr[r + 1] - row_ptr[r]; }
  const int64_t* docs(int64_t r) const { return doc_index.data() + row_ptr[r]; }
};

// Validate flat documents and their row assignment before anything is written; return each row's documents.
RowDocs rows_of_docs(const int64_t* op, const int64_t* rp, int64_t n, int64_t total, int64_t num_rows,
                     int64_t capacity) {
  TORCH_CHECK(capacity >= 1, "capacity must be >= 1, got ", capacity);
  TORCH_CHECK(num_rows >= 0, "num_rows must be >= 0, got ", num_rows);
  TORCH_CHECK(n == 0 || op[0] == 0, "offsets[0] must be 0, got ", n == 0 ? 0 : op[0]);
  TORCH_CHECK(op[n] == total, "offsets[-1] must equal len(token_ids) = ", total, ", got ", op[n]);
  std::vector<int64_t> row_used(num_rows, 0);
  RowDocs out;
  out.row_ptr.assign(num_rows + 1, 0);
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
    out.row_ptr[r + 1] += 1;
    TORCH_CHECK(row_used[r] <= capacity, "row ", r, " overflows capacity ", capacity);
  }
  for (int64_t r = 0; r < num_rows; ++r) {
    TORCH_CHECK(out.row_ptr[r + 1] > 0, "row ", r, " holds no document");
    out.row_ptr[r + 1] += out.row_ptr[r];
  }
  // Counting sort by row; scanning documents in order keeps them in order within each row.
  out.doc_index.resize(out.row_ptr[num_rows]);
  std::vector<int64_t> cursor(out.row_ptr.begin(), out.row_ptr.end() - 1);
  for (int64_t i = 0; i < n; ++i) {
    if (rp[i] >= 0) out.doc_index[cursor[rp[i]]++] = i;
  }
  return out;
}

// Write one row: its documents one after another, then the trailing pad, whose positions continue the last
// document (clamped to capacity - 1) and whose length is folded into that document's entry of seq_lens
// (num_docs entries), so every row's seq_lens sums to the capacity. Ids and loss mask are read in their own
// dtypes (Id, Loss) and widened to int64 as they are written.
template <typename Id, typename Loss>
void write_row(const Id* ids, const Loss* loss, const int64_t* op, const int64_t* docs, int64_t num_docs,
               int64_t capacity, int64_t pad_token_id, const RowBuffers& row, int64_t* seq_lens) {
  int64_t* __restrict__ o_ids = row.ids;
  int64_t* __restrict__ o_loss = row.loss;
  int64_t* __restrict__ o_attn = row.attn;
  int64_t* __restrict__ o_pos = row.pos;
  int64_t* __restrict__ o_rem = row.rem;
  int64_t c = 0;
  for (int64_t k = 0; k < num_docs; ++k) {
    const int64_t i = docs[k];
    const int64_t l = std::min(op[i + 1] - op[i], capacity);
    const Id* __restrict__ src_ids = ids + op[i];
    const Loss* __restrict__ src_loss = loss + op[i];
    // One loop per output: each is a widening copy, a compare, a fill or a ramp that the compiler
    // vectorises, where one loop storing to five arrays stays scalar.
    for (int64_t j = 0; j < l; ++j) o_ids[c + j] = static_cast<int64_t>(src_ids[j]);
    for (int64_t j = 0; j < l; ++j) o_loss[c + j] = src_loss[j] != 0 ? 1 : 0;
    for (int64_t j = 0; j < l; ++j) o_attn[c + j] = 1;
    for (int64_t j = 0; j < l; ++j) o_pos[c + j] = j;
    for (int64_t j = 0; j < l; ++j) o_rem[c + j] = l - 1 - j;
    seq_lens[k] = l;
    c += l;
  }
  const int64_t last = seq_lens[num_docs - 1];
  for (int64_t j = c; j < capacity; ++j) o_ids[j] = pad_token_id;
  for (int64_t j = c; j < capacity; ++j) o_loss[j] = 0;
  for (int64_t j = c; j < capacity; ++j) o_attn[j] = 0;
  for (int64_t j = c; j < capacity; ++j) o_pos[j] = std::min(last + j - c, capacity - 1);
  for (int64_t j = c; j < capacity; ++j) o_rem[j] = 0;
  seq_lens[num_docs - 1] += capacity - c;
}

// Call fn(ids, loss) with typed pointers to the flat buffers in their own dtypes: Arrow columns usually hold
// int32 ids and int8 masks, and reading them as they are saves a widening copy of every token.
template <typename Fn>
void with_token_buffers(const torch::Tensor& ids, const torch::Tensor& loss, const Fn& fn) {
  AT_DISPATCH_INTEGRAL_TYPES(ids.scalar_type(), "token_ids", [&] {
    const scalar_t* id_ptr = ids.data_ptr<scalar_t>();
    AT_DISPATCH_INTEGRAL_TYPES_AND(at::kBool, loss.scalar_type(), "loss_mask",
                                   [&] { fn(id_ptr, loss.data_ptr<scalar_t>()); });
  });
}

// Rows are independent once each knows its documents, so they are written in parallel (torch's intra-op
// threads, torch.get_num_threads()); the output is the same for any thread count. Each row writes 5 x W
// int64, so one row per task already amortises the scheduling.
template <typename Fn>
void for_each_row(int64_t num_rows, const Fn& fn) {
  at::parallel_for(0, num_rows, /*grain_size=*/1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) fn(r);
  });
}

void check_1d_tokens(const torch::Tensor& t, const char* name, bool allow_bool) {
  TORCH_CHECK(t.dim() == 1, name, " must be a 1-D tensor, got shape ", t.sizes());
  const auto dtype = t.scalar_type();
  const bool readable = dtype == torch::kInt8 || dtype == torch::kUInt8 || dtype == torch::kInt16 ||
                        dtype == torch::kInt32 || dtype == torch::kInt64 || (allow_bool && dtype == torch::kBool);
  TORCH_CHECK(readable, name,
              " must be an integer tensor (int8, uint8, int16, int32 or int64", allow_bool ? " or bool" : "",
              "), got ", dtype);
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor, got device ", t.device());
}

struct FlatInputs {
  torch::Tensor ids, loss, offsets, row_of_doc;
};

FlatInputs check_flat_inputs(const torch::Tensor& token_ids, const torch::Tensor& loss_mask,
                             const torch::Tensor& offsets, const torch::Tensor& row_of_doc) {
  check_1d_tokens(token_ids, "token_ids", /*allow_bool=*/false);
  check_1d_tokens(loss_mask, "loss_mask", /*allow_bool=*/true);
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
  const RowDocs plan = rows_of_docs(op, in.row_of_doc.data_ptr<int64_t>(), n, in.ids.numel(), num_rows, capacity);
  int64_t max_docs = 0;
  for (int64_t r = 0; r < num_rows; ++r) max_docs = std::max(max_docs, plan.num_docs(r));

  auto opts = torch::TensorOptions().dtype(torch::kInt64);
  auto out_ids = torch::empty({num_rows, capacity}, opts);
  auto out_loss = torch::empty({num_rows, capacity}, opts);
  auto out_attn = torch::empty({num_rows, capacity}, opts);
  auto out_pos = torch::empty({num_rows, capacity}, opts);
  auto out_rem = torch::empty({num_rows, capacity}, opts);
  auto out_seq = torch::zeros({num_rows, max_docs}, opts);
  auto out_ndocs = torch::empty({num_rows}, opts);
  int64_t* o_seq = out_seq.data_ptr<int64_t>();
  int64_t* o_nd = out_ndocs.data_ptr<int64_t>();
  with_token_buffers(in.ids, in.loss, [&](const auto* idp, const auto* lmp) {
    for_each_row(num_rows, [&](int64_t r) {
      const int64_t at = r * capacity;
      const RowBuffers row{out_ids.data_ptr<int64_t>() + at, out_loss.data_ptr<int64_t>() + at,
                           out_attn.data_ptr<int64_t>() + at, out_pos.data_ptr<int64_t>() + at,
                           out_rem.data_ptr<int64_t>() + at};
      write_row(idp, lmp, op, plan.docs(r), plan.num_docs(r), capacity, pad_token_id, row, o_seq + r * max_docs);
      o_nd[r] = plan.num_docs(r);
    });
  });
  return {out_ids, out_loss, out_attn, out_pos, out_rem, out_seq, out_ndocs};
}

std::vector<PackedRow> packed_row_list(const torch::Tensor& token_ids, const torch::Tensor& loss_mask,
                                       const torch::Tensor& offsets, const torch::Tensor& row_of_doc,
                                       int64_t num_rows, int64_t capacity, int64_t pad_token_id) {
  const FlatInputs in = check_flat_inputs(token_ids, loss_mask, offsets, row_of_doc);
  const int64_t n = in.row_of_doc.numel();
  const int64_t* op = in.offsets.data_ptr<int64_t>();
  const RowDocs plan = rows_of_docs(op, in.row_of_doc.data_ptr<int64_t>(), n, in.ids.numel(), num_rows, capacity);

  // One allocation per row tensor: each row owns its memory, so pickling or sending one row to a
  // dataloader worker never drags the whole packed set along, and freeing rows frees their memory. Each
  // task allocates its own rows, so allocation and first touch of the pages run in parallel too.
  auto opts = torch::TensorOptions().dtype(torch::kInt64);
  std::vector<PackedRow> out(num_rows);
  with_token_buffers(in.ids, in.loss, [&](const auto* idp, const auto* lmp) {
    for_each_row(num_rows, [&](int64_t r) {
      PackedRow& row = out[r];
      row = PackedRow{torch::empty({capacity}, opts), torch::empty({capacity}, opts), torch::empty({capacity}, opts),
                      torch::empty({capacity}, opts), torch::empty({capacity}, opts),
                      std::vector<int64_t>(plan.num_docs(r))};
      const RowBuffers buffers{std::get<0>(row).data_ptr<int64_t>(), std::get<1>(row).data_ptr<int64_t>(),
                               std::get<2>(row).data_ptr<int64_t>(), std::get<3>(row).data_ptr<int64_t>(),
                               std::get<4>(row).data_ptr<int64_t>()};
      write_row(idp, lmp, op, plan.docs(r), plan.num_docs(r), capacity, pad_token_id, buffers,
                std::get<5>(row).data());
    });
  });
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
