// Encode throughput of our tokenizers against Hugging Face tokenizers (Node binding) on the same
// text: the parity corpus repeated. Prints tokens/s for each; asserts nothing.
//   tokenizer_bench TOKENIZER_JSON [CORPUS_JSON] [REPEAT]
// Built as build/bench_tokenizer; run through scripts/bench.
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>

#include <nlohmann/json.hpp>

#include "core/fs.h"
#include "data/tokenizer/tokenizer.h"

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "usage: tokenizer_bench TOKENIZER_JSON [CORPUS_JSON] [REPEAT]\n";
    return 2;
  }
  const std::string corpus_path = argc > 2 ? argv[2] : "tests/data/tokenizer_corpus.json";
  const int repeat = argc > 3 ? std::atoi(argv[3]) : 50;
  const auto corpus = nlohmann::json::parse(mllm::read_file(corpus_path));
  // Distinct strings per repetition so the word cache sees realistic reuse, not identical input.
  nlohmann::json big = nlohmann::json::array();
  for (int r = 0; r < repeat; ++r)
    for (const auto& s : corpus) big.push_back(s.get<std::string>() + " " + std::to_string(r));
  const std::string big_path = "/tmp/tokenizer_bench_corpus.json";
  std::ofstream(big_path) << big.dump();

  auto tok = mllm::load_tokenizer(argv[1]);
  const auto t0 = std::chrono::steady_clock::now();
  size_t n = 0;
  for (const auto& s : big) n += tok->encode(s.get<std::string>()).size();
  const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("ours: %zu tokens in %.3f s = %.0f tokens/s\n", n, sec, n / sec);

  const std::string cmd = std::string("node scripts/tokenizer_reference.mjs '") + argv[1] + "' " +
                          big_path + " --bench";
  FILE* p = popen(cmd.c_str(), "r");
  std::string out;
  char buf[4096];
  size_t k;
  while (p && (k = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, k);
  if (!p || pclose(p) != 0 || out.empty()) {
    std::printf("reference: node run failed (run scripts/fetch-tokenizers)\n");
    return 0;
  }
  const auto r = nlohmann::json::parse(out);
  const double rt = r["tokens"].get<double>(), rs = r["seconds"].get<double>();
  std::printf("HF tokenizers (node): %.0f tokens in %.3f s = %.0f tokens/s\n", rt, rs, rt / rs);
  return 0;
}
