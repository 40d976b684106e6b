// The multimodal model: vision tower -> connector -> LLM, with the module tree laid out as
// transformers' LlavaForConditionalGeneration so named_parameters() are llava-hf checkpoint keys:
// vision_tower.vision_model.*, multi_modal_projector.*, language_model.model.*,
// language_model.lm_head.
//
// The text has already been tokenized with every <image> expanded into Q placeholder ids (Q =
// connector->output_tokens()); forward() replaces exactly those positions with the connector's
// output, in order, and fails if the counts differ.
#pragma once

#include <torch/torch.h>

#include "core/anyres.h"
#include "core/config.h"
#include "models/connectors/connector.h"
#include "models/llm/llama.h"
#include "models/vision/clip_vit.h"

namespace mllm {

// How a batch's images become tokens beyond "one crop, Q tokens" (CPU int64 tensors, one entry
// per image; undefined = the default for every image): data/collator.h's Batch::image_pool and
// Batch::image_sizes.
struct ImageLayout {
  torch::Tensor pool;   // (N): image i's token grid average-pooled pool[i] x pool[i] (video)
  torch::Tensor sizes;  // (N,2): AnyRes: image i's (height, width), (0,0) for one plain crop
};

class MultimodalModelImpl : public torch::nn::Module {
 public:
  // `image_token_id` is the tokenizer's placeholder id for image positions.
  MultimodalModelImpl(const ModelConfig& config, int64_t image_token_id);

  // Text embeddings with image features spliced in (token-level connectors; a feature-level one
  // leaves the text embeddings as they are). input_ids (B,T); pixel_values (M,3,H,W): the crops
  // of the batch's images, one each unless AnyRes (may be 0 / undefined). Returns (B,T,C).
  // `layout` says how each image's crops become tokens (image_tokens_of). What a connector does
  // inside the LLM (prepare's extension) is not part of it.
  torch::Tensor embed(const torch::Tensor& input_ids, const torch::Tensor& pixel_values,
                      const ImageLayout& layout = {});

  // Hidden states after the LLM's final norm, (B,T,C). attention_mask (B,T) may be undefined;
  // in packed rows it numbers each token's sample and position_ids (B,T) restart per sample
  // (data/collator.h). `wanted` (B,T) bool, when given: the positions the caller reads (the
  // others may be zeros), so that the LLM's last layer runs at those alone (LlamaModelImpl).
  torch::Tensor forward(const torch::Tensor& input_ids, const torch::Tensor& pixel_values,
                        const torch::Tensor& attention_mask = {},
                        const torch::Tensor& position_ids = {}, const ImageLayout& layout = {},
                        const torch::Tensor& wanted = {});

  // The LLM's input for a batch: its embeddings (images spliced in for a token-level connector)
  // and what the connector does inside the decoder's layers (Connector::decoder_extension; null
  // for the plain token-level designs). forward() runs exactly this; generation keeps the
  // extension for every step.
  std::pair<torch::Tensor, std::shared_ptr<DecoderExtension>> prepare(
      const torch::Tensor& input_ids, const torch::Tensor& pixel_values,
      const torch::Tensor& attention_mask = {}, const ImageLayout& layout = {});

  // (...,C) -> (...,V)
  torch::Tensor logits(const torch::Tensor& hidden) { return language_model->logits(hidden); }
  // (N,C), (N) -> (N) fp32 log-probabilities of the targets, the LM head in bounded chunks
  // (LlamaForCausalLMImpl::target_logprobs).
  torch::Tensor target_logprobs(const torch::Tensor& hidden, const torch::Tensor& targets) {
    return language_model->target_logprobs(hidden, targets);
  }

  // Q: placeholder tokens per image (per crop with AnyRes).
  int64_t image_tokens() const { return connector->output_tokens(); }
  // What the data side counts with: Q, and with AnyRes the pinpoints and the tile size.
  ImageTokens image_token_counts() const;
  const std::vector<Resolution>& anyres_pinpoints() const { return pinpoints_; }

  // The connector's tokens (M,Q,C) of a batch's crops -> (the images' tokens, C), image by image:
  // a plain image as it is (pooled when layout.pool says so: pool_image_tokens); an AnyRes image
  // as transformers' LlavaNext pack_image_features (spatial_unpad): its base crop's tokens, then
  // its tiles' token grids side by side with the padding's rows or columns cut off
  // (anyres_unpadded), image_newline after each row.
  torch::Tensor image_tokens_of(const torch::Tensor& tokens, const ImageLayout& layout);
  int64_t image_token_id() const { return image_token_id_; }
  const ModelConfig& config() const { return config_; }
  ModelConfig& config_mutable() { return config_; }  // loss weights (e.g. router_aux_loss_coef)

  // Whether gradients must flow into the vision tower (any of its parameters trainable). When not,
  // the tower runs in inference mode without building a graph.
  bool vision_trainable() const;

  ClipVisionModel vision_tower{nullptr};
  std::shared_ptr<Connector> connector;  // registered as "multi_modal_projector"
  LlamaForCausalLM language_model{nullptr};
  // (C): LLaVA-NeXT's learned end-of-row embedding, with AnyRes only (undefined otherwise). It
  // trains with the connector (train/freeze.h).
  torch::Tensor image_newline;

 private:
  // The vision tower's features (N,P,Cv) for the batch's images (without a graph when frozen).
  torch::Tensor image_features(const torch::Tensor& pixel_values,
                               const torch::TensorOptions& options);

  ModelConfig config_;
  int64_t image_token_id_;
  std::vector<Resolution> pinpoints_;  // AnyRes; empty when off
};
TORCH_MODULE(MultimodalModel);

// Splices image tokens into text embeddings: every position where `is_image` (B,T) is true takes
// the next row of `image_tokens` (N*Q,C), in row-major order. Out of place; gradients reach both
// inputs.
// For a feature-level connector: which image each token sees, (B,T) int64, -1 for none, -2 for
// padding. Images are numbered in the order of their placeholders (`is_image` (B,T), row by row);
// a token sees the image of its sample (the attention_mask value it shares with the placeholder;
// one sample per row when attention_mask is undefined or 0/1). Throws when a sample has more than
// one placeholder or the placeholders are not `images`.
torch::Tensor token_images(const torch::Tensor& is_image, const torch::Tensor& attention_mask,
                           int64_t images);

torch::Tensor splice_image_tokens(const torch::Tensor& text_embeds, const torch::Tensor& is_image,
                                  const torch::Tensor& image_tokens);

// The connector's tokens (N,Q,C) of a batch's images, flattened to (sum of kept tokens, C) in image
// order: image i as it is where pool[i] is 1, else its sqrt(Q) x sqrt(Q) grid average-pooled
// pool[i] x pool[i] (ceil: a partial window averages what it covers), as LLaVA-OneVision pools
// video frames. `pool` (N) int64, undefined = no pooling.
torch::Tensor pool_image_tokens(const torch::Tensor& tokens, const torch::Tensor& pool);

}  // namespace mllm
