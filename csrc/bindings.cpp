// Python bindings of eagle_ext._C. Argument checking lives in the C++ functions (TORCH_CHECK) and in the
// thin Python wrappers of eagle_ext.ops, which also convert dtypes and devices.

#include "ops.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "eagle_ext C++ hot paths: document packing, COD sampling, sequence-partition assignment";
  m.def("pack_documents", &eagle_ext::pack_documents, "Assign documents to rows (greedy | best_fit)",
        pybind11::arg("lengths"), pybind11::arg("capacity"), pybind11::arg("strategy"));
  m.def("fill_packed_rows", &eagle_ext::fill_packed_rows, "Fill packed row tensors from flat token buffers",
        pybind11::arg("token_ids"), pybind11::arg("loss_mask"), pybind11::arg("offsets"),
        pybind11::arg("row_of_doc"), pybind11::arg("num_rows"), pybind11::arg("capacity"),
        pybind11::arg("pad_token_id"), pybind11::call_guard<pybind11::gil_scoped_release>());
  m.def("packed_row_list", &eagle_ext::packed_row_list,
        "Packed rows as a list of (5 row tensors, seq_lens), each row tensor its own allocation",
        pybind11::arg("token_ids"), pybind11::arg("loss_mask"), pybind11::arg("offsets"),
        pybind11::arg("row_of_doc"), pybind11::arg("num_rows"), pybind11::arg("capacity"),
        pybind11::arg("pad_token_id"), pybind11::call_guard<pybind11::gil_scoped_release>());
  m.def("flatten_sample_values", &eagle_ext::flatten_sample_values,
        "Per-sample lists / tensors of input_ids and loss_mask to flat int64 buffers and offsets",
        pybind11::arg("input_ids"), pybind11::arg("loss_mask"), pybind11::arg("attention_mask"));
  m.def("generate_cod_sample_indices", &eagle_ext::generate_cod_sample_indices, "COD sample indices for one row",
        pybind11::arg("seq_length"), pybind11::arg("valid"), pybind11::arg("num_depths"),
        pybind11::arg("down_sample_ratio"), pybind11::arg("down_sample_ratio_min"), pybind11::arg("document_ids"),
        pybind11::arg("max_anchors"), pybind11::arg("seed"));
  m.def("assign_cod_segments", &eagle_ext::assign_cod_segments, "P-EAGLE sequence-partition assignment",
        pybind11::arg("anchor_pos"), pybind11::arg("depth"), pybind11::arg("seq_length"),
        pybind11::arg("num_segments"));
  m.def("cod_random_keys", &eagle_ext::cod_random_keys, "Counter-based COD sampling keys (for tests)",
        pybind11::arg("positions"), pybind11::arg("seed"), pybind11::arg("stream"));
}
