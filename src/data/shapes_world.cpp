#include "data/shapes_world.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <numeric>
#include <set>

#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "core/error.h"
#include "core/fs.h"

namespace mllm::data {

namespace {

using Json = nlohmann::ordered_json;

// ---- The tables ---------------------------------------------------------------------------------

const char* const kKindNames[kShapeKinds] = {"circle", "square", "triangle", "diamond", "star"};
const char* const kColourNames[kShapeColours] = {"red",    "green",  "blue", "yellow",
                                                 "purple", "orange", "white"};
const cv::Vec3b kColourBgr[kShapeColours] = {
    {40, 40, 230},    // red
    {60, 200, 60},    // green
    {240, 120, 30},   // blue
    {40, 230, 240},   // yellow
    {200, 60, 160},   // purple
    {20, 140, 255},   // orange
    {245, 245, 245},  // white
};
const cv::Vec3b kBackgroundBgr[kBackgrounds] = {
    {45, 45, 45},  // dark gray
    {80, 40, 25},  // navy
    {35, 70, 35},  // dark green
    {30, 50, 80},  // dark brown
};
const char* const kSizeNames[kShapeSizes] = {"small", "large"};
const double kSizeFraction[kShapeSizes] = {0.45, 0.8};  // shape extent / cell side
const char* const kCellNames[kGridCells] = {"top left",    "top",    "top right",
                                            "left",        "center", "right",
                                            "bottom left", "bottom", "bottom right"};
const int kCentreCell = 4;
const char* const kNumberWords[] = {"zero", "one", "two", "three"};

const std::vector<std::string> kCaptionPrompts = {
    "describe the image.",           "what is in the picture?",
    "write a short caption.",        "describe this picture briefly.",
    "what do you see in the image?", "give a short description of the image.",
};

// Words used by the templates below, beyond the table entries (names, numbers, cell words).
const char* const kTemplateWords[] = {
    ".",       ",",     "?",       "a",      "and",      "answer",      "are",     "at",     "b",
    "briefly", "c",     "caption", "color",  "describe", "description", "do",      "give",   "how",
    "image",   "in",    "is",      "letter", "many",     "no",          "nothing", "object", "of",
    "picture", "see",   "shape",   "shapes", "short",    "size",        "the",     "there",  "this",
    "what",    "where", "with",    "write",  "yes",      "you",
};
const char* const kCellWords[] = {"top", "bottom", "left", "right", "center"};
// The words of LLaVA-1.5's vicuna_v1 conversation template (its system prompt and the USER: /
// ASSISTANT: roles; data/chat_template.cpp) not used above, so that ShapesWorld's instruction and
// preference data read through that template without <unk>, as the stage 2 and 3 recipes do.
const char* const kConversationWords[] = {
    "'",         "an",      ":",        "answers", "artificial", "assistant",    "between",
    "chat",      "curious", "detailed", "gives",   "helpful",    "intelligence", "polite",
    "questions", "s",       "to",       "user",
};

// The words of the visual questions (high resolution, two images, motion), added after the rest:
// appended to the vocabulary rather than sorted in, so that ids of the words before stay as they
// were and models trained on an earlier tokenizer.json read this one.
const char* const kVisualWords[] = {"does", "first",  "has", "more",
                                    "move", "second", "way", "which"};

// ---- Scene phrases ------------------------------------------------------------------------------

// "at the top left" / "in the center".
std::string location(int cell) {
  return cell == kCentreCell ? "in the center" : std::string("at the ") + kCellNames[cell];
}

// "large red circle" (no article).
std::string noun_phrase(const ShapeSpec& s) {
  return std::string(kSizeNames[s.size]) + " " + kColourNames[s.colour] + " " + kKindNames[s.kind];
}

std::string colour_kind(const ShapeSpec& s) {
  return std::string(kColourNames[s.colour]) + " " + kKindNames[s.kind];
}

template <class Pred>
int count_shapes(const Scene& scene, Pred pred) {
  return static_cast<int>(std::count_if(scene.shapes.begin(), scene.shapes.end(), pred));
}

bool has_colour_kind(const Scene& scene, int colour, int kind) {
  return count_shapes(scene,
                      [&](const ShapeSpec& s) { return s.colour == colour && s.kind == kind; }) > 0;
}

bool cell_taken(const Scene& scene, int cell) {
  return count_shapes(scene, [&](const ShapeSpec& s) { return s.cell == cell; }) > 0;
}

int random_empty_cell(const Scene& scene, Rng& rng) {
  std::vector<int> empty;
  for (int c = 0; c < kGridCells; ++c)
    if (!cell_taken(scene, c)) empty.push_back(c);
  return rng.pick(empty);
}

// A uniformly random value in [0, n) other than `except`.
int other_than(Rng& rng, int n, int except) {
  const int v = static_cast<int>(rng.uniform_int(0, n - 2));
  return v >= except ? v + 1 : v;
}

void sort_by_cell(Scene& scene) {
  std::sort(scene.shapes.begin(), scene.shapes.end(),
            [](const ShapeSpec& a, const ShapeSpec& b) { return a.cell < b.cell; });
}

// A reference to shape i that does not name its colour, unique within the scene.
std::string ref_without_colour(const Scene& scene, const ShapeSpec& s) {
  const std::string kind = kKindNames[s.kind];
  if (count_shapes(scene, [&](const ShapeSpec& o) { return o.kind == s.kind; }) == 1)
    return "the " + kind;
  if (count_shapes(scene,
                   [&](const ShapeSpec& o) { return o.kind == s.kind && o.size == s.size; }) == 1)
    return std::string("the ") + kSizeNames[s.size] + " " + kind;
  return "the " + kind + " " + location(s.cell);
}

// A reference to shape i that does not name its kind, unique within the scene.
std::string ref_without_kind(const Scene& scene, const ShapeSpec& s) {
  if (count_shapes(scene, [&](const ShapeSpec& o) { return o.colour == s.colour; }) == 1)
    return std::string("the ") + kColourNames[s.colour] + " object";
  return "the object " + location(s.cell);
}

// ---- Questions ----------------------------------------------------------------------------------

struct QA {
  std::string question, answer, rejected;  // rejected: a plausible hallucinated answer
};

enum QuestionType {
  kColour,
  kColourChoice,
  kShape,
  kShapeChoice,
  kSize,
  kCount,
  kPosition,
  kExists,
  kWhatAt,
  kQuestionTypes
};

// "<question>\na. x\nb. y\nc. z\nanswer with the letter." over `correct` and two other table
// entries.
QA multiple_choice(const std::string& question, int correct, int n, const char* const* names,
                   Rng& rng) {
  std::vector<int> options = {correct};
  while (options.size() < 3) {
    const int o = static_cast<int>(rng.uniform_int(0, n - 1));
    if (std::find(options.begin(), options.end(), o) == options.end()) options.push_back(o);
  }
  rng.shuffle(options);
  const char* const letters[] = {"a", "b", "c"};
  QA qa{question, "", ""};
  int right = 0;
  for (int i = 0; i < 3; ++i) {
    qa.question += std::string("\n") + letters[i] + ". " + names[options[static_cast<size_t>(i)]];
    if (options[static_cast<size_t>(i)] == correct) right = i;
  }
  qa.question += "\nanswer with the letter.";
  qa.answer = std::string(letters[right]) + ".";
  qa.rejected = std::string(letters[other_than(rng, 3, right)]) + ".";
  return qa;
}

// "is there a <colour> <kind>?" about shape s (present) or about a colour and kind the scene does
// not have (absent; POPE's negative questions). A near miss keeps one of s's two attributes and
// changes the other (s's colour on another kind, or its kind in another colour): the absent
// object a model that checks one attribute only says yes to, as POPE's adversarial negatives are
// the objects that co-occur with what is there (Li et al. 2023).
QA exists_question(const Scene& scene, const ShapeSpec& s, bool present, Rng& rng,
                   bool near_miss = false) {
  if (present) return {"is there a " + colour_kind(s) + "?", "yes.", "no."};
  ShapeSpec absent = s;
  const bool keep_colour = near_miss && rng.bernoulli(0.5), keep_kind = near_miss && !keep_colour;
  do {
    if (!keep_colour) absent.colour = static_cast<int>(rng.uniform_int(0, kShapeColours - 1));
    if (!keep_kind) absent.kind = static_cast<int>(rng.uniform_int(0, kShapeKinds - 1));
  } while (has_colour_kind(scene, absent.colour, absent.kind));
  return {"is there a " + colour_kind(absent) + "?", "no.", "yes."};
}

QA ask(const Scene& scene, QuestionType type, Rng& rng) {
  const ShapeSpec& s = rng.pick(scene.shapes);
  switch (type) {
    case kColour:
      return {"what color is " + ref_without_colour(scene, s) + "?",
              std::string(kColourNames[s.colour]) + ".",
              std::string(kColourNames[other_than(rng, kShapeColours, s.colour)]) + "."};
    case kColourChoice:
      return multiple_choice("what color is " + ref_without_colour(scene, s) + "?", s.colour,
                             kShapeColours, kColourNames, rng);
    case kShape:
      return {"what shape is " + ref_without_kind(scene, s) + "?",
              std::string("a ") + kKindNames[s.kind] + ".",
              std::string("a ") + kKindNames[other_than(rng, kShapeKinds, s.kind)] + "."};
    case kShapeChoice:
      return multiple_choice("what shape is " + ref_without_kind(scene, s) + "?", s.kind,
                             kShapeKinds, kKindNames, rng);
    case kSize:
      return {"what size is the " + colour_kind(s) + "?", std::string(kSizeNames[s.size]) + ".",
              std::string(kSizeNames[1 - s.size]) + "."};
    case kCount: {
      const int variant = static_cast<int>(rng.uniform_int(0, 2));
      if (variant == 0) {
        const int n = static_cast<int>(scene.shapes.size());
        return {"how many shapes are there?", std::string(kNumberWords[n]) + ".",
                std::string(kNumberWords[1 + other_than(rng, 3, n - 1)]) + "."};
      }
      // Half the time about a colour or size in the image, else any (often absent: "zero.").
      std::string what;
      int n = 0;
      if (variant == 1) {
        const int colour =
            rng.bernoulli(0.5) ? s.colour : static_cast<int>(rng.uniform_int(0, kShapeColours - 1));
        what = kColourNames[colour];
        n = count_shapes(scene, [&](const ShapeSpec& o) { return o.colour == colour; });
      } else {
        const int size = static_cast<int>(rng.uniform_int(0, kShapeSizes - 1));
        what = kSizeNames[size];
        n = count_shapes(scene, [&](const ShapeSpec& o) { return o.size == size; });
      }
      return {"how many " + what + " shapes are there?", std::string(kNumberWords[n]) + ".",
              std::string(kNumberWords[other_than(rng, 4, n)]) + "."};
    }
    case kPosition:
      return {"where is the " + colour_kind(s) + "?", location(s.cell) + ".",
              location(other_than(rng, kGridCells, s.cell)) + "."};
    case kExists:
      return exists_question(scene, s, rng.bernoulli(0.5), rng);
    case kWhatAt: {
      if (rng.bernoulli(0.5)) {
        ShapeSpec wrong = s;
        wrong.colour = other_than(rng, kShapeColours, s.colour);
        return {"what is " + location(s.cell) + "?", "a " + noun_phrase(s) + ".",
                rng.bernoulli(0.5) ? "nothing." : "a " + noun_phrase(wrong) + "."};
      }
      ShapeSpec ghost = s;
      ghost.kind = static_cast<int>(rng.uniform_int(0, kShapeKinds - 1));
      return {"what is " + location(random_empty_cell(scene, rng)) + "?", "nothing.",
              "a " + noun_phrase(ghost) + "."};
    }
    case kQuestionTypes:
      break;
  }
  throw Error("shapes: unknown question type " + std::to_string(static_cast<int>(type)));
}

// The scene with one hallucination: a wrong colour, kind, size or position, an extra object, or a
// missing one. Its caption always differs from the true caption.
Scene hallucinate(const Scene& scene, Rng& rng) {
  Scene h = scene;
  int mode = static_cast<int>(rng.uniform_int(0, 5));
  if (mode == 5 && h.shapes.size() == 1) mode = 4;
  auto& s =
      h.shapes[static_cast<size_t>(rng.uniform_int(0, static_cast<int64_t>(h.shapes.size()) - 1))];
  switch (mode) {
    case 0:
      s.colour = other_than(rng, kShapeColours, s.colour);
      break;
    case 1:
      s.kind = other_than(rng, kShapeKinds, s.kind);
      break;
    case 2:
      s.size = 1 - s.size;
      break;
    case 3:
      s.cell = random_empty_cell(scene, rng);
      break;
    case 4: {
      ShapeSpec extra;
      extra.cell = random_empty_cell(scene, rng);
      extra.size = static_cast<int>(rng.uniform_int(0, kShapeSizes - 1));
      do {
        extra.colour = static_cast<int>(rng.uniform_int(0, kShapeColours - 1));
        extra.kind = static_cast<int>(rng.uniform_int(0, kShapeKinds - 1));
      } while (has_colour_kind(scene, extra.colour, extra.kind));
      h.shapes.push_back(extra);
      break;
    }
    default:
      h.shapes.erase(h.shapes.begin() + (&s - h.shapes.data()));
      break;
  }
  sort_by_cell(h);
  return h;
}

// ---- Vocabulary check ---------------------------------------------------------------------------

bool is_word_char(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) || c == '_';
}

// Splits like the Whitespace pre-tokenizer: \w+|[^\w\s]+ (ASCII).
std::vector<std::string> split_words(const std::string& text) {
  std::vector<std::string> out;
  size_t i = 0;
  while (i < text.size()) {
    if (std::isspace(static_cast<unsigned char>(text[i]))) {
      ++i;
      continue;
    }
    const bool word = is_word_char(text[i]);
    size_t j = i;
    while (j < text.size() && !std::isspace(static_cast<unsigned char>(text[j])) &&
           is_word_char(text[j]) == word)
      ++j;
    out.push_back(text.substr(i, j - i));
    i = j;
  }
  return out;
}

class VocabularyCheck {
 public:
  VocabularyCheck() {
    for (const auto& w : shapes_world_vocabulary()) words_.insert(w);
  }
  // Returns `text` after checking that every token of it (after an optional "<image>\n") is known.
  const std::string& operator()(const std::string& text) const {
    const std::string image = "<image>\n";
    const std::string body = text.rfind(image, 0) == 0 ? text.substr(image.size()) : text;
    for (const auto& w : split_words(body))
      if (!words_.count(w))
        throw Error("shapes: generated token '" + w +
                    "' is not in shapes_world_vocabulary() (text: \"" + text + "\")");
    return text;
  }

 private:
  std::set<std::string> words_;
};

// ---- Records ------------------------------------------------------------------------------------

Json turn(const char* from, const std::string& value) {
  return Json{{"from", from}, {"value", value}};
}

Json record(const std::string& id, const std::string& image, const Json& conversations) {
  return Json{{"id", id}, {"image", image}, {"conversations", conversations}};
}

std::string zero_padded(int64_t i) {
  std::string s = std::to_string(i);
  return std::string(s.size() < 6 ? 6 - s.size() : 0, '0') + s;
}

struct Split {
  Json captions = Json::array(), instruct = Json::array(), preference = Json::array();
  Json questions = Json::array(), text = Json::array(), caption_pairs = Json::array();
};

Json text_record(const std::string& id, const Json& conversations) {
  return Json{{"id", id}, {"conversations", conversations}};
}

// Stage 0's records of one scene, text only: the caption alone (the text-only baseline), the
// caption after the scene's description, and 1-2 questions answered from the description. The
// LLM learns to read what comes before it, so that in stage 1 the connector only has to turn
// the image into something it already reads (the description stands where the image will).
void add_text_records(Json& out, const std::string& id, const Scene& scene, const QA& caption,
                      Rng& rng, const VocabularyCheck& check) {
  const std::string description = check(scene_description(scene));
  out.push_back(text_record(id + "-caption", Json::array({turn("human", check(caption.question)),
                                                          turn("gpt", check(caption.answer))})));
  out.push_back(text_record(id + "-described", Json::array({turn("human", description),
                                                            turn("gpt", check(caption.answer))})));
  std::vector<int> types(kQuestionTypes);
  std::iota(types.begin(), types.end(), 0);
  rng.shuffle(types);
  const int turns = rng.bernoulli(0.5) ? 1 : 2;
  Json conversation = Json::array();
  for (int t = 0; t < turns; ++t) {
    const QA qa = ask(scene, static_cast<QuestionType>(types[static_cast<size_t>(t)]), rng);
    conversation.push_back(turn("human", check((t == 0 ? description + "\n" : "") + qa.question)));
    conversation.push_back(turn("gpt", check(qa.answer)));
  }
  out.push_back(text_record(id + "-questions", conversation));
}

// The evaluation questions of one image (qa_json records, eval/evaluate.h): one open question of
// each kind, a multiple-choice one, and a POPE pair (a present and an absent object). Answers
// without the final period; the letter alone for multiple choice.
void add_eval_questions(Json& out, const std::string& id, const std::string& image,
                        const Scene& scene, Rng& rng, const VocabularyCheck& check) {
  auto add = [&](const std::string& type, const QA& qa, const std::string& tag = "") {
    std::string answer = qa.answer;
    if (!answer.empty() && answer.back() == '.') answer.pop_back();
    out.push_back(Json{{"id", id + "-" + (tag.empty() ? type : tag)},
                       {"image", image},
                       {"question", check("<image>\n" + qa.question)},
                       {"answers", Json::array({check(answer)})},
                       {"type", type}});
  };
  const std::pair<const char*, QuestionType> open[] = {
      {"color", kColour}, {"shape", kShape},       {"size", kSize},
      {"count", kCount},  {"position", kPosition}, {"what_at", kWhatAt}};
  for (const auto& [type, q] : open) add(type, ask(scene, q, rng));
  add("choice", ask(scene, rng.bernoulli(0.5) ? kColourChoice : kShapeChoice, rng));
  const ShapeSpec& s = rng.pick(scene.shapes);
  add("exists", exists_question(scene, s, true, rng), "exists_present");
  add("exists", exists_question(scene, s, false, rng), "exists_absent");
}

Split generate_split(const fs::path& out_dir, const std::string& name, uint64_t seed, int64_t count,
                     const ShapesWorldOptions& options, const VocabularyCheck& check) {
  Rng rng(seed);
  // The questions and the text records have streams of their own: the other files stay as they
  // were before each was added.
  Rng question_rng(seed ^ 0x9e3779b97f4a7c15ULL);
  Rng text_rng(seed ^ 0xc2b2ae3d27d4eb4fULL);
  Rng negative_rng(seed ^ 0x165667b19e3779f9ULL);
  Rng pope_rng(seed ^ 0x27d4eb2f165667c5ULL);
  Split split;
  const fs::path image_dir = out_dir / "images" / name;
  fs::create_directories(image_dir);
  for (int64_t i = 0; i < count; ++i) {
    const std::string id = name + "-" + zero_padded(i);
    const std::string image = name + "/" + zero_padded(i) + ".png";
    const Scene scene = sample_scene(rng, options.jitter);
    const fs::path png = out_dir / "images" / image;
    if (!cv::imwrite(png.string(), render_scene(scene, options.image_size)))
      throw Error(png.string() + ": cannot write image");

    const std::string caption = check(scene_caption(scene));
    const std::string caption_prompt = rng.pick(kCaptionPrompts);
    split.captions.push_back(record(
        id, image,
        Json::array({turn("human", check("<image>\n" + caption_prompt)), turn("gpt", caption)})));
    add_text_records(split.text, id, scene, {caption_prompt, caption, ""}, text_rng, check);
    // The caption against one that is wrong about one detail: the clip stage's hard negative.
    split.caption_pairs.push_back(
        Json{{"id", id},
             {"image", image},
             {"prompt", check("<image>\n" + caption_prompt)},
             {"chosen", caption},
             {"rejected", check(scene_caption(hallucinate(scene, negative_rng)))}});

    // 1-3 distinct question types about the image; only the first turn carries the image.
    std::vector<int> types(kQuestionTypes);
    std::iota(types.begin(), types.end(), 0);
    rng.shuffle(types);
    const double u = rng.uniform();
    const int turns = u < 0.5 ? 1 : u < 0.8 ? 2 : 3;
    Json conversation = Json::array();
    for (int t = 0; t < turns; ++t) {
      const QA qa = ask(scene, static_cast<QuestionType>(types[static_cast<size_t>(t)]), rng);
      conversation.push_back(turn("human", check((t == 0 ? "<image>\n" : "") + qa.question)));
      conversation.push_back(turn("gpt", check(qa.answer)));
    }
    split.instruct.push_back(record(id, image, conversation));

    // One preference pair: a caption with one hallucination, or a question with a wrong answer.
    QA pair;
    if (rng.bernoulli(0.4)) {
      pair = {rng.pick(kCaptionPrompts), caption, scene_caption(hallucinate(scene, rng))};
    } else {
      pair = ask(scene, static_cast<QuestionType>(rng.uniform_int(0, kQuestionTypes - 1)), rng);
    }
    // A quarter of the pairs instead ask whether an object is there (half the time one that is
    // not: chosen "no.", rejected "yes."), as hallucination-targeted preference data do (POPE's
    // questions, Li et al. 2023), from a stream of their own so that the other files stay as they
    // were. Half of the absent ones are near misses (a present object with its colour or its kind
    // changed): drawn at random, most absent objects share nothing with the scene, and a model
    // that says yes whenever the colour is there (stage 2's, 2026-12-06) is never corrected.
    if (pope_rng.bernoulli(0.25)) {
      const ShapeSpec& about = pope_rng.pick(scene.shapes);
      const bool present = pope_rng.bernoulli(0.5);
      pair = exists_question(scene, about, present, pope_rng, !present && pope_rng.bernoulli(0.5));
    }
    if (pair.answer == pair.rejected)
      throw Error("shapes: internal error: chosen == rejected for " + id + " (\"" + pair.answer +
                  "\")");
    add_eval_questions(split.questions, id, image, scene, question_rng, check);
    split.preference.push_back(Json{{"id", id},
                                    {"image", image},
                                    {"prompt", check("<image>\n" + pair.question)},
                                    {"chosen", check(pair.answer)},
                                    {"rejected", check(pair.rejected)}});
  }
  return split;
}

// The visual questions of issue "high resolution, several images and video": per index, in
// turn, a high-resolution scene, a pair of scenes, and a clip.
//   hires      a 2S x 2S image whose one quadrant is an S x S scene of one small shape: "what
//              shape is in the image?" The shape is half its usual size once the image is
//              downscaled to the encoder's S, legible only when AnyRes cuts it into S x S tiles.
//   two_image  two scenes with different shape counts: "which image has more shapes?" (the
//              first / the second).
//   motion     three frames of one shape crossing the grid along a row or a column: "which way
//              does the <colour> <kind> move?" (to the left / right / top / bottom).
// Records are LLaVA JSON ("image" a list for two_image, "video" a list of frames for motion);
// questions are qa_json with the same fields and the type as "type".
struct VisualSplit {
  Json records = Json::array(), questions = Json::array();
};

VisualSplit generate_visual(const fs::path& out_dir, const std::string& name, uint64_t seed,
                            int64_t count, const ShapesWorldOptions& options,
                            const VocabularyCheck& check) {
  Rng rng(seed);
  VisualSplit out;
  const std::string dir = "visual_" + name;
  fs::create_directories(out_dir / "images" / dir);
  const int S = options.image_size;
  auto write_png = [&](const std::string& rel, const cv::Mat& img) {
    const fs::path png = out_dir / "images" / rel;
    if (!cv::imwrite(png.string(), img)) throw Error(png.string() + ": cannot write image");
  };
  auto one_shape = [&](int size) {
    Scene scene;
    scene.background = static_cast<int>(rng.uniform_int(0, kBackgrounds - 1));
    ShapeSpec s;
    s.kind = static_cast<int>(rng.uniform_int(0, kShapeKinds - 1));
    s.colour = static_cast<int>(rng.uniform_int(0, kShapeColours - 1));
    s.size = size < 0 ? static_cast<int>(rng.uniform_int(0, kShapeSizes - 1)) : size;
    s.cell = static_cast<int>(rng.uniform_int(0, kGridCells - 1));
    s.jitter_x = (rng.uniform() * 2.0 - 1.0) * options.jitter;
    s.jitter_y = (rng.uniform() * 2.0 - 1.0) * options.jitter;
    scene.shapes.push_back(s);
    return scene;
  };
  for (int64_t i = 0; i < count; ++i) {
    const std::string id = "visual-" + name + "-" + zero_padded(i);
    const std::string stem = dir + "/" + zero_padded(i);
    std::string type, question, answer;
    Json visual;  // "image" or "video" and its value
    const char* key = "image";
    switch (i % 3) {
      case 0: {
        const Scene scene = one_shape(0);
        const cv::Vec3b bg = background_bgr(scene.background);
        cv::Mat big(2 * S, 2 * S, CV_8UC3, cv::Scalar(bg[0], bg[1], bg[2]));
        const int q = static_cast<int>(rng.uniform_int(0, 3));
        render_scene(scene, S).copyTo(big(cv::Rect((q % 2) * S, (q / 2) * S, S, S)));
        write_png(stem + "-hires.png", big);
        type = "hires";
        question = "what shape is in the image?";
        answer = std::string("a ") + kKindNames[scene.shapes[0].kind] + ".";
        visual = stem + "-hires.png";
        break;
      }
      case 1: {
        Scene a = sample_scene(rng, options.jitter), b;
        do b = sample_scene(rng, options.jitter);
        while (b.shapes.size() == a.shapes.size());
        write_png(stem + "-a.png", render_scene(a, S));
        write_png(stem + "-b.png", render_scene(b, S));
        type = "two_image";
        question = "which image has more shapes?";
        answer = a.shapes.size() > b.shapes.size() ? "the first." : "the second.";
        visual = Json::array({stem + "-a.png", stem + "-b.png"});
        break;
      }
      default: {
        Scene scene = one_shape(-1);
        ShapeSpec& s = scene.shapes[0];
        s.jitter_x = s.jitter_y = 0;
        const int direction = static_cast<int>(rng.uniform_int(0, 3));  // left right top bottom
        const int line = static_cast<int>(rng.uniform_int(0, 2));
        visual = Json::array();
        for (int f = 0; f < 3; ++f) {
          const int step = direction == 0 || direction == 2 ? 2 - f : f;
          s.cell = direction < 2 ? line * 3 + step : step * 3 + line;
          const std::string frame = stem + "-f" + std::to_string(f) + ".png";
          write_png(frame, render_scene(scene, S));
          visual.push_back(frame);
        }
        static const char* const kWays[] = {"left", "right", "top", "bottom"};
        type = "motion";
        key = "video";
        question = "which way does the " + colour_kind(s) + " move?";
        answer = std::string("to the ") + kWays[direction] + ".";
        break;
      }
    }
    check(question);
    check(answer);
    const std::string tags = type == "two_image" ? "<image>\n<image>\n" : "<image>\n";
    out.records.push_back(Json{
        {"id", id},
        {key, visual},
        {"conversations", Json::array({turn("human", tags + question), turn("gpt", answer)})}});
    std::string bare = answer;
    bare.pop_back();  // the period
    out.questions.push_back(Json{{"id", id},
                                 {key, visual},
                                 {"question", tags + question},
                                 {"answers", Json::array({bare})},
                                 {"type", type}});
  }
  return out;
}

void write_json(const fs::path& path, const Json& j) {
  write_file_atomic(path, j.dump(1) + "\n");
}

// Half the shape's extent, in pixels.
double shape_radius(const ShapeSpec& s, int image_size) {
  return kSizeFraction[s.size] * (image_size / 3.0) / 2.0;
}

// Pixel coordinates: 16ths of a pixel for OpenCV's sub-pixel drawing (shift = 4).
constexpr int kShift = 4;
cv::Point fixed_point(double x, double y) {
  return {static_cast<int>(std::lround(x * (1 << kShift))),
          static_cast<int>(std::lround(y * (1 << kShift)))};
}

}  // namespace

const char* shape_kind_name(int kind) {
  return kKindNames[kind];
}
const char* shape_colour_name(int colour) {
  return kColourNames[colour];
}
const char* shape_size_name(int size) {
  return kSizeNames[size];
}
const char* grid_cell_name(int cell) {
  return kCellNames[cell];
}
cv::Vec3b shape_colour_bgr(int colour) {
  return kColourBgr[colour];
}
cv::Vec3b background_bgr(int background) {
  return kBackgroundBgr[background];
}

Scene sample_scene(Rng& rng, double jitter) {
  Scene scene;
  scene.background = static_cast<int>(rng.uniform_int(0, kBackgrounds - 1));
  const int n = static_cast<int>(rng.uniform_int(1, 3));
  std::vector<int> cells(kGridCells);
  std::iota(cells.begin(), cells.end(), 0);
  rng.shuffle(cells);
  for (int i = 0; i < n; ++i) {
    ShapeSpec s;
    s.cell = cells[static_cast<size_t>(i)];
    do {  // distinct (colour, kind) so that "the red circle" is always unambiguous
      s.kind = static_cast<int>(rng.uniform_int(0, kShapeKinds - 1));
      s.colour = static_cast<int>(rng.uniform_int(0, kShapeColours - 1));
    } while (has_colour_kind(scene, s.colour, s.kind));
    s.size = static_cast<int>(rng.uniform_int(0, kShapeSizes - 1));
    s.jitter_x = (rng.uniform() * 2.0 - 1.0) * jitter;
    s.jitter_y = (rng.uniform() * 2.0 - 1.0) * jitter;
    scene.shapes.push_back(s);
  }
  sort_by_cell(scene);
  return scene;
}

cv::Point2d shape_centre(const ShapeSpec& s, int image_size) {
  const double cell = image_size / 3.0;
  // Free room on each side of the shape, less 2 pixels so anti-aliased edges stay in the cell.
  const double room = std::max(0.0, cell / 2.0 - shape_radius(s, image_size) - 2.0);
  return {(s.cell % 3 + 0.5) * cell - 0.5 + s.jitter_x * room,
          (s.cell / 3 + 0.5) * cell - 0.5 + s.jitter_y * room};
}

cv::Mat render_scene(const Scene& scene, int image_size) {
  const cv::Vec3b bg = kBackgroundBgr[scene.background];
  cv::Mat img(image_size, image_size, CV_8UC3, cv::Scalar(bg[0], bg[1], bg[2]));
  for (const auto& s : scene.shapes) {
    const cv::Point2d c = shape_centre(s, image_size);
    const double r = shape_radius(s, image_size);
    const cv::Vec3b v = kColourBgr[s.colour];
    const cv::Scalar colour(v[0], v[1], v[2]);
    std::vector<cv::Point> poly;
    switch (s.kind) {
      case 0:  // circle
        cv::circle(img, fixed_point(c.x, c.y), static_cast<int>(std::lround(r * (1 << kShift))),
                   colour, cv::FILLED, cv::LINE_AA, kShift);
        continue;
      case 1: {  // square, slightly smaller than the circle so both look the same weight
        const double h = r * 0.9;
        poly = {fixed_point(c.x - h, c.y - h), fixed_point(c.x + h, c.y - h),
                fixed_point(c.x + h, c.y + h), fixed_point(c.x - h, c.y + h)};
        break;
      }
      case 2:  // triangle, apex up
        poly = {fixed_point(c.x, c.y - r), fixed_point(c.x + r, c.y + r),
                fixed_point(c.x - r, c.y + r)};
        break;
      case 3: {  // diamond; its sharp tips blur further under anti-aliasing, so a little smaller
        const double h = r * 0.9;
        poly = {fixed_point(c.x, c.y - h), fixed_point(c.x + h, c.y), fixed_point(c.x, c.y + h),
                fixed_point(c.x - h, c.y)};
        break;
      }
      default:  // five-pointed star, a point up
        for (int k = 0; k < 10; ++k) {
          const double radius = k % 2 == 0 ? r : r * 0.45;
          const double angle = -CV_PI / 2 + k * CV_PI / 5;
          poly.push_back(
              fixed_point(c.x + radius * std::cos(angle), c.y + radius * std::sin(angle)));
        }
    }
    cv::fillPoly(img, std::vector<std::vector<cv::Point>>{poly}, colour, cv::LINE_AA, kShift);
  }
  return img;
}

std::string scene_caption(const Scene& scene) {
  std::string out;
  const size_t n = scene.shapes.size();
  for (size_t i = 0; i < n; ++i) {
    if (i > 0) out += i + 1 == n ? " and " : ", ";
    out += "a " + noun_phrase(scene.shapes[i]) + " " + location(scene.shapes[i].cell);
  }
  return out + ".";
}

std::string scene_description(const Scene& scene) {
  std::string out;
  for (size_t i = 0; i < scene.shapes.size(); ++i) {
    const auto& s = scene.shapes[i];
    out += std::string(i > 0 ? " , " : "") + kCellNames[s.cell] + " : " + noun_phrase(s);
  }
  return out;
}

std::vector<std::string> shapes_world_vocabulary() {
  std::vector<std::string> words(std::begin(kTemplateWords), std::end(kTemplateWords));
  words.insert(words.end(), std::begin(kKindNames), std::end(kKindNames));
  words.insert(words.end(), std::begin(kColourNames), std::end(kColourNames));
  words.insert(words.end(), std::begin(kSizeNames), std::end(kSizeNames));
  words.insert(words.end(), std::begin(kNumberWords), std::end(kNumberWords));
  words.insert(words.end(), std::begin(kCellWords), std::end(kCellWords));
  words.insert(words.end(), std::begin(kConversationWords), std::end(kConversationWords));
  std::sort(words.begin(), words.end());  // no dedup: a duplicate is a bug the tests catch
  words.insert(words.end(), std::begin(kVisualWords), std::end(kVisualWords));
  return words;
}

std::string shapes_world_tokenizer_json() {
  Json added = Json::array(), vocab = Json::object();
  int64_t id = 0;
  for (const char* special : {"<pad>", "<s>", "</s>", "<unk>", "<image>"}) {
    added.push_back(Json{{"id", id},
                         {"content", special},
                         {"single_word", false},
                         {"lstrip", false},
                         {"rstrip", false},
                         {"normalized", false},
                         {"special", true}});
    vocab[special] = id++;
  }
  for (const auto& w : shapes_world_vocabulary()) vocab[w] = id++;
  const Json tokenizer = {
      {"version", "1.0"},
      {"truncation", nullptr},
      {"padding", nullptr},
      {"added_tokens", added},
      {"normalizer", {{"type", "Lowercase"}}},
      {"pre_tokenizer", {{"type", "Whitespace"}}},
      {"post_processor", nullptr},
      {"decoder", nullptr},
      {"model", {{"type", "WordLevel"}, {"vocab", vocab}, {"unk_token", "<unk>"}}},
  };
  return tokenizer.dump(2) + "\n";
}

ShapesWorldSummary generate_shapes_world(const fs::path& out_dir,
                                         const ShapesWorldOptions& options) {
  if (options.image_size < 32 || options.image_size > 1024)
    throw Error("shapes: --image-size must be in [32, 1024] (got " +
                std::to_string(options.image_size) + ")");
  if (!(options.jitter >= 0.0 && options.jitter <= 1.0))
    throw Error("shapes: --jitter must be in [0, 1] (got " + std::to_string(options.jitter) + ")");
  if (options.train < 1)
    throw Error("shapes: --train must be >= 1 (got " + std::to_string(options.train) + ")");
  if (options.val < 0)
    throw Error("shapes: --val must be >= 0 (got " + std::to_string(options.val) + ")");
  fs::create_directories(out_dir);

  // Independent streams per split: the val set does not depend on the train count.
  Rng seeder(options.seed);
  const uint64_t train_seed = seeder.next_u64(), val_seed = seeder.next_u64();
  const VocabularyCheck check;
  const Split train = generate_split(out_dir, "train", train_seed, options.train, options, check);
  const Split val = generate_split(out_dir, "val", val_seed, options.val, options, check);
  auto write_split = [&](const std::string& name, const Split& split) {
    write_json(out_dir / ("captions_" + name + ".json"), split.captions);
    write_json(out_dir / ("instruct_" + name + ".json"), split.instruct);
    write_json(out_dir / ("preference_" + name + ".json"), split.preference);
    write_json(out_dir / ("text_" + name + ".json"), split.text);
    write_json(out_dir / ("caption_pairs_" + name + ".json"), split.caption_pairs);
  };
  write_split("train", train);
  write_split("val", val);
  write_json(out_dir / "questions_val.json", val.questions);
  // The visual questions: streams of their own, after the splits' seeds (nothing above changes).
  const int64_t visual_train = options.visual >= 0 ? options.visual : options.train / 8;
  const int64_t visual_val =
      options.visual >= 0 ? std::min<int64_t>(options.visual, options.val) : options.val;
  const uint64_t visual_train_seed = seeder.next_u64(), visual_val_seed = seeder.next_u64();
  const VisualSplit vtrain =
      generate_visual(out_dir, "train", visual_train_seed, visual_train, options, check);
  const VisualSplit vval =
      generate_visual(out_dir, "val", visual_val_seed, visual_val, options, check);
  write_json(out_dir / "visual_train.json", vtrain.records);
  write_json(out_dir / "visual_val.json", vval.records);
  write_json(out_dir / "questions_visual_val.json", vval.questions);
  write_file_atomic(out_dir / "tokenizer.json", shapes_world_tokenizer_json());

  ShapesWorldSummary summary;
  summary.train_images = options.train;
  summary.val_images = options.val;
  summary.instruct_records = static_cast<int64_t>(train.instruct.size() + val.instruct.size());
  summary.preference_records =
      static_cast<int64_t>(train.preference.size() + val.preference.size());
  write_json(out_dir / "info.json", Json{{"dataset", "ShapesWorld"},
                                         {"seed", options.seed},
                                         {"image_size", options.image_size},
                                         {"jitter", options.jitter},
                                         {"train_images", summary.train_images},
                                         {"val_images", summary.val_images},
                                         {"instruct_records", summary.instruct_records},
                                         {"preference_records", summary.preference_records},
                                         {"visual_records", visual_train + visual_val},
                                         {"vocab_size", 5 + shapes_world_vocabulary().size()}});
  return summary;
}

}  // namespace mllm::data
