// AdamW over the trainable parameters, in two groups — weight decay on matrices, none on biases,
// norms and other vectors (as HF Trainer does); on the token embeddings only with
// train.weight_decay_embeddings — and the learning-rate schedule, a pure function
// of the step so that a resumed run needs only the step to continue exactly.
#pragma once

#include <memory>

#include <torch/torch.h>

#include "core/config.h"

namespace mllm {

// The weight decay AdamW applies to a trainable parameter: train.weight_decay on matrices (the
// token embeddings only with train.weight_decay_embeddings), 0 on vectors.
double weight_decay_of(const std::string& name, const torch::Tensor& p, const TrainConfig& train);

std::unique_ptr<torch::optim::AdamW> make_optimizer(torch::nn::Module& module,
                                                    const TrainConfig& train);

// lr for the update after `step` completed updates, out of `total` (transformers'
// get_{cosine,linear,constant}_schedule_with_warmup: linear warmup from 0 over
// ceil(warmup_ratio*total) steps, then decay to min_lr_ratio*lr).
double lr_at(const TrainConfig& train, int64_t step, int64_t total);

// ceil(warmup_ratio * total): the warmup steps lr_at uses.
int64_t warmup_steps(const TrainConfig& train, int64_t total);

void set_lr(torch::optim::Optimizer& optimizer, double lr);

}  // namespace mllm
