#include "models/generate.h"

#include <algorithm>

#include <ATen/CPUGeneratorImpl.h>

#include "core/error.h"

namespace mllm {

torch::Tensor sampling_probs(const torch::Tensor& logits, double temperature, int64_t top_k,
                             double top_p) {
  auto l = logits.to(torch::kFloat);
  if (temperature <= 0) throw Error("[generate] temperature must be > 0");
  if (temperature != 1.0) l = l / temperature;
  const auto neg_inf = -std::numeric_limits<float>::infinity();
  if (top_k > 0 && top_k < l.size(-1)) {
    // Keep the k largest (ties at the k-th value kept, as transformers does).
    const auto kth = std::get<0>(l.topk(top_k, -1)).select(-1, top_k - 1).unsqueeze(-1);
    l = l.masked_fill(l < kth, neg_inf);
  }
  if (top_p < 1.0) {
    // Remove the lowest-probability tokens whose cumulative probability (ascending) is at most
    // 1 - top_p; the most likely token always stays.
    auto [sorted, order] = l.sort(-1, /*descending=*/false);
    auto cumulative = sorted.softmax(-1).cumsum(-1);
    auto remove = cumulative <= (1.0 - top_p);
    remove.select(-1, remove.size(-1) - 1).fill_(false);
    l = l.masked_fill(remove.scatter(-1, order, remove), neg_inf);
  }
  return l.softmax(-1);
}

GenerationResult generate(MultimodalModelImpl& model,
                          const std::vector<std::vector<int64_t>>& prompts,
                          const ImageBatch& images, const GenerationOptions& o,
                          const std::function<std::string(const std::vector<int64_t>&)>& decode,
                          const std::function<void(int64_t, int64_t)>& on_token) {
  if (prompts.empty()) return {};
  if (!o.stop_strings.empty() && !decode)
    throw Error("[generate] stop strings need a decode function");
  torch::NoGradGuard no_grad;
  const bool was_training = model.is_training();
  model.eval();
  const auto device = model.language_model->model->embed_tokens->weight.device();
  const auto B = static_cast<int64_t>(prompts.size());
  size_t T = 0;
  for (const auto& p : prompts) {
    if (p.empty()) throw Error("[generate] an empty prompt");
    T = std::max(T, p.size());
  }
  // Left padding: every row's last prompt token sits at the same column.
  auto ids = torch::full({B, static_cast<int64_t>(T)}, o.pad_id, torch::kLong);
  auto mask = torch::zeros({B, static_cast<int64_t>(T)}, torch::kLong);
  for (int64_t b = 0; b < B; ++b) {
    const auto& p = prompts[static_cast<size_t>(b)];
    const auto off = static_cast<int64_t>(T - p.size());
    ids[b].slice(0, off).copy_(torch::tensor(p, torch::kLong));
    mask[b].slice(0, off).fill_(1);
  }
  ids = ids.to(device);
  mask = mask.to(device);
  // Positions count real tokens only (pads get 0, which they never use).
  auto positions = (mask.cumsum(1) - 1).clamp_min(0);

  const auto& pixels = images.pixel_values;
  auto [embeds, extension] =
      model.prepare(ids, pixels.defined() ? pixels.to(device) : pixels, {}, images.layout);
  KvCache cache;
  // Only the last position's hidden state is read: the last layer runs its queries there alone.
  auto wanted = torch::zeros({B, static_cast<int64_t>(T)}, torch::kBool);
  wanted.select(1, -1).fill_(true);
  auto hidden = model.language_model->forward(embeds, mask, positions, nullptr, extension.get(),
                                              &cache, wanted);
  auto last = hidden.select(1, hidden.size(1) - 1);  // (B,C)

  torch::Generator gen = at::detail::createCPUGenerator(o.seed);
  GenerationResult r;
  r.tokens.assign(static_cast<size_t>(B), {});
  r.stopped_by.assign(static_cast<size_t>(B), "length");
  std::vector<bool> done(static_cast<size_t>(B), false);
  auto next_pos = positions.select(1, positions.size(1) - 1) + 1;  // (B)
  for (int64_t step = 0; step < o.max_new_tokens; ++step) {
    auto logits = model.logits(last).to(torch::kFloat);  // (B,V)
    if (o.vocab_limit > 0 && o.vocab_limit < logits.size(-1))
      logits.slice(-1, o.vocab_limit).fill_(-std::numeric_limits<float>::infinity());
    torch::Tensor next;
    if (o.sample) {
      const auto probs = sampling_probs(logits, o.temperature, o.top_k, o.top_p).cpu();
      next = torch::multinomial(probs, 1, false, gen).view({-1});
    } else {
      next = logits.argmax(-1).cpu();
    }
    bool all_done = true;
    for (int64_t b = 0; b < B; ++b) {
      const auto row = static_cast<size_t>(b);
      if (done[row]) {
        next[b] = o.pad_id;  // finished rows keep feeding padding, masked out
        continue;
      }
      const int64_t id = next[b].item<int64_t>();
      r.tokens[row].push_back(id);
      if (on_token) on_token(b, id);
      if (std::find(o.stop_ids.begin(), o.stop_ids.end(), id) != o.stop_ids.end()) {
        done[row] = true, r.stopped_by[row] = "stop_id";
      } else if (!o.stop_strings.empty()) {
        const std::string text = decode(r.tokens[row]);
        for (const auto& s : o.stop_strings)
          if (!s.empty() && text.find(s) != std::string::npos)
            done[row] = true, r.stopped_by[row] = "stop_string";
      }
      all_done = all_done && done[row];
    }
    if (all_done || step + 1 == o.max_new_tokens) break;
    // One more position: the chosen tokens (finished rows' padding is masked out).
    auto alive = torch::ones({B, 1}, torch::kLong);
    for (int64_t b = 0; b < B; ++b)
      if (done[static_cast<size_t>(b)]) alive[b][0] = 0;
    mask = torch::cat({mask, alive.to(device)}, 1);
    const auto step_ids = next.view({B, 1}).to(device);
    auto e = model.language_model->embed(step_ids);
    hidden = model.language_model->forward(e, mask, next_pos.view({B, 1}), nullptr, extension.get(),
                                           &cache);
    last = hidden.select(1, 0);
    next_pos = next_pos + 1;
  }
  if (was_training) model.train();
  return r;
}

}  // namespace mllm
