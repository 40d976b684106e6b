#include <catch2/catch.hpp>

#include <algorithm>
#include <array>
#include <cctype>
#include <cmath>
#include <map>
#include <regex>
#include <set>
#include <vector>

#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>

#include "core/error.h"
#include "core/fs.h"
#include "data/chat_template.h"
#include "data/shapes_world.h"
#include "test_util.h"

using namespace mllm;
using namespace mllm::data;
using mllm::test::TempDir;
using nlohmann::json;

namespace {

ShapesWorldSummary make(const fs::path& dir, uint64_t seed, int64_t train, int64_t val,
                        int size = 32) {
  ShapesWorldOptions o;
  o.seed = seed;
  o.train = train;
  o.val = val;
  o.image_size = size;
  return generate_shapes_world(dir, o);
}

// Every regular file under `root`, relative path -> bytes.
std::map<std::string, std::string> all_files(const fs::path& root) {
  std::map<std::string, std::string> files;
  for (const auto& e : fs::recursive_directory_iterator(root))
    if (e.is_regular_file()) files[fs::relative(e.path(), root).string()] = read_file(e.path());
  return files;
}

json load(const fs::path& p) {
  return json::parse(read_file(p));
}

// The tokenizer's pre-tokenization rule.
std::vector<std::string> words(const std::string& text) {
  static const std::regex re(R"(\w+|[^\w\s]+)");
  std::vector<std::string> out;
  for (auto it = std::sregex_iterator(text.begin(), text.end(), re); it != std::sregex_iterator();
       ++it)
    out.push_back(it->str());
  return out;
}

std::string strip_image(const std::string& s) {
  return s.rfind("<image>\n", 0) == 0 ? s.substr(8) : s;
}

std::string phrase(int size, int colour, int kind) {
  return std::string(shape_size_name(size)) + " " + shape_colour_name(colour) + " " +
         shape_kind_name(kind);
}

}  // namespace

TEST_CASE("shapes world: the same seed gives byte-identical files, another seed another dataset") {
  TempDir dir("shapes-det");
  make(dir / "a", 5, 12, 4);
  make(dir / "b", 5, 12, 4);
  make(dir / "c", 6, 12, 4);
  const auto a = all_files(dir / "a"), b = all_files(dir / "b");
  // images, visual-question images (train: 12 / 8 = 1 hires; val: 4 = a hires, a pair, a
  // three-frame clip, a hires), 10 record files, 3 visual-question files, questions_val.json,
  // tokenizer.json, info.json
  REQUIRE(a.size() == 12 + 4 + 1 + 7 + 10 + 3 + 1 + 2);
  REQUIRE(a.size() == b.size());
  for (const auto& [name, bytes] : a) {
    INFO(name);
    REQUIRE(b.count(name));
    CHECK(b.at(name) == bytes);
  }
  CHECK(read_file(dir / "c" / "captions_train.json") != a.at("captions_train.json"));
  CHECK(read_file(dir / "c" / "questions_val.json") != a.at("questions_val.json"));
  CHECK(read_file(dir / "c" / "images/train/000000.png") != a.at("images/train/000000.png"));
}

TEST_CASE("shapes world: captions follow the fixed phrasing, shapes in grid order") {
  Scene s;
  s.shapes = {{0, 0, 1, 0}, {4, 2, 0, 8}};
  CHECK(scene_caption(s) ==
        "a large red circle at the top left and a small blue star at the bottom right.");
  s.shapes = {{2, 1, 0, 4}};
  CHECK(scene_caption(s) == "a small green triangle in the center.");
  s.shapes = {{1, 3, 0, 1}, {3, 6, 1, 3}, {0, 5, 0, 7}};
  CHECK(scene_caption(s) ==
        "a small yellow square at the top, a large white diamond at the left and a small orange "
        "circle at the bottom.");
}

TEST_CASE("shapes world: the scene description lists cell, size, colour and kind in cell order") {
  Scene s;
  s.shapes = {{0, 0, 1, 0}, {4, 2, 0, 8}};
  CHECK(scene_description(s) == "top left : large red circle , bottom right : small blue star");
  s.shapes = {{2, 1, 0, 4}};
  CHECK(scene_description(s) == "center : small green triangle");
}

TEST_CASE(
    "shapes world: stage 0's text records: the caption alone, after the description, and "
    "questions answered from it") {
  TempDir dir("shapes-text");
  make(dir.path(), 2, 20, 5);
  const auto captions = nlohmann::json::parse(read_file(dir / "captions_train.json"));
  const auto text = nlohmann::json::parse(read_file(dir / "text_train.json"));
  REQUIRE(captions.size() == 20);
  REQUIRE(text.size() == 3 * captions.size());
  CHECK(nlohmann::json::parse(read_file(dir / "text_val.json")).size() == 15);
  std::set<std::string> asked;
  for (size_t i = 0; i < captions.size(); ++i) {
    const auto& cap = captions[i];
    const std::string id = cap["id"];
    const std::string caption = cap["conversations"][1]["value"];
    std::string prompt = cap["conversations"][0]["value"];
    prompt = prompt.substr(std::string("<image>\n").size());
    const auto& alone = text[3 * i];
    const auto& described = text[3 * i + 1];
    const auto& questions = text[3 * i + 2];
    INFO(id);
    CHECK(alone["id"] == id + "-caption");
    CHECK(described["id"] == id + "-described");
    CHECK(questions["id"] == id + "-questions");
    for (const auto* r : {&alone, &described, &questions}) {
      CHECK_FALSE(r->contains("image"));  // text only
      for (const auto& turn : (*r)["conversations"])
        CHECK(turn["value"].get<std::string>().find("<image>") == std::string::npos);
    }
    CHECK(alone["conversations"][0]["value"] == prompt);
    CHECK(alone["conversations"][1]["value"] == caption);
    const std::string description = described["conversations"][0]["value"];
    CHECK(described["conversations"][1]["value"] == caption);
    // The description names what the caption names: each "size colour kind" phrase of one is in
    // the other.
    for (const char* size : {"small", "large"})
      for (size_t at = description.find(size); at != std::string::npos;
           at = description.find(size, at + 1)) {
        const auto end = description.find(" , ", at);
        CHECK(caption.find(description.substr(at, end == std::string::npos ? end : end - at)) !=
              std::string::npos);
      }
    const auto& conv = questions["conversations"];
    REQUIRE((conv.size() == 2 || conv.size() == 4));
    const std::string first = conv[0]["value"];
    CHECK(first.rfind(description + "\n", 0) == 0);
    asked.insert(first.substr(description.size() + 1));
  }
  CHECK(asked.size() > 10);  // questions vary

  // The clip stage's hard negatives: the caption against one wrong about one detail.
  const auto pairs = nlohmann::json::parse(read_file(dir / "caption_pairs_train.json"));
  REQUIRE(pairs.size() == captions.size());
  for (size_t i = 0; i < pairs.size(); ++i) {
    CHECK(pairs[i]["image"] == captions[i]["image"]);
    CHECK(pairs[i]["prompt"] == captions[i]["conversations"][0]["value"]);
    CHECK(pairs[i]["chosen"] == captions[i]["conversations"][1]["value"]);
    CHECK(pairs[i]["rejected"] != pairs[i]["chosen"]);
  }
}

TEST_CASE("shapes world: the caption names exactly the shapes drawn, where they are drawn") {
  Rng rng(11);
  for (int image_size : {32, 64, 96, 512}) {
    for (int i = 0; i < 100; ++i) {
      const Scene scene = sample_scene(rng);
      REQUIRE(!scene.shapes.empty());
      REQUIRE(scene.shapes.size() <= 3);
      const cv::Mat img = render_scene(scene, image_size);
      REQUIRE(img.type() == CV_8UC3);
      REQUIRE(img.rows == image_size);
      REQUIRE(img.cols == image_size);
      const std::string caption = scene_caption(scene);
      INFO(caption << " at " << image_size << "px");
      std::set<int> cells;
      for (const auto& sh : scene.shapes) {
        const cv::Point2d c = shape_centre(sh, image_size);
        CHECK(img.at<cv::Vec3b>(static_cast<int>(std::lround(c.y)),
                                static_cast<int>(std::lround(c.x))) == shape_colour_bgr(sh.colour));
        const std::string where =
            sh.cell == 4 ? "in the center" : std::string("at the ") + grid_cell_name(sh.cell);
        CHECK(caption.find("a " + phrase(sh.size, sh.colour, sh.kind) + " " + where) !=
              std::string::npos);
        cells.insert(sh.cell);
      }
      CHECK(cells.size() == scene.shapes.size());
      // Nothing is drawn in the other cells, and the caption names no other object.
      for (int cell = 0; cell < kGridCells; ++cell) {
        if (cells.count(cell)) continue;
        ShapeSpec probe;
        probe.cell = cell;
        const cv::Point2d c = shape_centre(probe, image_size);
        CHECK(img.at<cv::Vec3b>(static_cast<int>(std::lround(c.y)),
                                static_cast<int>(std::lround(c.x))) ==
              background_bgr(scene.background));
      }
      int named = 0;
      for (int size = 0; size < kShapeSizes; ++size)
        for (int colour = 0; colour < kShapeColours; ++colour)
          for (int kind = 0; kind < kShapeKinds; ++kind)
            named += caption.find(phrase(size, colour, kind)) != std::string::npos;
      CHECK(named == static_cast<int>(scene.shapes.size()));
    }
  }
}

TEST_CASE("shapes world: shapes stay inside their grid cell at any jitter") {
  for (int image_size : {32, 64, 100}) {
    const double cell = image_size / 3.0;
    // Pixel x spans [x-0.5, x+0.5]; the center cell spans [cell-0.5, 2*cell-0.5].
    auto touches_cell = [&](int x) { return x > cell - 1 && x < 2 * cell; };
    for (int kind = 0; kind < kShapeKinds; ++kind)
      for (int size = 0; size < kShapeSizes; ++size)
        for (double jx : {-1.0, 1.0})
          for (double jy : {-1.0, 1.0}) {
            Scene scene;
            scene.shapes = {{kind, 6, size, 4, jx, jy}};  // white, in the center cell
            const cv::Mat img = render_scene(scene, image_size);
            for (int y = 0; y < image_size; ++y)
              for (int x = 0; x < image_size; ++x)
                if (!touches_cell(x) || !touches_cell(y))
                  REQUIRE(img.at<cv::Vec3b>(y, x) == background_bgr(0));
          }
  }
}

TEST_CASE("shapes world: jitter scales the offset from the cell's centre and nothing else") {
  // The same seed at jitter 0, 0.25 and 1: the same scenes (the stream does not depend on it),
  // offsets in [-jitter, jitter], centred shapes at 0, and at least one shape off-centre by more
  // than 0.25 at full jitter.
  std::vector<std::vector<Scene>> runs;
  for (double jitter : {0.0, 0.25, 1.0}) {
    Rng rng(5);
    std::vector<Scene> scenes;
    for (int i = 0; i < 200; ++i) scenes.push_back(sample_scene(rng, jitter));
    for (const auto& scene : scenes)
      for (const auto& s : scene.shapes) {
        REQUIRE(std::abs(s.jitter_x) <= jitter);
        REQUIRE(std::abs(s.jitter_y) <= jitter);
      }
    runs.push_back(std::move(scenes));
  }
  double widest = 0;
  for (size_t i = 0; i < runs[0].size(); ++i) {
    REQUIRE(scene_caption(runs[0][i]) == scene_caption(runs[2][i]));
    for (size_t k = 0; k < runs[0][i].shapes.size(); ++k) {
      const auto &centred = runs[0][i].shapes[k], quarter = runs[1][i].shapes[k],
                 full = runs[2][i].shapes[k];
      CHECK(quarter.jitter_x == Approx(full.jitter_x * 0.25));
      CHECK(quarter.jitter_y == Approx(full.jitter_y * 0.25));
      const cv::Point2d c = shape_centre(centred, 72);
      CHECK(c.x == Approx((centred.cell % 3 + 0.5) * 24 - 0.5));
      CHECK(c.y == Approx((centred.cell / 3 + 0.5) * 24 - 0.5));
      widest = std::max(widest, std::abs(full.jitter_x));
    }
  }
  CHECK(widest > 0.9);
}

TEST_CASE("shapes world: every generated word is in the vocabulary; tokenizer ids are 0..N-1") {
  TempDir dir("shapes-vocab");
  make(dir.path(), 3, 300, 30);
  const auto vocab = shapes_world_vocabulary();
  const std::set<std::string> known(vocab.begin(), vocab.end());
  CHECK(known.size() == vocab.size());  // no duplicates
  // Sorted, but for the visual questions' words appended at the end (earlier ids stay).
  CHECK(std::is_sorted(vocab.begin(), vocab.end() - 8));
  CHECK(vocab.back() == "which");
  CHECK(vocab.size() + 5 <= 120);

  std::set<std::string> used;
  auto check_text = [&](const std::string& text) {
    for (const auto& w : words(strip_image(text))) {
      INFO(text);
      CHECK(known.count(w));
      used.insert(w);
    }
  };
  for (const char* split : {"train", "val"}) {
    for (const char* kind : {"captions", "instruct"})
      for (const auto& r : load(dir / (std::string(kind) + "_" + split + ".json"))) {
        std::vector<Turn> turns;
        for (const auto& t : r["conversations"]) {
          check_text(t["value"]);
          turns.push_back({t["from"], t["value"]});
        }
        // Through LLaVA-1.5's template (stage 2's recipe) every word is known too.
        if (std::string(kind) == "instruct") {
          std::string text =
              render_template("vicuna_v1", turns, {"<s>", "</s>", "<image>", nullptr}).text;
          for (const char* special : {"<s>", "</s>", "<image>"})
            for (size_t at; (at = text.find(special)) != std::string::npos;)
              text.replace(at, std::string(special).size(), " ");
          // The tokenizer lowercases (its normalizer), so the template's capitals are known words.
          std::transform(text.begin(), text.end(), text.begin(),
                         [](unsigned char ch) { return static_cast<char>(std::tolower(ch)); });
          check_text(text);
        }
      }
    for (const auto& r : load(dir / (std::string("preference_") + split + ".json"))) {
      check_text(r["prompt"]);
      check_text(r["chosen"]);
      check_text(r["rejected"]);
    }
  }
  for (const char* split : {"train", "val"})
    for (const auto& r : load(dir / (std::string("visual_") + split + ".json")))
      for (const auto& t : r["conversations"]) {
        std::string text = t["value"];
        for (size_t at; (at = text.find("<image>")) != std::string::npos;) text.replace(at, 7, " ");
        check_text(text);
      }
  // The list is not padded with words the generator never says.
  CHECK(used.size() == known.size());

  const json tok = load(dir / "tokenizer.json");
  CHECK(tok == json::parse(shapes_world_tokenizer_json()));
  CHECK(tok["model"]["type"] == "WordLevel");
  CHECK(tok["model"]["unk_token"] == "<unk>");
  CHECK(tok["pre_tokenizer"]["type"] == "Whitespace");
  const auto& v = tok["model"]["vocab"];
  REQUIRE(v.size() == vocab.size() + 5);
  std::set<int64_t> ids;
  for (const auto& [token, id] : v.items()) ids.insert(id.get<int64_t>());
  CHECK(ids.size() == v.size());
  CHECK(*ids.begin() == 0);
  CHECK(*ids.rbegin() == static_cast<int64_t>(v.size()) - 1);
  const std::vector<std::string> specials = {"<pad>", "<s>", "</s>", "<unk>", "<image>"};
  for (size_t i = 0; i < specials.size(); ++i) {
    CHECK(v[specials[i]] == i);
    CHECK(tok["added_tokens"][i]["content"] == specials[i]);
    CHECK(tok["added_tokens"][i]["id"] == i);
    CHECK(tok["added_tokens"][i]["special"] == true);
  }
  for (size_t i = 0; i < vocab.size(); ++i) CHECK(v[vocab[i]] == i + 5);
}

TEST_CASE("shapes world: records are LLaVA conversations and preference pairs differ") {
  TempDir dir("shapes-json");
  const auto summary = make(dir.path(), 9, 40, 10);
  CHECK(summary.train_images == 40);
  CHECK(summary.val_images == 10);
  CHECK(summary.instruct_records == 50);
  CHECK(summary.preference_records == 50);
  std::set<size_t> turn_counts;
  for (const std::string split : {"train", "val"}) {
    const int64_t n = split == "train" ? 40 : 10;
    for (const std::string kind : {"captions", "instruct"}) {
      const json records = load(dir / (kind + "_" + split + ".json"));
      REQUIRE(records.is_array());
      REQUIRE(static_cast<int64_t>(records.size()) == n);
      for (size_t i = 0; i < records.size(); ++i) {
        const json& r = records[i];
        char id[32];
        std::snprintf(id, sizeof id, "%s-%06zu", split.c_str(), i);
        CHECK(r["id"] == id);
        const std::string image = r["image"];
        CHECK(image.rfind(split + "/", 0) == 0);
        CHECK(fs::is_regular_file(dir / "images" / image));
        const json& turns = r["conversations"];
        REQUIRE(turns.size() >= 2);
        REQUIRE(turns.size() % 2 == 0);
        if (kind == "captions") CHECK(turns.size() == 2);
        turn_counts.insert(turns.size() / 2);
        for (size_t t = 0; t < turns.size(); ++t) {
          CHECK(turns[t]["from"] == (t % 2 == 0 ? "human" : "gpt"));
          const std::string value = turns[t]["value"];
          CHECK(!value.empty());
          CHECK((value.rfind("<image>\n", 0) == 0) == (t == 0));
        }
      }
    }
    for (const json& r : load(dir / ("preference_" + split + ".json"))) {
      const std::string prompt = r["prompt"];
      CHECK(prompt.rfind("<image>\n", 0) == 0);
      CHECK(fs::is_regular_file(dir / "images" / r["image"].get<std::string>()));
      CHECK(r["chosen"] != r["rejected"]);
    }
  }
  CHECK(turn_counts == std::set<size_t>{1, 2, 3});
  const cv::Mat img = cv::imread((dir / "images/val/000009.png").string());
  CHECK(img.rows == 32);
  CHECK(img.cols == 32);
  const json info = load(dir / "info.json");
  CHECK(info["seed"] == 9);
  CHECK(info["image_size"] == 32);
  CHECK(info["jitter"] == 0.25);
}

TEST_CASE("shapes world: a share of the preference pairs ask about present and absent objects") {
  // Stage 3's hallucination-targeted pairs: "is there a <colour> <kind>?" with the truth chosen,
  // checked against the image's caption; about a quarter of the pairs, half of them absent.
  TempDir dir("shapes-pope-pairs");
  make(dir.path(), 3, 400, 4);
  const json pairs = load(dir / "preference_train.json");
  const json captions = load(dir / "captions_train.json");
  REQUIRE(pairs.size() == captions.size());
  int exists = 0, absent = 0, near = 0;
  const std::regex question("<image>\nis there a ((\\w+) (\\w+))\\?");
  for (size_t i = 0; i < pairs.size(); ++i) {
    const std::string prompt = pairs[i]["prompt"];
    std::smatch m;
    if (!std::regex_match(prompt, m, question)) continue;
    ++exists;
    const std::string caption = captions[i]["conversations"][1]["value"];
    const bool there = caption.find(" " + m[1].str() + " ") != std::string::npos;
    INFO(prompt << " / " << caption);
    CHECK(pairs[i]["chosen"] == (there ? "yes." : "no."));
    CHECK(pairs[i]["rejected"] == (there ? "no." : "yes."));
    absent += !there;
    // A near miss: the absent object's colour or kind is in the scene.
    near += !there && (caption.find(" " + m[2].str() + " ") != std::string::npos ||
                       caption.find(" " + m[3].str()) != std::string::npos);
  }
  CHECK(exists > 0.22 * 400);
  CHECK(exists < 0.4 * 400);
  CHECK(absent > 0.35 * exists);
  CHECK(absent < 0.65 * exists);
  // Half of the absent ones are near misses by construction; of the others, drawn at random, about
  // half share an attribute with the scene by chance: ~0.75 in all (~0.5 without near misses).
  CHECK(near > 0.65 * absent);
}

TEST_CASE("shapes world: the val set does not depend on the train count") {
  TempDir dir("shapes-val");
  make(dir / "small", 4, 3, 5);
  make(dir / "big", 4, 20, 5);
  const auto small = all_files(dir / "small"), big = all_files(dir / "big");
  for (const char* f :
       {"captions_val.json", "instruct_val.json", "preference_val.json", "images/val/000004.png"})
    CHECK(small.at(f) == big.at(f));
  CHECK(small.at("captions_train.json") != big.at("captions_train.json"));
  CHECK(small.at("images/train/000002.png") == big.at("images/train/000002.png"));
}

TEST_CASE("shapes world: bad options throw errors naming the option") {
  TempDir dir("shapes-bad");
  ShapesWorldOptions o;
  o.image_size = 8;
  CHECK_THROWS_WITH(generate_shapes_world(dir.path(), o),
                    "shapes: --image-size must be in [32, 1024] (got 8)");
  o.image_size = 2048;
  CHECK_THROWS_WITH(generate_shapes_world(dir.path(), o), Catch::Contains("--image-size"));
  o = ShapesWorldOptions{};
  o.train = 0;
  CHECK_THROWS_WITH(generate_shapes_world(dir.path(), o), Catch::StartsWith("shapes: --train"));
  for (double jitter : {-0.1, 1.5}) {
    o = ShapesWorldOptions{};
    o.jitter = jitter;
    CHECK_THROWS_WITH(generate_shapes_world(dir.path(), o), Catch::StartsWith("shapes: --jitter"));
  }
  o = ShapesWorldOptions{};
  o.val = -1;
  CHECK_THROWS_WITH(generate_shapes_world(dir.path(), o), Catch::StartsWith("shapes: --val"));
  CHECK_THROWS_AS(generate_shapes_world(dir.path(), o), Error);
  CHECK(fs::is_empty(dir.path()));  // validated before anything is written
}

TEST_CASE(
    "shapes world: visual questions: a small shape in a quadrant, two scenes, a moving shape") {
  TempDir dir("shapes-visual");
  make(dir.path(), 7, 48, 6);  // 6 train records, 6 val
  const auto records = load(dir / "visual_train.json");
  REQUIRE(records.size() == 6);
  const auto questions = load(dir / "questions_visual_val.json");
  REQUIRE(questions.size() == 6);
  CHECK(questions[0]["type"] == "hires");
  CHECK(questions[1]["type"] == "two_image");
  CHECK(questions[2]["type"] == "motion");
  const fs::path images = dir / "images";
  // Centroid of the pixels that differ from the corner's (background) colour.
  auto centroid = [](const cv::Mat& img) {
    const cv::Vec3b bg = img.at<cv::Vec3b>(0, 0);
    double x = 0, y = 0, n = 0;
    for (int r = 0; r < img.rows; ++r)
      for (int c = 0; c < img.cols; ++c)
        if (cv::norm(img.at<cv::Vec3b>(r, c), bg, cv::NORM_L1) > 60) x += c, y += r, ++n;
    return std::array<double, 3>{x / std::max(n, 1.0), y / std::max(n, 1.0), n};
  };
  for (size_t i = 0; i < records.size(); ++i) {
    const auto& r = records[i];
    const std::string human = r["conversations"][0]["value"];
    const std::string answer = r["conversations"][1]["value"];
    INFO(r.dump());
    if (i % 3 == 0) {
      const cv::Mat big = cv::imread((images / r["image"].get<std::string>()).string());
      REQUIRE(big.rows == 64);
      REQUIRE(big.cols == 64);
      // The shape lies in one quadrant, and is small there.
      int quadrants = 0;
      for (int q = 0; q < 4; ++q)
        if (centroid(big(cv::Rect((q % 2) * 32, (q / 2) * 32, 32, 32)).clone())[2] > 0) ++quadrants;
      CHECK(quadrants == 1);
      CHECK(centroid(big)[2] < 32 * 32 / 9);
      CHECK(human == "<image>\nwhat shape is in the image?");
    } else if (i % 3 == 1) {
      REQUIRE(r["image"].size() == 2);
      CHECK(human == "<image>\n<image>\nwhich image has more shapes?");
      CHECK((answer == "the first." || answer == "the second."));
    } else {
      REQUIRE(r["video"].size() == 3);
      std::vector<std::array<double, 3>> c;
      for (const auto& f : r["video"])
        c.push_back(centroid(cv::imread((images / f.get<std::string>()).string())));
      const double dx = c[2][0] - c[0][0], dy = c[2][1] - c[0][1];
      const std::string way =
          std::abs(dx) > std::abs(dy) ? (dx > 0 ? "right" : "left") : (dy > 0 ? "bottom" : "top");
      CHECK(answer == "to the " + way + ".");
      CHECK(human.rfind("<image>\nwhich way does the ", 0) == 0);
    }
  }
}
