// ShapesWorld: the embedded synthetic dataset. Each image is a muted background with 1-3 filled
// shapes (kind, colour, size, cell of a 3x3 grid); from the same scene come a caption, instruction
// questions with answers, and preference pairs whose rejected answer hallucinates (wrong colour,
// shape, size, count or position, or an object that is not there). Small enough that a tiny
// multimodal model visibly learns it on a CPU in minutes.
//
// Everything is a deterministic function of the seed (only mllm::Rng, no std:: distributions, no
// unordered containers): the same seed gives byte-identical files. The vocabulary is fixed and does
// not depend on the seed; the generator throws if any text it writes leaves it. This file is not a
// loader: the output is plain LLaVA JSON read by data/datasets.h like any other dataset.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include <opencv2/core.hpp>

#include "core/rng.h"

namespace mllm::data {

// Sizes of the fixed tables; a Scene stores indices into them.
inline constexpr int kShapeKinds = 5;    // circle, square, triangle, diamond, star
inline constexpr int kShapeColours = 7;  // red, green, blue, yellow, purple, orange, white
inline constexpr int kShapeSizes = 2;    // small, large
inline constexpr int kGridCells = 9;     // 3x3, row-major from "top left" to "bottom right"
inline constexpr int kBackgrounds = 4;   // dark gray, navy, dark green, dark brown (never named)

const char* shape_kind_name(int kind);
const char* shape_colour_name(int colour);
const char* shape_size_name(int size);
const char* grid_cell_name(int cell);  // "top left", "top", ..., "center", ..., "bottom right"
cv::Vec3b shape_colour_bgr(int colour);
cv::Vec3b background_bgr(int background);

struct ShapeSpec {
  int kind = 0;
  int colour = 0;
  int size = 0;  // 0 small (~0.45 of a cell), 1 large (~0.8 of a cell)
  int cell = 0;
  // Offset of the centre inside the cell's free room, in [-1, 1] (resolution-independent, so one
  // scene renders the same at every image size); the shape never leaves its cell.
  double jitter_x = 0.0, jitter_y = 0.0;
};

// Shapes are sorted by cell (row-major), distinct cells, distinct (colour, kind) pairs.
struct Scene {
  int background = 0;
  std::vector<ShapeSpec> shapes;
};

// `jitter` in [0, 1] scales how far each shape may sit off its cell's centre (ShapeSpec::jitter_*
// are drawn in [-jitter, jitter]); the random stream does not depend on it.
Scene sample_scene(mllm::Rng& rng, double jitter = 1.0);

// The shape's centre in pixel coordinates (pixel centres at integers) for an image_size^2 image.
cv::Point2d shape_centre(const ShapeSpec& shape, int image_size);

// (S,S) CV_8UC3 BGR image, S = image_size; shapes filled and anti-aliased.
cv::Mat render_scene(const Scene& scene, int image_size);

// "a large red circle at the top left and a small blue star at the bottom right." Shapes in cell
// order, so the caption is a function of the scene; the centre cell reads "in the center".
std::string scene_caption(const Scene& scene);

// The scene as stage 0's text context, terser than the caption and in cell order:
// "top left : large red circle , bottom right : small blue star".
std::string scene_description(const Scene& scene);

// Every word and punctuation token the generator can emit (split by \w+|[^\w\s]+), special tokens
// excluded: sorted by std::string order, then the words the visual questions added (appended, so
// earlier ids stay). Independent of seed and counts.
std::vector<std::string> shapes_world_vocabulary();

// A Hugging Face tokenizer.json: WordLevel over <pad> <s> </s> <unk> <image> (ids 0-4) followed by
// shapes_world_vocabulary() (ids 5..), Lowercase normalizer, Whitespace pre-tokenizer.
std::string shapes_world_tokenizer_json();

struct ShapesWorldOptions {
  uint64_t seed = 0;
  int64_t train = 2000;  // images in the train split
  int64_t val = 200;     // images in the val split
  // 72 = 9 patches of 8 pixels: each cell of the 3x3 grid is 3x3 patches of the demo's encoder,
  // so a shape looks the same to it in every cell.
  int image_size = 72;
  // How far off its cell's centre a shape may sit, as a fraction of the room it has (0: centred;
  // 1: anywhere in its cell). A small ViT trained on a few thousand images does not learn to
  // recognise a shape wherever it falls relative to the patch grid: a supervised probe of the
  // demo's encoder reads the kind of 0.75 of held-out shapes at full jitter, 0.97 at 0.25, 1.0
  // at 0 (72 px, patch 8, 6 epochs on 4000 images).
  double jitter = 0.25;
  // Visual-question records (high resolution, two images, motion; visual_*.json) in the train
  // split; -1: train / 8 (and as many as val in the val split).
  int64_t visual = -1;
};

struct ShapesWorldSummary {
  int64_t train_images = 0, val_images = 0;
  int64_t instruct_records = 0, preference_records = 0;  // both splits together
};

// Writes into out_dir (created if missing):
//   images/{train,val}/NNNNNN.png
//   captions_{train,val}.json, instruct_{train,val}.json   LLaVA records, image paths relative to
//                                                          images/
//   preference_{train,val}.json   [{"id", "image", "prompt", "chosen", "rejected"}]: a caption
//                           with one hallucination, a question with a wrong answer, or (a quarter
//                           of them) "is there a <colour> <kind>?" about an object that is there
//                           or, half the time, one that is not (stage 3's hallucination pairs)
//   text_{train,val}.json   stage 0's text-only LLaVA records, three per image: "-caption" (the
//                           caption after its prompt), "-described" (the caption after
//                           scene_description()) and "-questions" (1-2 questions answered from
//                           the description, which opens the first turn)
//   caption_pairs_{train,val}.json   preference records: the caption (chosen) against the caption
//                           of the scene with one hallucination (rejected) — the clip stage's hard
//                           negatives
//   questions_val.json   evaluation questions (qa_json, eval/evaluate.h): per val image one of
//                        each type color, shape, size, count, position, what_at (open answers),
//                        choice (a/b/c) and exists twice, a present and an absent object (POPE)
//   visual_{train,val}.json, questions_visual_val.json   the visual questions, in turn a
//                        high-resolution scene ("hires": one small shape in a quadrant of a 2S x 2S
//                        image, legible at AnyRes), two scenes ("two_image": which has more
//                        shapes?) and a three-frame clip ("motion": which way does it move?);
//                        images under images/visual_{train,val}/
//   tokenizer.json, info.json
// Train and val use independent seeds derived from options.seed, so the val set does not change
// with --train; the questions use a stream of their own, so they change no other file. Throws
// Error("shapes: --<option> ...") for invalid options.
ShapesWorldSummary generate_shapes_world(const std::filesystem::path& out_dir,
                                         const ShapesWorldOptions& options);

}  // namespace mllm::data
