// Linked with one layer's whole library and only the layers below it (CMakeLists.txt, mllm_layer):
// it builds only when that layer calls nothing above it. It is never run.
int main() {
  return 0;
}
