// See formats.h. The layouts' conventions: LLaMA-Factory's data/README.md (sharegpt, its
// dataset_info.json defaults: columns messages=conversations, system, images, videos; tags
// from/value, human/gpt/system), ms-swift's custom dataset docs and TRL's dataset formats
// (messages with role/content, TRL's prompt/chosen/rejected).
#include "data/formats.h"

#include "core/error.h"
#include "core/fs.h"

namespace mllm {

namespace {

using Json = nlohmann::json;

const char* kImage = "<image>";
const char* kVideo = "<video>";

std::string replace_all(std::string s, const std::string& from, const std::string& to) {
  for (size_t p = 0; (p = s.find(from, p)) != std::string::npos; p += to.size())
    s.replace(p, from.size(), to);
  return s;
}

// The project's role names for a turn's role: human, gpt, system.
std::string llava_role(const std::string& role) {
  if (role == "human" || role == "user") return "human";
  if (role == "gpt" || role == "assistant") return "gpt";
  if (role == "system") return "system";
  throw Error("role '" + role +
              "' is not supported (system, user/human and assistant/gpt turns are; tool calls "
              "and observations are not)");
}

struct Turn {
  std::string role;  // human | gpt | system
  std::string text;
};

// A turn of any layout: {"from", "value"} or {"role", "content"}.
Turn read_turn(const Json& t) {
  if (!t.is_object()) throw Error("a turn must be a JSON object");
  const char* role_key = t.contains("from") ? "from" : "role";
  const char* text_key = t.contains("value") ? "value" : "content";
  if (!t.contains(role_key) || !t[role_key].is_string())
    throw Error("each turn needs a string \"from\" (or \"role\")");
  if (!t.contains(text_key)) throw Error("each turn needs \"value\" (or \"content\")");
  return {llava_role(t[role_key].get<std::string>()), content_text(t[text_key], kImage)};
}

std::vector<Turn> read_turns(const Json& list, const char* field) {
  if (!list.is_array()) throw Error(std::string("\"") + field + "\" must be a list of turns");
  std::vector<Turn> turns;
  for (const auto& t : list) turns.push_back(read_turn(t));
  for (size_t i = 1; i < turns.size(); ++i)
    if (turns[i].role == "system") throw Error("a system turn must come first");
  return turns;
}

// A preference side: a reply string, one message, or a list holding one assistant message.
std::string read_reply(const Json& v, const char* field) {
  if (v.is_string()) return v.get<std::string>();
  const Json* m = &v;
  if (v.is_array()) {
    if (v.size() != 1)
      throw Error(std::string("\"") + field + "\" must hold one reply (got " +
                  std::to_string(v.size()) + " messages)");
    m = &v[0];
  }
  const Turn t = read_turn(*m);
  if (t.role != "gpt") throw Error(std::string("\"") + field + "\" must be an assistant reply");
  return t.text;
}

Json llava_turns(const std::vector<Turn>& turns) {
  Json out = Json::array();
  for (const auto& t : turns) out.push_back({{"from", t.role}, {"value", t.text}});
  return out;
}

// The record's images as a list of paths, from "image" (a path or a list) or "images".
std::vector<Json> image_list(const Json& rec) {
  std::vector<Json> out;
  for (const char* k : {"image", "images"}) {
    if (!rec.contains(k) || rec[k].is_null()) continue;
    const Json& v = rec[k];
    if (v.is_array()) {
      for (const auto& x : v) out.push_back(x);
    } else {
      out.push_back(v);
    }
  }
  for (const auto& x : out)
    if (!x.is_string()) throw Error("image paths must be strings");
  return out;
}

// Sets the llava fields "image" (one path, or a list) and "video" from image and video lists.
void put_llava_visuals(Json& out, const std::vector<Json>& images, const Json& videos) {
  if (images.size() == 1) out["image"] = images[0];
  if (images.size() > 1) out["image"] = images;
  if (videos.is_null()) return;
  if (!videos.is_array()) throw Error("\"videos\" must be a list");
  if (videos.size() > 1) throw Error("several videos in one record are not supported");
  if (videos.size() == 1) out["video"] = videos[0];
}

void with_id(Json& out, const Json& rec) {
  if (rec.contains("id")) out["id"] = rec["id"];
}

// sharegpt / messages -> llava.
Json to_llava(const std::string& layout, const Json& rec, bool preference) {
  Json out = Json::object();
  with_id(out, rec);
  const Json videos = rec.contains("videos") ? rec["videos"] : Json();
  put_llava_visuals(out, image_list(rec), videos);
  const bool has_video = out.contains("video");
  const auto finish = [&](std::vector<Turn> turns) {
    if (layout == "sharegpt" && rec.contains("system") && !rec["system"].is_null()) {
      if (!rec["system"].is_string()) throw Error("\"system\" must be a string");
      if (!rec["system"].get<std::string>().empty() && (turns.empty() || turns[0].role != "system"))
        turns.insert(turns.begin(), Turn{"system", rec["system"].get<std::string>()});
    }
    if (has_video)
      for (auto& t : turns) t.text = replace_all(t.text, kVideo, kImage);
    out["conversations"] = llava_turns(turns);
  };
  if (!preference) {
    const char* field =
        rec.contains("conversations") && layout == "sharegpt" ? "conversations" : "messages";
    if (!rec.contains(field)) throw Error(std::string("missing \"") + field + "\" list");
    finish(read_turns(rec[field], field));
    return out;
  }
  std::vector<Turn> prompt;
  std::string chosen, rejected;
  if (layout == "messages" && rec.contains("rejected_response")) {
    // ms-swift: the conversation with the chosen reply last.
    std::vector<Turn> all = read_turns(rec.value("messages", Json()), "messages");
    if (all.empty() || all.back().role != "gpt")
      throw Error("\"messages\" must end with the chosen assistant reply");
    chosen = all.back().text;
    all.pop_back();
    prompt = std::move(all);
    if (!rec["rejected_response"].is_string())
      throw Error("\"rejected_response\" must be a string");
    rejected = rec["rejected_response"].get<std::string>();
  } else {
    if (!rec.contains("chosen") || !rec.contains("rejected"))
      throw Error("a preference record needs \"chosen\" and \"rejected\"");
    const Json& c = rec["chosen"];
    const Json& r = rec["rejected"];
    if (layout == "messages" && !rec.contains("prompt") && c.is_array() && c.size() > 1) {
      // TRL's implicit prompt: whole conversations that share all but their last message.
      std::vector<Turn> x = read_turns(c, "chosen"), y = read_turns(r, "rejected");
      bool same = x.size() == y.size();
      for (size_t i = 0; same && i + 1 < x.size(); ++i)
        same = x[i].role == y[i].role && x[i].text == y[i].text;
      if (!same || x.back().role != "gpt" || y.back().role != "gpt")
        throw Error(
            "\"chosen\" and \"rejected\" must share the prompt and differ in the last "
            "assistant reply");
      chosen = x.back().text;
      rejected = y.back().text;
      x.pop_back();
      prompt = std::move(x);
    } else {
      if (rec.contains("prompt")) {
        const Json& p = rec["prompt"];
        prompt = p.is_string() ? std::vector<Turn>{{"human", p.get<std::string>()}}
                               : read_turns(p, "prompt");
      } else {
        const char* field = rec.contains("conversations") ? "conversations" : "messages";
        if (!rec.contains(field)) throw Error(std::string("missing \"") + field + "\" list");
        prompt = read_turns(rec[field], field);
      }
      chosen = read_reply(c, "chosen");
      rejected = read_reply(r, "rejected");
    }
  }
  if (prompt.empty() || prompt.back().role != "human")
    throw Error("a preference prompt must end with a user turn");
  finish(std::move(prompt));
  out["chosen"] = chosen;
  out["rejected"] = rejected;
  return out;
}

// llava -> sharegpt / messages.
Json from_llava(const std::string& layout, const Json& rec, bool preference) {
  std::vector<Turn> turns;
  std::string chosen, rejected;
  if (preference) {
    if (rec.contains("prompt")) {
      const Json& p = rec["prompt"];
      turns = p.is_string() ? std::vector<Turn>{{"human", p.get<std::string>()}}
                            : read_turns(p, "prompt");
    } else if (rec.contains("conversations")) {
      turns = read_turns(rec["conversations"], "conversations");
    }
    if (!rec.contains("chosen") || !rec.contains("rejected"))
      throw Error("a preference record needs \"chosen\" and \"rejected\"");
    chosen = read_reply(rec["chosen"], "chosen");
    rejected = read_reply(rec["rejected"], "rejected");
  } else {
    if (!rec.contains("conversations")) throw Error("missing \"conversations\" list");
    turns = read_turns(rec["conversations"], "conversations");
  }
  const std::vector<Json> images = image_list(rec);
  const bool has_video = rec.contains("video") && !rec["video"].is_null();
  if (has_video)
    for (auto& t : turns) t.text = replace_all(t.text, kImage, kVideo);
  Json out = Json::object();
  with_id(out, rec);
  if (layout == "sharegpt") {
    Json conv = Json::array();
    for (const auto& t : turns) {
      if (t.role == "system") {
        out["system"] = t.text;
        continue;
      }
      conv.push_back({{"from", t.role}, {"value", t.text}});
    }
    out["conversations"] = conv;
    if (preference) {
      out["chosen"] = {{"from", "gpt"}, {"value", chosen}};
      out["rejected"] = {{"from", "gpt"}, {"value", rejected}};
    }
  } else {
    Json messages = Json::array();
    for (const auto& t : turns)
      messages.push_back({{"role", t.role == "human" ? "user"
                                   : t.role == "gpt" ? "assistant"
                                                     : "system"},
                          {"content", t.text}});
    if (preference) {
      out["prompt"] = messages;
      out["chosen"] = Json::array({{{"role", "assistant"}, {"content", chosen}}});
      out["rejected"] = Json::array({{{"role", "assistant"}, {"content", rejected}}});
    } else {
      out["messages"] = messages;
    }
  }
  if (!images.empty()) out["images"] = images;
  if (has_video) out["videos"] = Json::array({rec["video"]});
  return out;
}

}  // namespace

const std::vector<std::string>& record_layouts() {
  static const std::vector<std::string> names = {"llava", "sharegpt", "messages"};
  return names;
}

std::string layout_of_format(const std::string& format) {
  if (format.rfind("sharegpt", 0) == 0) return "sharegpt";
  if (format.rfind("messages", 0) == 0) return "messages";
  return "llava";
}

std::string content_text(const Json& c, const std::string& image_tag) {
  if (c.is_string()) return c.get<std::string>();
  if (!c.is_array()) throw Error("a turn's content must be a string or a list of parts");
  std::string out;
  for (const auto& part : c) {
    const std::string type = part.is_object() ? part.value("type", "") : "";
    if (type == "image") {
      out += image_tag + "\n";
    } else if (type == "text" && part.contains("text") && part["text"].is_string()) {
      out += part["text"].get<std::string>();
    } else {
      throw Error("a content part must be {\"type\": \"image\"} or {\"type\": \"text\", \"text\"}");
    }
  }
  return out;
}

// A sharegpt record with dataset_info.json's names, renamed to LLaMA-Factory's defaults.
Json with_default_names(const Json& rec, const SharegptNames& n) {
  Json out = Json::object();
  if (rec.contains("id")) out["id"] = rec["id"];
  const auto turn = [&](const Json& t) {
    if (!t.is_object() || !t.contains(n.role_tag) || !t[n.role_tag].is_string())
      throw Error("each turn needs a string \"" + n.role_tag + "\" (dataset_info.json role_tag)");
    if (!t.contains(n.content_tag))
      throw Error("each turn needs \"" + n.content_tag + "\" (dataset_info.json content_tag)");
    const std::string role = t[n.role_tag].get<std::string>();
    const std::string mapped = role == n.user_tag        ? "human"
                               : role == n.assistant_tag ? "gpt"
                               : role == n.system_tag    ? "system"
                                                         : role;
    return Json{{"from", mapped}, {"value", t[n.content_tag]}};
  };
  if (rec.contains(n.messages)) {
    if (!rec[n.messages].is_array()) throw Error("\"" + n.messages + "\" must be a list of turns");
    Json turns = Json::array();
    for (const auto& t : rec[n.messages]) turns.push_back(turn(t));
    out["conversations"] = turns;
  }
  const std::pair<const std::string*, const char*> columns[] = {
      {&n.system, "system"}, {&n.images, "images"}, {&n.videos, "videos"}};
  for (const auto& [from, to] : columns)
    if (rec.contains(*from)) out[to] = rec[*from];
  for (const auto& [from, to] :
       {std::pair{&n.chosen, "chosen"}, std::pair{&n.rejected, "rejected"}})
    if (rec.contains(*from)) out[to] = rec[*from].is_object() ? turn(rec[*from]) : rec[*from];
  return out;
}

SharegptNames sharegpt_names(const std::filesystem::path& data_file) {
  SharegptNames n;
  const auto info_path = data_file.parent_path() / "dataset_info.json";
  std::error_code ec;
  if (!std::filesystem::is_regular_file(info_path, ec)) return n;
  Json info;
  try {
    info = Json::parse(read_file(info_path));
  } catch (const Json::exception& e) {
    throw Error(info_path.string() + ": not valid JSON (" + json_error_message(e) + ")");
  }
  if (!info.is_object()) throw Error(info_path.string() + ": not a JSON object");
  for (auto it = info.begin(); it != info.end(); ++it) {
    // (named copies: C++17 lambdas cannot capture structured bindings)
    const std::string name = it.key();
    const Json& entry = it.value();
    if (!entry.is_object() || !entry.contains("file_name") ||
        entry["file_name"] != data_file.filename().string())
      continue;
    const auto read = [&](const char* section, const char* key, std::string& into) {
      if (!entry.contains(section)) return;
      const Json& s = entry[section];
      if (!s.is_object())
        throw Error(info_path.string() + ": " + name + "." + section + " must be an object");
      if (!s.contains(key)) return;
      if (!s[key].is_string())
        throw Error(info_path.string() + ": " + name + "." + section + "." + key +
                    " must be a string");
      into = s[key].get<std::string>();
    };
    read("columns", "messages", n.messages);
    read("columns", "system", n.system);
    read("columns", "images", n.images);
    read("columns", "videos", n.videos);
    read("columns", "chosen", n.chosen);
    read("columns", "rejected", n.rejected);
    read("tags", "role_tag", n.role_tag);
    read("tags", "content_tag", n.content_tag);
    read("tags", "user_tag", n.user_tag);
    read("tags", "assistant_tag", n.assistant_tag);
    read("tags", "system_tag", n.system_tag);
    n.from_dataset_info = true;
    return n;
  }
  return n;
}

Json to_llava_record(const std::string& layout, const Json& rec, bool preference,
                     const SharegptNames& names) {
  if (!rec.is_object()) throw Error("a record must be a JSON object");
  if (layout == "llava") return rec;
  if (layout != "sharegpt" && layout != "messages")
    throw Error("unknown layout '" + layout + "' (llava, sharegpt, messages)");
  if (layout == "sharegpt" && names.from_dataset_info)
    return to_llava(layout, with_default_names(rec, names), preference);
  return to_llava(layout, rec, preference);
}

Json from_llava_record(const std::string& layout, const Json& rec, bool preference) {
  if (!rec.is_object()) throw Error("a record must be a JSON object");
  if (layout == "llava") return rec;
  if (layout != "sharegpt" && layout != "messages")
    throw Error("unknown layout '" + layout + "' (llava, sharegpt, messages)");
  return from_llava(layout, rec, preference);
}

}  // namespace mllm
