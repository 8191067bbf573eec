// Python bindings: the module `llm_tokenizers` (named so to stay clear of
// HF's `tokenizers` package). See llm_tokenizers.pyi for the API.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "tokenizers/sampler.h"
#include "tokenizers/tiktoken.h"
#include "tokenizers/tokenizer.h"

namespace py = pybind11;
using namespace tokenizers;

namespace {

struct TokenizerError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

template <typename T>
T Unwrap(Result<T> r) {
  if (!r.ok()) throw TokenizerError(r.error());
  return std::move(r).value();
}
void Check(const Result<void>& r) {
  if (!r.ok()) throw TokenizerError(r.error());
}

std::string_view TextView(const py::handle& text);

SpecialPolicy PolicyFrom(const py::object& allowed) {
  if (PyUnicode_Check(allowed.ptr())) {
    const std::string_view s = TextView(allowed);
    if (s == "all") return SpecialPolicy::All();
    if (s == "none") return SpecialPolicy::None();
    throw TokenizerError("allowed_special must be 'all', 'none' or a set of strings");
  }
  if (allowed.is_none()) return SpecialPolicy::None();
  std::set<std::string, std::less<>> set;
  for (py::handle h : allowed) set.insert(h.cast<std::string>());
  return SpecialPolicy::Only(std::move(set));
}

// A view of the UTF-8 of a str (cached inside the str object, no copy) or
// of a bytes object's buffer; valid while `text` lives. Lone surrogates
// cannot be encoded and raise.
std::string_view TextView(const py::handle& text) {
  if (PyUnicode_Check(text.ptr())) {
    Py_ssize_t n = 0;
    const char* p = PyUnicode_AsUTF8AndSize(text.ptr(), &n);
    if (!p) throw py::error_already_set();
    return std::string_view(p, static_cast<size_t>(n));
  }
  if (PyBytes_Check(text.ptr())) {
    char* p = nullptr;
    Py_ssize_t n = 0;
    if (PyBytes_AsStringAndSize(text.ptr(), &p, &n) != 0) throw py::error_already_set();
    return std::string_view(p, static_cast<size_t>(n));
  }
  throw py::type_error("text must be str or bytes");
}

std::string TextFrom(const py::handle& text) { return std::string(TextView(text)); }

// Releasing the GIL costs more than encoding a short line.
constexpr size_t kReleaseGilAbove = 16 * 1024;

py::str ToStr(const std::string& bytes) {
  PyObject* s = PyUnicode_DecodeUTF8(bytes.data(), bytes.size(), "replace");
  if (!s) throw py::error_already_set();
  return py::reinterpret_steal<py::str>(s);
}

// Ids from any sequence of ints, without pybind11's per-element caster
// (decode of a long list is otherwise dominated by the conversion).
std::vector<int> IdsFrom(const py::handle& seq) {
  PyObject* fast = PySequence_Fast(seq.ptr(), "ids must be a sequence of int");
  if (!fast) throw py::error_already_set();
  py::object owner = py::reinterpret_steal<py::object>(fast);
  const Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
  PyObject** items = PySequence_Fast_ITEMS(fast);
  std::vector<int> ids(static_cast<size_t>(n));
  for (Py_ssize_t i = 0; i < n; ++i) {
    int overflow = 0;
    const long v = PyLong_AsLongAndOverflow(items[i], &overflow);
    if (v == -1 && PyErr_Occurred()) throw py::error_already_set();
    if (overflow || v < INT32_MIN || v > INT32_MAX) {
      throw TokenizerError("token id " + py::repr(items[i]).cast<std::string>() + " out of range");
    }
    ids[i] = static_cast<int>(v);
  }
  return ids;
}

py::list IdsTo(const std::vector<int>& ids) {
  PyObject* list = PyList_New(static_cast<Py_ssize_t>(ids.size()));
  if (!list) throw py::error_already_set();
  for (size_t i = 0; i < ids.size(); ++i) {
    PyList_SET_ITEM(list, static_cast<Py_ssize_t>(i), PyLong_FromLong(ids[i]));
  }
  return py::reinterpret_steal<py::list>(list);
}

struct PyTokenizer {
  std::shared_ptr<Tokenizer> tok;
};

struct PyStreamDecoder {
  std::shared_ptr<Tokenizer> tok;  // keeps the tokenizer alive
  StreamDecoder dec;
};

}  // namespace

PYBIND11_MODULE(llm_tokenizers, m) {
  m.doc() =
      "Tokenizers (tiktoken, HF tokenizer.json, GGUF-embedded, "
      "SentencePiece, llama2c) and token samplers, in C++.";
  py::register_exception<TokenizerError>(m, "TokenizerError", PyExc_ValueError);

  py::class_<PyStreamDecoder>(m, "StreamDecoder",
                              "Decodes ids one at a time into complete UTF-8 text.")
      .def(
          "push", [](PyStreamDecoder& d, int id) { return ToStr(Unwrap(d.dec.Push(id))); },
          py::arg("id"), "Adds one id; returns the text it completes (possibly '').")
      .def(
          "flush", [](PyStreamDecoder& d) { return ToStr(d.dec.Flush()); },
          "Returns held-back bytes of an unfinished character (as U+FFFD).");

  py::class_<PyTokenizer>(m, "Tokenizer", "A loaded tokenizer.")
      .def(
          "encode",
          [](const PyTokenizer& t, const py::object& text, bool bos, bool eos,
             const py::object& allowed_special) {
            const std::string_view s = TextView(text);
            const SpecialPolicy policy = PolicyFrom(allowed_special);
            if (s.size() < kReleaseGilAbove) {
              return IdsTo(Unwrap(t.tok->Encode(s, bos, eos, policy)));
            }
            Result<std::vector<int>> r = MakeError("");
            {
              py::gil_scoped_release release;
              r = t.tok->Encode(s, bos, eos, policy);
            }
            return IdsTo(Unwrap(std::move(r)));
          },
          py::arg("text"), py::arg("bos") = false, py::arg("eos") = false,
          py::arg("allowed_special") = "all",
          "Encodes str (or raw bytes) to ids. allowed_special: 'all', 'none' "
          "or a set of special-token strings to recognise; others are "
          "encoded as plain text.")
      .def(
          "encode_batch",
          [](const PyTokenizer& t, const std::vector<py::object>& texts, bool bos, bool eos,
             const py::object& allowed_special, int num_threads) {
            std::vector<std::string> in;
            in.reserve(texts.size());
            for (const auto& x : texts) in.push_back(TextFrom(x));
            const SpecialPolicy policy = PolicyFrom(allowed_special);
            std::vector<std::vector<int>> out(in.size());
            std::vector<std::string> errors(in.size());
            {
              py::gil_scoped_release release;
              int n = num_threads > 0 ? num_threads
                                      : static_cast<int>(std::thread::hardware_concurrency());
              n = std::max(1, std::min<int>(n, static_cast<int>(in.size())));
              auto work = [&](int w) {
                for (size_t i = w; i < in.size(); i += n) {
                  auto r = t.tok->Encode(in[i], bos, eos, policy);
                  if (r.ok())
                    out[i] = std::move(r).value();
                  else
                    errors[i] = r.error();
                }
              };
              std::vector<std::thread> threads;
              for (int w = 1; w < n; ++w) threads.emplace_back(work, w);
              work(0);
              for (auto& th : threads) th.join();
            }
            for (const auto& e : errors) {
              if (!e.empty()) throw TokenizerError(e);
            }
            py::list result(out.size());
            for (size_t i = 0; i < out.size(); ++i) result[i] = IdsTo(out[i]);
            return result;
          },
          py::arg("texts"), py::arg("bos") = false, py::arg("eos") = false,
          py::arg("allowed_special") = "all", py::arg("num_threads") = 0,
          "Encodes many texts on num_threads threads (0: one per core).")
      .def(
          "decode",
          [](const PyTokenizer& t, const py::object& ids) {
            return ToStr(Unwrap(t.tok->Decode(IdsFrom(ids))));
          },
          py::arg("ids"), "Decodes ids to str; ill-formed UTF-8 becomes U+FFFD.")
      .def(
          "decode_bytes",
          [](const PyTokenizer& t, const py::object& ids) {
            return py::bytes(Unwrap(t.tok->Decode(IdsFrom(ids))));
          },
          py::arg("ids"), "Decodes ids to the raw bytes.")
      .def(
          "stream_decoder",
          [](const PyTokenizer& t) { return PyStreamDecoder{t.tok, t.tok->NewStreamDecoder()}; },
          "A decoder that takes one id at a time.")
      .def(
          "id_to_piece",
          [](const PyTokenizer& t, int id) { return py::bytes(Unwrap(t.tok->IdToPiece(id))); },
          py::arg("id"),
          "The vocabulary entry of an id as bytes (for byte-level BPE the "
          "raw bytes, not the GPT-2 alphabet spelling).")
      .def(
          "piece_to_id",
          [](const PyTokenizer& t, const py::object& piece) {
            return Unwrap(t.tok->PieceToId(TextFrom(piece)));
          },
          py::arg("piece"), "The id of a vocabulary entry (str or bytes).")
      .def_property_readonly("vocab_size", [](const PyTokenizer& t) { return t.tok->vocab_size(); })
      .def_property_readonly(
          "bos_id", [](const PyTokenizer& t) { return t.tok->bos_id(); }, "The bos id, or -1.")
      .def_property_readonly(
          "add_bos", [](const PyTokenizer& t) { return t.tok->add_bos(); },
          "Whether a prompt without a chat template starts with bos_id.")
      .def_property_readonly(
          "eos_ids", [](const PyTokenizer& t) { return t.tok->eos_ids(); },
          "Ids that end generation (may be empty).")
      .def_property_readonly(
          "chat_template", [](const PyTokenizer& t) { return t.tok->chat_template(); },
          "The chat template shipped with the tokenizer, or ''.")
      .def_property_readonly(
          "type", [](const PyTokenizer& t) { return t.tok->type(); },
          "'tiktoken', 'hf', 'sentencepiece' or 'llama2c'.");

  m.def(
      "load",
      [](const std::string& path) {
        return PyTokenizer{std::shared_ptr<Tokenizer>(Unwrap(LoadTokenizer(path)))};
      },
      py::arg("path"),
      "Loads a tokenizer file, detecting its type (tokenizer.json, GGUF, "
      "tiktoken, SentencePiece, llama2c).");
  m.def(
      "load_tiktoken",
      [](const std::string& path, const std::string& pat_str, const py::object& special_tokens,
         const py::object& bos, const std::vector<std::string>& eos) {
        TiktokenOptions o;
        o.pattern = pat_str;
        if (py::isinstance<py::dict>(special_tokens)) {
          for (auto [name, id] : special_tokens.cast<py::dict>()) {
            o.special_tokens.emplace_back(name.cast<std::string>(), id.cast<int>());
          }
        } else if (!special_tokens.is_none()) {
          for (auto name : special_tokens)
            o.special_tokens.emplace_back(name.cast<std::string>(), -1);
        }
        o.bos = bos.is_none() ? "" : bos.cast<std::string>();
        o.eos = eos;
        return PyTokenizer{std::shared_ptr<Tokenizer>(Unwrap(LoadTiktoken(path, o)))};
      },
      py::arg("path"), py::kw_only(), py::arg("pat_str"), py::arg("special_tokens") = py::none(),
      py::arg("bos") = py::none(), py::arg("eos") = std::vector<std::string>{},
      "A tiktoken file with tiktoken.Encoding's pat_str and special_tokens (a dict of "
      "name -> id, or a list of names whose ids follow the base vocabulary); bos and eos "
      "name special tokens.");
  m.def(
      "from_gguf",
      [](const std::string& path) {
        return PyTokenizer{std::shared_ptr<Tokenizer>(Unwrap(LoadGgufTokenizer(path)))};
      },
      py::arg("path"), "Builds the tokenizer embedded in a GGUF file.");
  m.def(
      "write_tokenizer_json",
      [](const std::string& gguf_path, const std::string& out_dir) {
        Check(WriteTokenizerJson(gguf_path, out_dir));
      },
      py::arg("gguf_path"), py::arg("out_dir"),
      "Writes a GGUF file's tokenizer as out_dir/tokenizer.json and "
      "out_dir/tokenizer_config.json.");

  py::class_<Rng>(m, "Rng", "The sampler's random stream (see sampler.h).")
      .def(py::init<uint64_t>(), py::arg("seed"))
      .def("next_u64", &Rng::NextU64)
      .def("next_float", &Rng::NextFloat);

  py::class_<Sampler>(m, "Sampler",
                      "Seeded token sampler: greedy (temperature <= 0), "
                      "temperature, top-k, top-p, min-p, repetition penalty.")
      .def(py::init([](float temperature, int top_k, float top_p, float min_p,
                       float repetition_penalty, uint64_t seed) {
             SamplerConfig c{temperature, top_k, top_p, min_p, repetition_penalty};
             Check(ValidateSamplerConfig(c));
             return Sampler(c, seed);
           }),
           py::arg("temperature") = 1.0f, py::arg("top_k") = 0, py::arg("top_p") = 1.0f,
           py::arg("min_p") = 0.0f, py::arg("repetition_penalty") = 1.0f, py::arg("seed") = 0)
      .def(
          "sample",
          [](Sampler& s, py::array_t<float, py::array::c_style | py::array::forcecast> logits,
             const std::vector<int>& recent) {
            if (logits.ndim() != 1) throw TokenizerError("logits must be 1-D");
            const float* data = logits.data();
            const size_t n = static_cast<size_t>(logits.size());
            Result<int> r = MakeError("");
            {
              py::gil_scoped_release release;
              r = s.Sample(data, n, recent.data(), recent.size());
            }
            return Unwrap(std::move(r));
          },
          py::arg("logits"), py::arg("recent") = std::vector<int>(),
          "Picks the next id from 1-D float32 logits; the last "
          "REPETITION_WINDOW ids of `recent` get the repetition penalty.");
  m.attr("REPETITION_WINDOW") = kRepetitionWindow;
}
