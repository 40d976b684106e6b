// Evaluation tasks: reading task datasets (qa_json and llava_json), and running a task, whose
// predictions do not depend on how the prompts are batched.
#include <catch2/catch.hpp>

#include <algorithm>

#include "core/error.h"
#include "eval/evaluate.h"
#include "fixtures.h"
#include "models/factory.h"
#include "test_util.h"

using namespace mllm;
using mllm::test::TempDir;

namespace {

EvalTaskConfig qa_task(const TempDir& data, std::vector<std::string> types) {
  EvalTaskConfig t;
  t.name = "qa";
  t.format = "qa_json";
  t.path = (data / "questions_val.json").string();
  t.image_root = (data / "images").string();
  t.types = std::move(types);
  t.generation.max_new_tokens = 4;
  return t;
}

std::string error_of(const EvalTaskConfig& t) {
  try {
    eval::load_eval_items(t);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("eval items: ShapesWorld questions by type, captions from LLaVA records") {
  TempDir data("mllm-eval-items");
  test::make_shapes(data.path(), 4, 5);
  const auto color = eval::load_eval_items(qa_task(data, {"color"}));
  REQUIRE(color.size() == 5);  // one per val image
  for (const auto& item : color) {
    CHECK(item.reference.category == "color");
    CHECK(item.prompt.rfind("<image>\nwhat color is ", 0) == 0);
    CHECK(std::filesystem::is_regular_file(item.image));
    REQUIRE(item.reference.answers.size() == 1);
    CHECK(item.reference.answers[0].find('.') == std::string::npos);
    CHECK(item.reference.group == item.image.lexically_relative(data / "images").string());
  }
  // POPE pairs: a present and an absent object per image, answered yes and no.
  const auto exists = eval::load_eval_items(qa_task(data, {"exists"}));
  REQUIRE(exists.size() == 10);
  int yes = 0;
  for (const auto& item : exists) yes += item.reference.answers[0] == "yes";
  CHECK(yes == 5);
  const auto all = eval::load_eval_items(qa_task(data, {}));
  CHECK(all.size() == 5 * 9);
  auto limited = qa_task(data, {"color", "size"});
  limited.max_samples = 3;
  CHECK(eval::load_eval_items(limited).size() == 3);

  EvalTaskConfig cap;
  cap.name = "caption";
  cap.path = (data / "captions_val.json").string();
  cap.image_root = (data / "images").string();
  const auto caps = eval::load_eval_items(cap);
  REQUIRE(caps.size() == 5);
  CHECK(caps[0].prompt.rfind("<image>\n", 0) == 0);
  CHECK(caps[0].reference.answers[0].rfind("a ", 0) == 0);  // "a small red ..."
}

TEST_CASE("eval items: bad records name the file, line, record and id") {
  TempDir data("mllm-eval-bad");
  test::make_shapes(data.path(), 2, 1);
  auto t = qa_task(data, {});
  t.format = "qa_jsonl";
  t.path = (data / "q.jsonl").string();
  auto bad = [&](const std::string& text) {
    test::write_text(data / "q.jsonl", text);
    return error_of(t);
  };
  const std::string ok =
      R"({"id": "a", "image": "val/000000.png", "question": "q?", "answer": "x"})";
  CHECK(bad(ok + "\n").empty());
  CHECK_THAT(bad(ok + "\n{\"id\": \"b\", \"question\": \n"),
             Catch::Contains(t.path + ":2: record 1: malformed JSON"));
  CHECK_THAT(bad(ok + "\n" + ok + "\n"),
             Catch::Contains(t.path + ":2: record 1 (id \"a\"): the id is used by an earlier"));
  CHECK_THAT(bad(R"({"id": "c", "image": "val/nope.png", "question": "q?", "answer": "x"})"),
             Catch::Contains("image not found"));
  CHECK_THAT(
      bad(R"({"id": "f", "image": "../../../etc/passwd", "question": "q?", "answer": "x"})"),
      Catch::Contains("(id \"f\"): image outside the task's image_root: ../../../etc/passwd"));
  CHECK_THAT(bad(R"({"id": "d", "question": "<image>\nq?", "answers": ["x"]})"),
             Catch::Contains("the prompt has <image> but the record has no \"image\""));
  CHECK_THAT(bad(R"({"id": "e", "question": "q?", "answers": []})"),
             Catch::Contains("\"answers\" must be a non-empty list"));
  t.types = {"nosuchtype"};
  CHECK_THAT(bad(ok + "\n"), Catch::Contains("no records for eval task 'qa' of the types"));
}

TEST_CASE("eval prompts: the model's system prompt (data.system) replaces the template's") {
  TempDir data("mllm-eval-system");
  test::make_shapes(data.path(), 2, 4);
  const auto tok = load_tokenizer(data / "tokenizer.json");
  const auto own = eval::prompt_ids(*tok, "vicuna_v1", "<image>\nwhat color is it?", 3);
  const auto none = eval::prompt_ids(*tok, "vicuna_v1", "<image>\nwhat color is it?", 3,
                                     std::optional<std::string>(""));
  // The same prompt without vicuna's system prompt: <s>, then the two agree to the end.
  REQUIRE(none.size() + 20 < own.size());
  CHECK(none.front() == own.front());
  CHECK(std::equal(none.begin() + 1, none.end(), own.end() - (none.size() - 1)));
  CHECK(std::count(none.begin(), none.end(), tok->image_id()) == 3);
}

TEST_CASE("eval task: predictions do not depend on the batch size; every metric is scored") {
  TempDir data("mllm-eval-task");
  test::make_shapes(data.path(), 2, 4);
  Config c = test::tiny_config(data.path(), data / "run");
  const auto tok = load_tokenizer(c.model.tokenizer);
  torch::manual_seed(0);
  MultimodalModel model = build_model(c, tok->vocabulary());
  const ImageTransform transform(c.data.image, 32);
  const eval::EvalModel m{*model, *tok, transform, "vicuna_v1"};
  auto task = qa_task(data, {"color", "exists"});
  task.metrics = {"exact", "vqa"};
  const auto one = eval::run_task(task, m, 1, true, 0);
  const auto three = eval::run_task(task, m, 3, true, 0);
  REQUIRE(one.n == 12);
  REQUIRE(one.predictions.size() == 12);
  for (size_t i = 0; i < one.predictions.size(); ++i) {
    CHECK(one.predictions[i].id == one.items[i].id);
    CHECK(one.predictions[i].text == three.predictions[i].text);
  }
  CHECK(one.template_name == "vicuna_v1");
  for (const char* metric : {"exact", "vqa"}) {
    INFO(metric);
    CHECK(one.scores.contains(metric));
    CHECK(one.chance.contains(metric));
    CHECK(one.prior.contains(metric));
  }
  // The flat keys that go to metrics.jsonl.
  const auto flat = eval::flat_scores({one});
  CHECK(flat.count("eval/qa/accuracy") == 1);
  CHECK(flat.count("eval/qa/color/accuracy") == 1);
  const std::string md = eval::results_markdown({one});
  CHECK(md.find("| qa | exists | 8 |") != std::string::npos);
  CHECK(md.find("| value | chance | prior |") != std::string::npos);
}

TEST_CASE("eval prior: every item of a type gets the type's most frequent answer") {
  auto item = [](const std::string& id, const std::string& type, const std::string& answer) {
    eval::EvalItem i;
    i.id = id;
    i.reference.id = id;
    i.reference.category = type;
    i.reference.answers = {answer};
    return i;
  };
  // what_at: "nothing" 3 of 4; colour: blue and red tie at 2; one "size" item.
  const std::vector<eval::EvalItem> items = {item("a", "what_at", "nothing"),
                                             item("b", "what_at", "nothing"),
                                             item("c", "what_at", "a red circle"),
                                             item("d", "what_at", "nothing"),
                                             item("e", "color", "red"),
                                             item("f", "color", "red"),
                                             item("g", "color", "blue"),
                                             item("h", "color", "blue"),
                                             item("i", "size", "large")};
  const auto p = eval::prior_predictions(items);
  REQUIRE(p.size() == items.size());
  std::map<std::string, std::string> got;
  for (const auto& x : p) got[x.id] = x.text;
  for (const char* id : {"a", "b", "c", "d"}) CHECK(got[id] == "nothing");
  for (const char* id : {"e", "f", "g", "h"}) CHECK(got[id] == "blue");  // the tie: sorts first
  CHECK(got["i"] == "large");
  std::vector<eval::Reference> refs;
  for (const auto& i : items) refs.push_back(i.reference);
  const auto s = eval::score("exact", p, refs);
  CHECK(s["by_category"]["what_at"]["accuracy"].get<double>() == Approx(0.75));
  CHECK(s["by_category"]["color"]["accuracy"].get<double>() == Approx(0.5));
}

TEST_CASE("eval items and tasks: several images, frame lists, AnyRes and its base resolution") {
  TempDir data("mllm-eval-visual");
  test::make_shapes(data.path(), 2, 6);
  auto task = qa_task(data, {});
  task.path = (data / "questions_visual_val.json").string();
  const auto items = eval::load_eval_items(task);
  REQUIRE(items.size() == 6);
  // hires, two_image, motion in turn.
  CHECK(items[0].visuals.size() == 1);
  CHECK_FALSE(items[0].video[0]);
  REQUIRE(items[1].visuals.size() == 2);
  CHECK(items[1].prompt == "<image>\n<image>\nwhich image has more shapes?");
  CHECK(items[1].image == items[1].visuals[0][0]);
  REQUIRE(items[2].visuals.size() == 1);
  CHECK(items[2].visuals[0].size() == 3);  // the clip's frames under one tag
  CHECK(items[2].video[0]);

  // Bad records: tags and images disagree; a clip file instead of frames.
  auto t = task;
  t.format = "qa_jsonl";
  t.path = (data / "q.jsonl").string();
  auto bad = [&](const std::string& text) {
    test::write_text(data / "q.jsonl", text);
    return error_of(t);
  };
  CHECK_THAT(bad(R"({"id": "a", "image": ["val/000000.png", "val/000001.png"],)"
                 R"( "question": "<image> which?", "answer": "x"})"),
             Catch::Contains("(id \"a\"): the prompt has 1 <image> tags for 2 images"));
  CHECK_THAT(bad(R"({"id": "v", "video": "clip.mp4", "question": "<image> q?", "answer": "x"})"),
             Catch::Contains("\"video\" must be a list of frame files"));

  // A model with AnyRes answers them, the same whatever the batching; base_resolution too.
  Config c = test::tiny_config(data.path(), data / "run");
  c.model.vision.anyres.grid_pinpoints = {{32, 32}, {64, 64}};
  const auto tok = load_tokenizer(c.model.tokenizer);
  torch::manual_seed(0);
  MultimodalModel model = build_model(c, tok->vocabulary());
  const ImageTransform transform(c.data.image, 32, model->anyres_pinpoints());
  const eval::EvalModel m{*model, *tok, transform, "vicuna_v1"};
  const auto one = eval::run_task(task, m, 1, true, 0);
  const auto three = eval::run_task(task, m, 4, true, 0);
  REQUIRE(one.n == 6);
  for (size_t i = 0; i < one.predictions.size(); ++i)
    CHECK(one.predictions[i].text == three.predictions[i].text);
  task.base_resolution = true;
  CHECK(eval::run_task(task, m, 4, false, 0).n == 6);

  // Each tag its own count; a tag beyond the counts is an error.
  const auto ids =
      eval::prompt_ids(*tok, "vicuna_v1", "<image>\n<image>\nq?", std::vector<int64_t>{5, 7});
  CHECK(std::count(ids.begin(), ids.end(), tok->image_id()) == 12);
  CHECK_THROWS_WITH(
      eval::prompt_ids(*tok, "vicuna_v1", "<image>\n<image>\nq?", std::vector<int64_t>{5}),
      Catch::Contains("more <image> tags than images"));
}
