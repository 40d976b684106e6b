// Fuzz target: the safetensors reader (src/core/safetensors.h). The input is a whole .safetensors
// file. One that opens must hand out every tensor it lists with the shape its header gives, over
// bytes inside the file, and come back unchanged from save_safetensors + a second open.
#include <cstring>

#include "core/safetensors.h"
#include "fuzz_common.h"

using namespace mllm;

namespace {

volatile unsigned g_sink;  // keeps touch() from being optimised away

// Every byte of `t`, summed: a tensor over bytes outside the mapping faults here.
unsigned touch(const at::Tensor& t) {
  const auto* p = static_cast<const unsigned char*>(t.data_ptr());
  unsigned sum = 0;
  for (size_t i = 0; i < t.nbytes(); ++i) sum += p[i];
  return sum;
}

bool same_bytes(const at::Tensor& a, const at::Tensor& b) {
  return a.nbytes() == b.nbytes() &&
         (a.nbytes() == 0 || std::memcmp(a.data_ptr(), b.data_ptr(), a.nbytes()) == 0);
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  fuzz::init("safetensors");
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto path = fuzz::write_scratch("in.safetensors", data, size);
  fuzz::read([&] {
    const SafetensorsFile file(path);
    NamedTensors tensors;
    unsigned sum = 0;
    for (const std::string& name : file.names()) {
      const at::Tensor t = file.get(name);
      fuzz::check(t.sizes().vec() == file.shape(name), "tensor '" + name + "': shape differs");
      fuzz::check(t.is_contiguous(), "tensor '" + name + "' is not contiguous");
      sum += touch(t);
      tensors.emplace_back(name, t);
    }
    const auto copy = fuzz::state().scratch / "copy.safetensors";
    save_safetensors(copy, tensors, file.metadata());
    const SafetensorsFile again(copy);
    fuzz::check(again.names() == file.names(), "round trip: names or their order differ");
    fuzz::check(again.metadata() == file.metadata(), "round trip: metadata differs");
    for (const std::string& name : file.names()) {
      fuzz::check(again.dtype(name) == file.dtype(name), "round trip: '" + name + "' dtype");
      fuzz::check(again.shape(name) == file.shape(name), "round trip: '" + name + "' shape");
      fuzz::check(same_bytes(again.get(name), file.get(name)), "round trip: '" + name + "' data");
    }
    g_sink = sum;
  });
  return 0;
}
