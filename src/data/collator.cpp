#include "data/collator.h"

#include <spdlog/spdlog.h>

#include <algorithm>

#include "core/error.h"

namespace mllm {

Batch Batch::to(const torch::Device& device) const {
  Batch b = *this;
  b.input_ids = input_ids.to(device);
  b.labels = labels.to(device);
  b.attention_mask = attention_mask.to(device);
  if (position_ids.defined()) b.position_ids = position_ids.to(device);
  if (pixel_values.defined()) b.pixel_values = pixel_values.to(device);
  return b;
}

std::vector<std::vector<size_t>> pack_rows(const std::vector<int64_t>& lengths, int64_t capacity) {
  std::vector<size_t> order(lengths.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return lengths[a] > lengths[b]; });
  std::vector<std::vector<size_t>> rows;
  std::vector<int64_t> room;
  for (size_t i : order) {
    size_t r = 0;
    while (r < rows.size() && room[r] < lengths[i]) ++r;
    if (r == rows.size()) rows.emplace_back(), room.push_back(capacity);
    rows[r].push_back(i);
    room[r] -= lengths[i];
  }
  for (auto& row : rows) std::sort(row.begin(), row.end());
  return rows;
}

Batch collate(const std::vector<const Sample*>& samples, const ImageTransform& transform,
              int64_t pad_id, bool skip_bad_images, int64_t* dropped, int64_t pack_length) {
  std::vector<const Sample*> kept;
  // Per kept sample, per image (a video's frames are images): its crops (k,3,S,S) — one, or with
  // AnyRes the base image and the tiles — its pooling and its (height, width) for AnyRes.
  std::vector<std::vector<torch::Tensor>> images_of;
  std::vector<std::vector<int64_t>> pool_of;
  std::vector<std::vector<int64_t>> size_of;  // height, width, height, width, ...
  for (const Sample* s : samples) {
    std::vector<torch::Tensor> images;
    std::vector<int64_t> pools, sizes;
    try {
      for (const Visual& v : s->visuals) {
        const bool anyres = v.kind == Visual::Kind::image && transform.anyres();
        if (v.kind == Visual::Kind::video_file) {
          const auto frames = transform.load_video(v.files.at(0), v.frames);
          for (int64_t f = 0; f < frames.size(0); ++f) images.push_back(frames.slice(0, f, f + 1));
        } else if (anyres) {
          images.push_back(transform.load_anyres(v.files.at(0), {v.height, v.width}));
        } else {
          for (const auto& file : v.files) images.push_back(transform.load(file).unsqueeze(0));
        }
        pools.resize(images.size(), v.video() ? v.pool : 1);
        sizes.resize(2 * images.size(), 0);
        if (anyres) sizes.end()[-2] = v.height, sizes.end()[-1] = v.width;
      }
    } catch (const Error& e) {
      if (!skip_bad_images) throw Error(std::string(e.what()) + " (record id " + s->id + ")");
      spdlog::warn("skipping record {}: {}", s->id, e.what());
      if (dropped) ++*dropped;
      continue;
    }
    kept.push_back(s);
    images_of.push_back(std::move(images));
    pool_of.push_back(std::move(pools));
    size_of.push_back(std::move(sizes));
  }
  if (kept.empty()) throw Error("[collate] every sample of the batch was dropped");
  std::vector<int64_t> lengths;
  for (const Sample* s : kept) lengths.push_back(static_cast<int64_t>(s->input_ids.size()));
  std::vector<std::vector<size_t>> rows;
  if (pack_length > 0) {
    rows = pack_rows(lengths, pack_length);
  } else {
    for (size_t i = 0; i < kept.size(); ++i) rows.push_back({i});
  }
  int64_t T = 0;
  for (const auto& row : rows) {
    int64_t n = 0;
    for (size_t i : row) n += lengths[i];
    T = std::max(T, n);
  }
  const auto B = static_cast<int64_t>(rows.size());
  Batch b;
  b.input_ids = torch::full({B, T}, pad_id, torch::kLong);
  b.labels = torch::full({B, T}, kIgnoreIndex, torch::kLong);
  b.attention_mask = torch::zeros({B, T}, torch::kLong);
  // Unpacked rows leave position_ids undefined (0..T-1); packed ones restart them per sample.
  auto positions = torch::zeros({pack_length > 0 ? B : 0, T}, torch::kLong);
  if (pack_length > 0) b.position_ids = positions;
  auto pos = positions.accessor<int64_t, 2>();
  auto ids = b.input_ids.accessor<int64_t, 2>();
  auto labels = b.labels.accessor<int64_t, 2>();
  auto mask = b.attention_mask.accessor<int64_t, 2>();
  std::vector<torch::Tensor> images;
  std::vector<int64_t> pools, sizes;
  for (int64_t r = 0; r < B; ++r) {
    int64_t at = 0, number = 0;
    std::string row_ids;
    bool row_image = false;
    for (size_t i : rows[static_cast<size_t>(r)]) {
      const Sample& s = *kept[i];
      ++number;
      for (size_t t = 0; t < s.input_ids.size(); ++t, ++at) {
        ids[r][at] = s.input_ids[t];
        labels[r][at] = s.labels[t];
        mask[r][at] = number;
        if (pack_length > 0) pos[r][at] = static_cast<int64_t>(t);
        // Position 0 of each sample predicts nothing (nothing of its own precedes it).
        if (t > 0 && s.labels[t] != kIgnoreIndex) ++b.supervised_tokens;
      }
      if (number > 1) labels[r][at - static_cast<int64_t>(s.input_ids.size())] = kIgnoreIndex;
      b.tokens += static_cast<int64_t>(s.input_ids.size());
      row_ids += (row_ids.empty() ? "" : "+") + s.id;
      for (const auto& image : images_of[i]) images.push_back(image), row_image = true;
      pools.insert(pools.end(), pool_of[i].begin(), pool_of[i].end());
      sizes.insert(sizes.end(), size_of[i].begin(), size_of[i].end());
    }
    b.ids.push_back(row_ids);
    b.has_image.push_back(row_image);
  }
  b.samples = static_cast<int64_t>(kept.size());
  b.positions = B * T;
  b.unpacked_positions = b.samples * *std::max_element(lengths.begin(), lengths.end());
  if (!images.empty()) b.pixel_values = torch::cat(images);
  if (std::any_of(pools.begin(), pools.end(), [](int64_t p) { return p > 1; }))
    b.image_pool = torch::tensor(pools, torch::kLong);
  if (std::any_of(sizes.begin(), sizes.end(), [](int64_t x) { return x > 0; }))
    b.image_sizes = torch::tensor(sizes, torch::kLong).view({-1, 2});
  return b;
}

}  // namespace mllm
