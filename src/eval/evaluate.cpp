#include "eval/evaluate.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <functional>
#include <optional>
#include <set>

#include "core/error.h"
#include "core/fs.h"
#include "core/progress.h"
#include "core/rng.h"
#include "core/strings.h"
#include "data/chat_template.h"
#include "data/datasets.h"
#include "models/hf/config_json.h"
#include "models/hf/llava_folder.h"

namespace mllm::eval {

namespace fs = std::filesystem;
using Json = nlohmann::json;

namespace {

std::string id_of(const Json& rec) {
  if (!rec.contains("id")) return "";
  return rec["id"].is_string() ? rec["id"].get<std::string>() : rec["id"].dump();
}

std::string string_field(const Json& rec, const char* key) {
  if (!rec.contains(key) || rec[key].is_null()) return "";
  if (!rec[key].is_string()) throw Error(std::string("\"") + key + "\" must be a string");
  return rec[key].get<std::string>();
}

// A llava record: the first human turn (after an optional system turn) and the reply after it.
EvalItem llava_item(const Json& rec) {
  const char* key = rec.contains("conversations") ? "conversations" : "messages";
  if (!rec.contains(key) || !rec[key].is_array())
    throw Error("needs \"conversations\" (a list of turns)");
  std::vector<Turn> turns;
  for (const auto& t : rec[key]) {
    if (!t.is_object()) throw Error("a turn must be an object");
    const bool role = t.contains("role");
    const std::string from = string_field(t, role ? "role" : "from");
    const std::string value = string_field(t, role ? "content" : "value");
    if (from == "system") continue;
    turns.push_back({from == "user" ? "human" : from == "assistant" ? "gpt" : from, value});
  }
  if (turns.size() < 2 || turns[0].from != "human" || turns[1].from != "gpt")
    throw Error("needs a human turn followed by a gpt reply");
  EvalItem item;
  item.prompt = turns[0].value;
  item.reference.answers = {turns[1].value};
  return item;
}

EvalItem qa_item(const Json& rec) {
  EvalItem item;
  item.prompt = string_field(rec, "question");
  if (item.prompt.empty()) throw Error("needs a non-empty \"question\"");
  if (rec.contains("answers")) {
    if (!rec["answers"].is_array() || rec["answers"].empty())
      throw Error("\"answers\" must be a non-empty list of strings");
    for (const auto& a : rec["answers"]) {
      if (!a.is_string()) throw Error("\"answers\" must be a non-empty list of strings");
      item.reference.answers.push_back(a.get<std::string>());
    }
  } else {
    if (!rec.contains("answer")) throw Error("needs \"answers\" or \"answer\"");
    item.reference.answers = {string_field(rec, "answer")};
  }
  item.reference.group = string_field(rec, "group");
  return item;
}

}  // namespace

std::vector<EvalItem> load_eval_items(const EvalTaskConfig& task) {
  const bool qa = task.format.rfind("qa_json", 0) == 0;
  const bool jsonl = task.format == "llava_jsonl" || task.format == "qa_jsonl" ||
                     fs::path(task.path).extension() == ".jsonl";
  const std::set<std::string> types(task.types.begin(), task.types.end());
  std::vector<EvalItem> items;
  std::set<std::string> ids;
  for_each_json_record(task.path, jsonl, [&](const RawRecord& raw) {
    const std::string where =
        task.path + ":" + std::to_string(raw.line) + ": record " + std::to_string(raw.index);
    Json rec;
    try {
      rec = Json::parse(raw.text);
    } catch (const Json::exception& e) {
      throw Error(where + ": malformed JSON: " + e.what());
    }
    try {
      if (!rec.is_object()) throw Error("a record must be a JSON object");
      EvalItem item = qa ? qa_item(rec) : llava_item(rec);
      item.id = id_of(rec);
      if (item.id.empty()) item.id = std::to_string(raw.index);
      if (!ids.insert(item.id).second) throw Error("the id is used by an earlier record");
      item.reference.id = item.id;
      item.reference.category = string_field(rec, rec.contains("type") ? "type" : "category");
      if (!types.empty() && !types.count(item.reference.category)) return true;
      // "image": a path or a list of them (a tag each); "video": a list of frames (one tag).
      auto file = [&](const Json& v, const char* what) {
        if (!v.is_string() || v.get<std::string>().empty())
          throw Error(std::string("\"") + what + "\" must be a path or a list of paths");
        const fs::path p =
            image_under_root(task.image_root, v.get<std::string>(), false, "the task's image_root");
        if (!fs::is_regular_file(p)) throw Error("image not found: " + p.string());
        return p;
      };
      if (rec.contains("video") && !rec["video"].is_null()) {
        if (!rec["video"].is_array() || rec["video"].empty())
          throw Error("\"video\" must be a list of frame files (eval reads frames, not clips)");
        std::vector<fs::path> frames;
        for (const auto& f : rec["video"]) frames.push_back(file(f, "video"));
        item.visuals.push_back(std::move(frames));
        item.video.push_back(true);
      } else if (rec.contains("image") && rec["image"].is_array()) {
        for (const auto& f : rec["image"]) item.visuals.push_back({file(f, "image")});
        item.video.assign(item.visuals.size(), false);
      } else if (!string_field(rec, "image").empty()) {
        item.visuals.push_back({file(rec["image"], "image")});
        item.video.push_back(false);
      }
      size_t tags = 0;
      for (size_t at = 0; (at = item.prompt.find("<image>", at)) != std::string::npos; at += 7)
        ++tags;
      if (!item.visuals.empty()) {
        item.image = item.visuals.front().front();
        // One image: its tag first, added when the question has none (as LLaVA's model_vqa
        // prepends it to every question).
        if (item.visuals.size() == 1) {
          item.prompt =
              tags == 0 ? "<image>\n" + item.prompt : move_image_to_front(item.prompt, "<image>");
          tags = 1;
        }
        if (item.reference.group.empty())
          item.reference.group =
              rec["image"].is_string() ? rec["image"].get<std::string>() : item.image.string();
        if (tags != item.visuals.size())
          throw Error("the prompt has " + std::to_string(tags) + " <image> tags for " +
                      std::to_string(item.visuals.size()) + " images (a video counts as one)");
      } else if (tags > 0) {
        throw Error("the prompt has <image> but the record has no \"image\"");
      }
      items.push_back(std::move(item));
    } catch (const Error& e) {
      const std::string id = id_of(rec);
      throw Error(where + (id.empty() ? "" : " (id \"" + id + "\")") + ": " + e.what());
    }
    return task.max_samples <= 0 || static_cast<int64_t>(items.size()) < task.max_samples;
  });
  if (items.empty())
    throw Error(task.path + ": no records for eval task '" + task.name + "'" +
                (types.empty() ? "" : " of the types it keeps"));
  return items;
}

namespace {

// The rendered prompt's ids, the i-th <image> expanded to tokens_of(i) placeholder ids.
std::vector<int64_t> expand_prompt(const Tokenizer& tok, const std::string& template_name,
                                   const std::string& human,
                                   const std::function<int64_t(size_t)>& tokens_of,
                                   const std::optional<std::string>& system) {
  const std::string text = render_template(template_name, {{"human", human}},
                                           template_tokens(tok, template_name, system))
                               .text;
  std::vector<int64_t> ids;
  size_t tag = 0;
  for (int64_t id : tok.encode(text)) {
    if (id == tok.image_id())
      ids.insert(ids.end(), static_cast<size_t>(tokens_of(tag++)), id);
    else
      ids.push_back(id);
  }
  return ids;
}

}  // namespace

std::vector<int64_t> prompt_ids(const Tokenizer& tok, const std::string& template_name,
                                const std::string& human, const std::vector<int64_t>& image_tokens,
                                const std::optional<std::string>& system) {
  return expand_prompt(
      tok, template_name, human,
      [&](size_t tag) {
        if (tag >= image_tokens.size())
          throw Error("[prompt] more <image> tags than images (" +
                      std::to_string(image_tokens.size()) + ")");
        return image_tokens[tag];
      },
      system);
}

std::vector<int64_t> prompt_ids(const Tokenizer& tok, const std::string& template_name,
                                const std::string& human, int64_t image_tokens,
                                const std::optional<std::string>& system) {
  return expand_prompt(
      tok, template_name, human, [&](size_t) { return image_tokens; }, system);
}

PromptImage load_prompt_image(const MultimodalModelImpl& model, const ImageTransform& transform,
                              const std::filesystem::path& path, bool base_resolution) {
  PromptImage p;
  const ImageTokens counts = model.image_token_counts();
  if (counts.anyres() && !base_resolution) {
    p.size = image_file_size(path);
    p.crops = transform.load_anyres(path, p.size);
  } else {
    p.crops = transform.load(path).unsqueeze(0);
  }
  p.tokens = p.size.first > 0 ? counts.of_image(p.size) : counts.per_image;
  return p;
}

ImageBatch prompt_image_batch(const std::vector<PromptImage>& images) {
  if (images.empty()) return {};
  std::vector<torch::Tensor> crops;
  std::vector<int64_t> sizes;
  for (const auto& p : images) {
    crops.push_back(p.crops);
    sizes.insert(sizes.end(), {p.size.first, p.size.second});
  }
  ImageBatch b(torch::cat(crops));
  if (std::any_of(sizes.begin(), sizes.end(), [](int64_t x) { return x > 0; }))
    b.layout.sizes = torch::tensor(sizes, torch::kLong).view({-1, 2});
  return b;
}

FolderModel load_folder_model(const std::filesystem::path& folder) {
  auto tokenizer = load_tokenizer(folder / "tokenizer.json");
  MultimodalModel model = load_llava_folder(folder);
  ImageConfig image;
  read_preprocessor_config_json(folder, image);
  ImageTransform transform(image, model->config().vision.image_size, model->anyres_pinpoints());
  std::string name = model_template(folder, model->config());
  auto system = model_system(folder);
  return {std::move(model), std::move(tokenizer), std::move(transform), std::move(name),
          std::move(system)};
}

GenerationOptions generation_options(const GenerationConfig& g, const Tokenizer& tok) {
  GenerationOptions o;
  o.max_new_tokens = g.max_new_tokens;
  o.sample = g.temperature > 0;
  o.temperature = o.sample ? g.temperature : 1.0;
  o.top_k = g.top_k;
  o.top_p = g.top_p;
  o.seed = static_cast<uint64_t>(g.seed);
  o.stop_strings = g.stop;
  o.pad_id = tok.pad_id() >= 0 ? tok.pad_id() : 0;
  o.vocab_limit = tok.vocab_size();
  if (tok.eos_id() >= 0) o.stop_ids.push_back(tok.eos_id());
  if (auto im_end = tok.token_to_id("<|im_end|>")) o.stop_ids.push_back(*im_end);
  return o;
}

namespace {

// The answers of other items of the same type (else of the task), one drawn per item.
std::vector<Prediction> chance_predictions(const std::vector<EvalItem>& items, uint64_t seed) {
  std::map<std::string, std::vector<size_t>> by_type;
  for (size_t i = 0; i < items.size(); ++i) by_type[items[i].reference.category].push_back(i);
  std::vector<size_t> all(items.size());
  for (size_t i = 0; i < items.size(); ++i) all[i] = i;
  Rng rng(seed ^ 0x636861'6e6365ULL);
  std::vector<Prediction> out;
  for (size_t i = 0; i < items.size(); ++i) {
    const auto& same = by_type[items[i].reference.category];
    const auto& pool = same.size() > 1 ? same : all;
    size_t j = i;
    while (j == i) j = pool[static_cast<size_t>(rng.uniform_int(0, pool.size() - 1))];
    out.push_back({items[i].id, items[j].reference.answers.front()});
  }
  return out;
}

}  // namespace

std::vector<Prediction> prior_predictions(const std::vector<EvalItem>& items) {
  std::map<std::string, std::map<std::string, int64_t>> counts;  // type -> answer -> items
  for (const auto& item : items) ++counts[item.reference.category][item.reference.answers.front()];
  std::map<std::string, std::string> most;  // type -> its most frequent answer
  for (const auto& [type, answers] : counts) {
    int64_t best = 0;
    for (const auto& [answer, n] : answers)  // in sorted order: a tie keeps the first
      if (n > best) best = n, most[type] = answer;
  }
  std::vector<Prediction> out;
  for (const auto& item : items) out.push_back({item.id, most[item.reference.category]});
  return out;
}

TaskResult run_task(const EvalTaskConfig& task, const EvalModel& m, int64_t batch_size, bool chance,
                    uint64_t seed) {
  const auto start = std::chrono::steady_clock::now();
  TaskResult r;
  r.name = task.name;
  r.template_name = task.template_name.empty() ? m.default_template : task.template_name;
  r.items = load_eval_items(task);
  r.n = static_cast<int64_t>(r.items.size());
  const bool use_images = template_uses_images(r.template_name);
  const Tokenizer& tok = m.tokenizer;
  if (use_images && tok.image_id() < 0)
    throw Error(tok.path().string() + ": the tokenizer has no <image> token (eval task '" +
                task.name + "' uses images)");
  const GenerationOptions options = generation_options(task.generation, tok);
  const auto decode = [&](const std::vector<int64_t>& t) { return tok.decode(t); };
  Progress progress("eval " + task.name, r.n, "items");
  for (size_t b = 0; b < r.items.size(); b += static_cast<size_t>(batch_size)) {
    progress.update(static_cast<int64_t>(b));
    const size_t e = std::min(r.items.size(), b + static_cast<size_t>(batch_size));
    std::vector<std::vector<int64_t>> prompts;
    std::vector<PromptImage> images;
    for (size_t i = b; i < e; ++i) {
      const EvalItem& item = r.items[i];
      const bool with_image = use_images && !item.visuals.empty();
      std::string human = item.prompt;
      if (!with_image) {  // the text template (or no image): the question alone
        for (size_t at; (at = human.find("<image>")) != std::string::npos;) human.erase(at, 7);
        human = trim(human);
      }
      std::vector<int64_t> tag_tokens;  // per <image> tag: its images' tokens
      if (with_image) {
        for (size_t v = 0; v < item.visuals.size(); ++v) {
          int64_t n = 0;
          for (const auto& f : item.visuals[v]) {
            images.push_back(
                load_prompt_image(m.model, m.transform, f, task.base_resolution || item.video[v]));
            n += images.back().tokens;
          }
          tag_tokens.push_back(n);
        }
      }
      prompts.push_back(prompt_ids(tok, r.template_name, human, tag_tokens,
                                   task.template_name.empty() ? m.system : std::nullopt));
    }
    const ImageBatch pixels = prompt_image_batch(images);
    const auto g = generate(m.model, prompts, pixels, options, decode);
    for (size_t i = b; i < e; ++i) {
      std::string text = decode(g.tokens[i - b]);
      for (const auto& s : options.stop_strings) {
        const auto at = text.find(s);
        if (at != std::string::npos) text.resize(at);
      }
      r.predictions.push_back({r.items[i].id, trim(text)});
    }
  }
  progress.finish();
  std::vector<Reference> refs;
  for (const auto& item : r.items) refs.push_back(item.reference);
  const bool baselines = chance && r.items.size() > 1;
  const auto guesses = baselines ? chance_predictions(r.items, seed) : std::vector<Prediction>();
  const auto prior = baselines ? prior_predictions(r.items) : std::vector<Prediction>();
  for (const auto& metric : task.metrics) {
    r.scores[metric] = score(metric, r.predictions, refs);
    if (!guesses.empty()) r.chance[metric] = score(metric, guesses, refs);
    if (!prior.empty()) r.prior[metric] = score(metric, prior, refs);
  }
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return r;
}

std::vector<TaskResult> run_eval(const EvalConfig& config, const EvalModel& m, uint64_t seed) {
  std::vector<TaskResult> out;
  for (const auto& task : config.tasks) {
    out.push_back(run_task(task, m, config.batch_size, config.chance, seed));
    spdlog::info("eval task {}: {} items in {:.1f}s", task.name, out.back().n, out.back().seconds);
  }
  return out;
}

Json results_json(const std::vector<TaskResult>& results) {
  Json tasks = Json::object();
  for (const auto& r : results)
    tasks[r.name] = {{"n", r.n},           {"template", r.template_name}, {"seconds", r.seconds},
                     {"scores", r.scores}, {"chance", r.chance},          {"prior", r.prior}};
  return {{"tasks", tasks}};
}

namespace {

// The numeric entries of one metric's result (not its count), in the order score() wrote them.
std::vector<std::pair<std::string, double>> numbers(const Json& j) {
  std::vector<std::pair<std::string, double>> out;
  for (const auto& [k, v] : j.items())
    if (v.is_number() && k != "n" && k.rfind("n_", 0) != 0) out.emplace_back(k, v.get<double>());
  return out;
}

const Json* find_path(const Json& j, const std::string& a, const std::string& b = "") {
  if (!j.is_object() || !j.contains(a)) return nullptr;
  if (b.empty()) return &j[a];
  if (!j[a].is_object() || !j[a].contains("by_category") || !j[a]["by_category"].contains(b))
    return nullptr;
  return &j[a]["by_category"][b];
}

std::string fixed(double x) {
  return fmt::format("{:.4f}", x);
}

}  // namespace

std::string results_markdown(const std::vector<TaskResult>& results) {
  std::string md =
      "| task | type | n | score | value | chance | prior |\n|---|---|---:|---|---:|---:|---:|\n";
  for (const auto& r : results) {
    for (const auto& [metric, result] : r.scores.items()) {
      auto row = [&](const std::string& type, const Json& j, const Json* c, const Json* p,
                     int64_t n) {
        auto cell = [](const Json* b, const std::string& k) {
          return b && b->contains(k) && (*b)[k].is_number() ? fixed((*b)[k].get<double>())
                                                            : std::string();
        };
        for (const auto& [k, v] : numbers(j))
          md += "| " + r.name + " | " + type + " | " + std::to_string(n) + " | " + metric + " " +
                k + " | " + fixed(v) + " | " + cell(c, k) + " | " + cell(p, k) + " |\n";
      };
      row("all", result, find_path(r.chance, metric), find_path(r.prior, metric),
          result.value("n", r.n));
      if (result.contains("by_category"))
        for (const auto& [cat, sub] : result["by_category"].items())
          row(cat, sub, find_path(r.chance, metric, cat), find_path(r.prior, metric, cat),
              sub.value("n", int64_t{0}));
    }
  }
  return md;
}

std::map<std::string, double> flat_scores(const std::vector<TaskResult>& results) {
  std::map<std::string, double> out;
  for (const auto& r : results)
    for (const auto& [metric, result] : r.scores.items()) {
      (void)metric;
      for (const auto& [k, v] : numbers(result)) out["eval/" + r.name + "/" + k] = v;
      if (result.contains("by_category"))
        for (const auto& [cat, sub] : result["by_category"].items())
          for (const auto& [k, v] : numbers(sub)) out["eval/" + r.name + "/" + cat + "/" + k] = v;
    }
  return out;
}

std::string compare_markdown(const std::vector<std::pair<std::string, Json>>& labelled) {
  // Rows in first-seen order: (task, type, metric, key).
  std::vector<std::array<std::string, 4>> rows;
  std::set<std::array<std::string, 4>> seen;
  auto value = [](const Json& results, const std::array<std::string, 4>& row,
                  const char* which) -> std::optional<double> {
    const Json& tasks = results["tasks"];
    if (!tasks.contains(row[0]) || !tasks[row[0]].contains(which)) return std::nullopt;
    const Json* j = find_path(tasks[row[0]][which], row[2], row[1] == "all" ? "" : row[1]);
    if (!j || !j->contains(row[3]) || !(*j)[row[3]].is_number()) return std::nullopt;
    return (*j)[row[3]].get<double>();
  };
  for (const auto& [label, results] : labelled) {
    (void)label;
    if (!results.contains("tasks") || !results["tasks"].is_object()) continue;
    for (const auto& [task, t] : results["tasks"].items()) {
      if (!t.contains("scores") || !t["scores"].is_object()) continue;
      for (const auto& [metric, result] : t["scores"].items()) {
        auto add = [&](const std::string& type, const Json& j) {
          for (const auto& [k, v] : numbers(j)) {
            (void)v;
            std::array<std::string, 4> row = {task, type, metric, k};
            if (seen.insert(row).second) rows.push_back(row);
          }
        };
        add("all", result);
        if (result.contains("by_category"))
          for (const auto& [cat, sub] : result["by_category"].items()) add(cat, sub);
      }
    }
  }
  std::string md = "| task | type | score |";
  std::string rule = "|---|---|---|";
  for (const auto& [label, results] : labelled) {
    (void)results;
    md += " " + label + " |";
    rule += "---:|";
  }
  md += " chance |\n" + rule + "---:|\n";
  for (const auto& row : rows) {
    md += "| " + row[0] + " | " + row[1] + " | " + row[2] + " " + row[3] + " |";
    std::optional<double> chance;
    for (const auto& [label, results] : labelled) {
      (void)label;
      const auto v = value(results, row, "scores");
      md += " " + (v ? fixed(*v) : std::string("-")) + " |";
      if (!chance) chance = value(results, row, "chance");
    }
    md += " " + (chance ? fixed(*chance) : std::string("-")) + " |\n";
  }
  return md;
}

void write_results(const fs::path& dir, const std::vector<TaskResult>& results, const Json& extra) {
  fs::create_directories(dir / "predictions");
  Json j = results_json(results);
  for (const auto& [k, v] : extra.items()) j[k] = v;
  write_file_atomic(dir / "results.json", j.dump(2) + "\n");
  write_file_atomic(dir / "results.md", results_markdown(results));
  for (const auto& r : results) {
    std::string lines;
    for (size_t i = 0; i < r.predictions.size(); ++i) {
      Json line = {{"id", r.predictions[i].id},
                   {"text", r.predictions[i].text},
                   {"answers", r.items[i].reference.answers}};
      if (!r.items[i].reference.category.empty()) line["type"] = r.items[i].reference.category;
      if (!r.items[i].image.empty()) line["image"] = r.items[i].image.string();
      line["prompt"] = r.items[i].prompt;
      lines += line.dump() + "\n";
    }
    write_file_atomic(dir / "predictions" / (r.name + ".jsonl"), lines);
  }
}

}  // namespace mllm::eval
