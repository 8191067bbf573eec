// The smallest useful pybind11 module: proves headers, flags and linking.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <vector>

namespace {

std::vector<int> Utf8Bytes(const std::string& s) {
  return std::vector<int>(reinterpret_cast<const unsigned char*>(s.data()),
                          reinterpret_cast<const unsigned char*>(s.data()) + s.size());
}

}  // namespace

PYBIND11_MODULE(pybind_smoke, m) {
  m.doc() = "torchchat's pybind11 smoke test";
  m.def("utf8_bytes", &Utf8Bytes, "The UTF-8 bytes of a str, as ints.");
}
