// The typed configuration of a run: one struct per YAML section (run, model, data, train), each
// with its defaults. `parse_config` reads a recipe, applies `--set key.path=value` overrides,
// checks every key, type, range and file, and reports the first problem as one ConfigError that
// names the YAML file and line (or the --set argument) and the key path. No LibTorch here: this
// header is cheap.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace mllm {

// Data parallelism over c10d (train/distributed.h). The ranks come from the launcher's environment
// (torchrun, scripts/launch, Slurm); these settings only tune how they talk.
struct DistributedConfig {
  std::string backend = "auto";  // auto (nccl on CUDA, gloo on CPU) | gloo | nccl
  // Seconds a rank waits for the others (joining, or in any collective) before it gives up with an
  // error naming the step: a rank that died or hung stops the run instead of hanging it.
  double timeout = 1800;
  double bucket_mb = 25;  // gradient all-reduce bucket size, as DDP's bucket_cap_mb
};

struct RunConfig {
  std::string name = "run";
  std::string output_dir;  // default: runs/<name>
  int64_t seed = 0;
  std::string device = "auto";  // auto | cpu | cuda | cuda:N
  int64_t threads = 0;          // 0 = auto (all cores)
  std::string log_level = "info";
  // metrics.jsonl's numbers also as TensorBoard event files under <run>/tensorboard/.
  bool tensorboard = true;
  DistributedConfig distributed;
};

// LLaVA-NeXT's dynamic high resolution (core/anyres.h): each image is resized and padded to the
// best-fitting of these (height, width) resolutions, cut into image_size tiles, and encoded with a
// downscaled base image. Off when both are empty / 0.
struct AnyResConfig {
  std::vector<std::vector<int64_t>> grid_pinpoints;  // [[336, 672], [672, 336], ...]
  int64_t max_tiles = 0;  // or: every rows x cols grid of tiles with rows * cols <= max_tiles
  bool enabled() const { return !grid_pinpoints.empty() || max_tiles > 0; }
};

struct VisionConfig {
  std::string type = "clip_vit";
  std::string pretrained;  // HF folder, or empty for random init from run.seed
  int64_t image_size = 64;
  int64_t patch_size = 8;
  int64_t hidden = 64;
  int64_t layers = 3;
  int64_t heads = 4;
  int64_t intermediate = 256;
  double layer_norm_eps = 1e-5;
  int64_t feature_layer = -2;    // index into hidden_states (0 = embeddings), negative from the end
  std::string select = "patch";  // patch | cls_patch
  // Standard deviation of a new tower's position embeddings (transformers' CLIP: initializer_range,
  // 0.02); not used when the tower is loaded. Next to patch features of norm ~1, 0.02 leaves a
  // small tower trained on little data (ShapesWorld's clip stage) with features that barely say
  // where a patch is (configs/shapes/stage0_clip.yaml).
  double position_init_std = 0.02;
  AnyResConfig anyres;
};

// A CLIP text tower, as transformers' CLIPTextConfig (its defaults:
// openai/clip-vit-base-patch32's).
struct ClipTextConfig {
  int64_t vocab = 49408;
  int64_t hidden = 512;
  int64_t layers = 12;
  int64_t heads = 8;
  int64_t intermediate = 2048;
  int64_t max_position = 77;
  double layer_norm_eps = 1e-5;
  int64_t eos_token_id = 49407;  // the pooled state is each row's first EOS
  int64_t bos_token_id = 49406;
  int64_t pad_token_id = 1;
  int64_t projection_dim = 512;  // CLIPConfig's: both towers project to this
};

struct LlmConfig {
  std::string type = "llama";  // llama | qwen2 | mixtral
  std::string pretrained;      // HF folder or a run's final/ folder; its config.json wins
  int64_t hidden = 128;
  int64_t layers = 4;
  int64_t heads = 4;
  int64_t kv_heads = 4;
  int64_t head_dim = 0;  // 0 = hidden / heads
  int64_t intermediate = 352;
  int64_t vocab = 128;
  int64_t max_position = 2048;
  double rope_theta = 10000.0;
  std::string rope_scaling = "none";  // none | linear (positions divided by rope_scaling_factor)
  double rope_scaling_factor = 1.0;
  double rms_norm_eps = 1e-6;
  bool tie_word_embeddings = false;
  // Sparse mixture-of-experts feed-forward (Mixtral; MoE-LLaVA): experts > 0 replaces every
  // layer's MLP with `experts` SwiGLU experts behind a top-`experts_per_token` router.
  int64_t experts = 0;
  int64_t experts_per_token = 2;
  double router_aux_loss_coef = 0.01;  // weight of the load-balancing loss in the objective

  int64_t attention_head_dim() const { return head_dim > 0 ? head_dim : hidden / heads; }
};

struct ConnectorConfig {
  // linear | mlp2x_gelu | qformer | resampler | pool (token-level) | gated_xattn | adapter_prompt
  // (feature-level) | visual_expert (both)
  std::string type = "mlp2x_gelu";
  // Each key is read only by the types named after it.
  // qformer, resampler; 0 = the design's own default (qformer 32 as BLIP-2, resampler 64); the
  // resampler's must be a square (its queries form a grid).
  int64_t num_queries = 0;
  int64_t layers = 2;       // qformer blocks
  int64_t heads = 8;        // qformer, resampler; must divide the width
  int64_t hidden = 0;       // qformer, resampler width; 0 = model.vision.hidden
  int64_t pool_factor = 2;  // pool: kernel = stride on the patch grid; must divide its side
  int64_t xattn_every = 1;  // gated_xattn: a cross-attention block before every k-th LLM layer
  // resampler: add the 2D sin-cos positions to the attention's values as well as its keys, so that
  // each output token carries where what it read lies (Qwen-VL adds them to the keys only: false).
  bool value_positions = false;
  // resampler: each query attends only to the patches within `window` query-grid cells of its own
  // position (0.5: its own cell's patches; 0: every patch, as Qwen-VL). Locality as Honeybee's
  // locality-enhanced projectors argue for (Cha et al. 2024, arXiv:2312.06742): a query that
  // reads the whole image mixes the objects of several cells into its token.
  double window = 0;
  int64_t expert_every = 1;  // visual_expert: experts in every k-th LLM layer (CogVLM: every one)
  // visual_expert: the token-level design that makes the image tokens the experts work on
  // (CogVLM: mlp2x_gelu over every patch; resampler or pool for fewer tokens), with that design's
  // keys (num_queries, heads, hidden, value_positions, pool_factor) and parameter names.
  std::string projector = "mlp2x_gelu";
  // adapter_prompt: learned prompt tokens per adapted layer (LLaMA-Adapter: 10), and how many of
  // the top layers are adapted (0 = every layer; LLaMA-Adapter: the top 30 of 32).
  int64_t prompt_length = 10;
  int64_t prompt_layers = 0;
};

struct ModelConfig {
  VisionConfig vision;
  LlmConfig llm;
  ConnectorConfig connector;
  // The text tower of the contrastive stage (train.stage: clip) only; its vocabulary and EOS id
  // are the tokenizer's.
  ClipTextConfig text;
  std::string tokenizer;  // tokenizer.json
};

struct DataSourceConfig {
  // llava_json[l] | preference_json[l] (data/datasets.h) | sharegpt[_jsonl] | messages[_jsonl]
  // (data/formats.h: LLaMA-Factory's and ms-swift/TRL's layouts, conversations or preference
  // pairs as the stage reads)
  std::string format = "llava_json";
  std::string path;         // empty = none (only allowed for data.eval)
  std::string image_root;   // folder that record "image" paths are relative to
  int64_t max_samples = 0;  // 0 = all
  // In a mixture (data.train as a list; data/mixture.h) only: the share of each epoch this source
  // takes (`weight`, relative to the other weighted sources), or how many passes over it an epoch
  // makes (`epochs`); and the chat template it is rendered with ("" = data.template).
  double weight = 0;
  double epochs = 0;
  std::string template_name;  // YAML key: template
};

struct ImageConfig {
  int64_t size = 0;                                                // 0 = model.vision.image_size
  std::string aspect = "pad";                                      // pad | crop | resize
  std::vector<double> mean = {0.48145466, 0.4578275, 0.40821073};  // CLIP's
  std::vector<double> std = {0.26862954, 0.26130258, 0.27577711};
  // The most pixels an image may have when decoded, or on its way to size x size (the square a thin
  // image is padded to): larger ones are bad records. PIL's decompression-bomb error threshold,
  // 2 x Image.MAX_IMAGE_PIXELS; 0 = no limit.
  int64_t max_pixels = 178956970;

  // The side images are brought to: `size`, else the vision tower's input size.
  int64_t side(int64_t vision_image_size) const { return size > 0 ? size : vision_image_size; }
};

// Video records ("video": "clip.mp4" or a list of frame files; data/datasets.h): `frames` frames
// sampled uniformly over the clip (LLaVA-OneVision's np.linspace(0, n-1, frames)), each encoded as
// an image; `pool` > 1 average-pools each frame's token grid pool x pool (ceil), as OneVision
// pools video frames, so a frame takes ceil(side/pool)^2 tokens instead of side^2.
struct VideoConfig {
  int64_t frames = 8;
  std::string sampling = "uniform";  // uniform
  int64_t pool = 1;
};

struct DataConfig {
  // The training data: one source, or (`train: [{path, ..., weight | epochs}, ...]`) a mixture, of
  // which `train` is then the first source and `mixture` all of them.
  DataSourceConfig train;
  std::vector<DataSourceConfig> mixture;
  DataSourceConfig eval;
  // YAML key: template; data/chat_template.h. When a recipe leaves it out, load_config makes it hf
  // if the tokenizer's folder has a chat template (tokenizer_config.json or chat_template.jinja).
  std::string template_name = "plain";
  // YAML key: chat_template. A Jinja chat template file rendered as the tokenizer's own (template
  // hf) in place of its folder's — transformers' `tokenizer.chat_template = ...`, vLLM's
  // --chat-template; data.template then defaults to hf. final/'s tokenizer_config.json carries it.
  std::string chat_template;
  // YAML key: system. The system prompt of every record that has no system turn of its own, in
  // the templates that have one (vicuna_v1, llama_2, chatml, hf; plain and text have none): null
  // keeps the template's own (LLaVA's "A chat between a curious user and ..."), "" gives none —
  // LLaMA-Factory's default_system, ms-swift's --system. Saved with the model
  // (tokenizer_config.json "mllm_system"), so evaluation and generation prompt as training did.
  std::optional<std::string> system;
  int64_t max_length = 512;
  ImageConfig image;
  VideoConfig video;
  std::string on_bad_record = "error";  // error | skip
  int64_t workers = 2;                  // loader threads (0 = on the trainer's thread)
  int64_t prefetch = 2;                 // batches prepared ahead per worker
  bool group_by_length = false;         // length-grouped batches (less padding)
  // Several samples per row, up to max_length (data/packing.h): each attends only to itself,
  // positions restart per sample, the loss is the same as unpacked. Token-level and
  // feature-level connectors; not preference pairs.
  bool packing = false;
  // Record image paths must stay inside their image_root (no absolute paths, no ../ above it);
  // true lets a dataset point anywhere.
  bool allow_outside_image_root = false;
};

// Low-rank adapters (Hu et al. 2021) on the LLM's linear layers, as PEFT's LoraConfig: y = W x +
// (alpha / rank) * B(A(dropout(x))), A Kaiming-uniform, B zero, W frozen. Merged into W on export.
struct LoraConfig {
  int64_t rank = 0;  // 0 = off
  double alpha = 16.0;
  double dropout = 0.05;
  // Globs over module names (HF keys without .weight); every nn.Linear inside the LLM's decoder
  // layers by default, as LLaVA's --lora_enable (its find_all_linear_names) does.
  std::vector<std::string> targets = {"language_model.model.layers.*"};
};

// Stage 3: the DPO family as TRL defines it (train/dpo.h).
struct DpoConfig {
  std::string loss_type = "sigmoid";  // sigmoid | hinge | ipo
  double beta = 0.1;
  double label_smoothing = 0.0;  // sigmoid only
  // TRL's rpo_alpha (RPO, Pang et al. 2024): adds alpha x the policy's mean NLL of the chosen
  // replies, which keeps their likelihood from falling with the rejected ones' (0 = off).
  double rpo_alpha = 0.0;
};

// Stage 3 without a reference model: ORPO (Hong et al. 2024) as TRL's ORPOTrainer defines it
// (train/stages/orpo.cpp): the chosen sequence's NLL minus beta x mean log sigmoid(log odds ratio).
struct OrpoConfig {
  double beta = 0.1;  // the paper's lambda (TRL's ORPOConfig.beta)
};

// Stage 3 without a reference model: SimPO (Meng et al. 2024) as TRL's CPOTrainer with loss_type
// simpo defines it (train/stages/simpo.cpp): -log sigmoid(beta x (mean log-prob margin) - gamma).
struct SimpoConfig {
  double beta = 2.0;       // the SimPO paper's beta (its recipes use 2.0 to 2.5)
  double gamma = 1.0;      // the target reward margin (TRL's simpo_gamma; SimPO's gamma/beta = 0.5)
  double cpo_alpha = 0.0;  // + alpha x the chosen replies' mean NLL (TRL's CPO term; 0 = SimPO)
  double label_smoothing = 0.0;
};

struct TrainConfig {
  // The stage (train/stage.h): pretrain | instruct: next-token loss on the supervised tokens (the
  // caption; the assistant turns); dpo: preference pairs against a frozen reference copy of the
  // initial policy; orpo, simpo: preference pairs without a reference. Checked against the stage
  // registry when a recipe is loaded (train/recipe.h).
  std::string stage = "pretrain";
  std::vector<std::string> trainable;
  // A previous stage's result to start from: a run's final/ folder or one of its checkpoints.
  // Every tensor it holds replaces the freshly built one (the connector from stage 1, say); the
  // parts it does not hold keep their pretrained sources (model.*.pretrained) or seed init.
  std::string init_from;
  LoraConfig lora;
  DpoConfig dpo;
  OrpoConfig orpo;
  SimpoConfig simpo;
  bool gradient_checkpointing = false;  // recompute each LLM layer in backward (less memory)
  // Sharded data parallel (train/sharding.h), DeepSpeed's ZeRO stages: none (every rank holds
  // everything, as DDP) | optimizer (ZeRO-1: AdamW moments sharded) | gradients (ZeRO-2: and the
  // gradients) | parameters (ZeRO-3: and the trainable weights, gathered a decoder layer at a
  // time).
  std::string sharding = "none";
  // The fp32 logits the LM head may hold at once, in MiB (models/llm/lm_head_logprobs.h): the
  // supervised positions go through it in chunks this size, forward and backward. 0 = one chunk.
  int64_t lm_head_chunk_mb = 256;
  int64_t epochs = 1;
  int64_t max_steps = 0;  // 0 = bounded by epochs
  int64_t batch_size = 16;
  int64_t grad_accum = 1;
  double lr = 1e-3;
  double weight_decay = 0.0;            // on matrices; never on norms and biases
  bool weight_decay_embeddings = true;  // also on the token embeddings (HF Trainer does)
  std::vector<double> betas = {0.9, 0.999};
  double adam_eps = 1e-8;
  double warmup_ratio = 0.03;
  std::string schedule = "cosine";  // cosine | linear | constant
  double min_lr_ratio = 0.0;
  double clip_grad_norm = 1.0;  // 0 = off
  // A step whose loss or gradient norm is not finite is skipped (no update) and counted; this
  // many in a row abort the run (0: abort at the first).
  int64_t max_bad_steps = 3;
  std::string precision = "fp32";  // fp32 | bf16
  int64_t save_every = 0;          // 0 = only the final weights
  int64_t keep_last = 2;           // 0 = keep all
  int64_t log_every = 10;
  int64_t eval_every = 0;    // 0 = only at the start and the end
  int64_t eval_batches = 0;  // 0 = the whole eval set
};

// Decoding settings of an evaluation task (models/generate.h).
struct GenerationConfig {
  int64_t max_new_tokens = 32;
  double temperature = 0.0;  // 0 = greedy
  int64_t top_k = 0;         // 0 = off
  double top_p = 1.0;        // 1 = off
  int64_t seed = 0;
  std::vector<std::string> stop;  // stop strings (the tokenizer's EOS always stops)
};

// One evaluation task (eval/evaluate.h): a dataset whose first human turn is the prompt and whose
// reference answers are scored against what the model generates.
struct EvalTaskConfig {
  std::string name;                   // results key and file name; unique, no '/'
  std::string format = "llava_json";  // llava_json[l] | qa_json[l]
  std::string path;
  std::string image_root;
  int64_t max_samples = 0;         // 0 = all (after `types`)
  std::vector<std::string> types;  // qa_json: keep records of these "type"s (empty: all)
  std::string template_name;       // YAML key: template; empty = the model's own
  std::vector<std::string> metrics = {"exact"};  // eval/metrics.h names
  GenerationConfig generation;
  // true: each image at the encoder's base resolution only (one crop), even for a model with
  // AnyRes (model.vision.anyres) — what the model reads without its high-resolution tiles.
  bool base_resolution = false;
};

// `mllm eval` tasks, and the same tasks run during training at every evaluation (train.eval_every)
// with their scores in metrics.jsonl as eval/<task>/<score>.
struct EvalConfig {
  std::vector<EvalTaskConfig> tasks;
  int64_t batch_size = 16;  // prompts generated together
  bool chance = true;       // also score a chance-level baseline (answers of other items)
};

struct Config {
  RunConfig run;
  ModelConfig model;
  DataConfig data;
  TrainConfig train;
  EvalConfig eval;

  std::string source;                         // the YAML file it came from
  std::map<std::string, std::string> origin;  // key path -> "file.yaml:LINE" or "--set key=..."

  // "configs/x.yaml:12: model.llm.pretrained" — the prefix for an error about `key`.
  std::string where(const std::string& key) const;
  std::filesystem::path output_dir() const;
};

// Reads `yaml_path`, applies overrides ("a.b=value", the value parsed as YAML), validates every
// key, type, range and relation between fields. Throws ConfigError naming the file/line or
// override and the key path. The names that registries above core own (the stage, the connector,
// templates, metrics) are plain strings here: train/recipe.h's load_config reads a recipe
// through this and then checks those against their registries. Without `check_files`, the files
// and folders it names need not exist (a memory plan for a machine that holds the models).
Config parse_config(const std::filesystem::path& yaml_path,
                    const std::vector<std::string>& overrides = {}, bool check_files = true);

// An evaluation recipe for `mllm eval`: an `eval:` section (as in a training recipe) and an
// optional `run:` section (threads, device, seed). Same validation and error style as
// parse_config; train/recipe.h's load_eval_config adds the registry names.
struct EvalFile {
  RunConfig run;
  EvalConfig eval;
  std::string source;
  std::map<std::string, std::string> origin;
};
EvalFile parse_eval_config(const std::filesystem::path& yaml_path,
                           const std::vector<std::string>& overrides = {});

// Every field with its effective value, as YAML that parse_config reads back to the same Config.
std::string config_to_yaml(const Config& config);

// The first problem with an architecture, whichever file it came from (a recipe, or a pretrained
// folder's config.json): every size positive and within what any real model uses (so an absurd
// value is refused before it reaches the allocator), and divisible where the math needs it
// (hidden by heads, heads by kv_heads, an even head dimension for RoPE). `field` is the struct
// field's name ("heads"); the caller names it in its own terms (model.llm.heads, or config.json's
// num_attention_heads). Empty `field` when the architecture is sound.
struct ArchitectureProblem {
  std::string field;
  std::string message;
  explicit operator bool() const { return !field.empty(); }
};
ArchitectureProblem check_architecture(const LlmConfig& llm);
ArchitectureProblem check_architecture(const VisionConfig& vision);
// The connector's sizes (queries, width, layers, heads, strides, prompts) and the CLIP text
// encoder's, bounded as the others: a recipe's typo or a hand-edited config.json is refused
// naming the field, not left to the allocator (or the OOM killer).
ArchitectureProblem check_architecture(const ConnectorConfig& connector);
ArchitectureProblem check_architecture(const ClipTextConfig& text);

// Levenshtein distance, for did-you-mean suggestions.
size_t edit_distance(const std::string& a, const std::string& b);

// Every key path a recipe can set, in section order ("run.name", ..., "model.connector.type").
std::vector<std::string> config_key_paths();

// The candidate closest to `word` if it is close enough to be a likely typo, else "".
std::string closest_match(const std::string& word, const std::vector<std::string>& candidates);

// "" when `value` is one of `options`, else the message a recipe error gives for it: "must be one
// of a, b, c (got 'x'); did you mean 'a'?".
std::string choice_problem(const std::string& value, const std::vector<std::string>& options);

}  // namespace mllm
