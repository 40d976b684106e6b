// Other frameworks' dataset layouts, read directly (data.*.format: sharegpt | messages, and their
// _jsonl forms) and converted (`mllm data convert`). A record of another layout is brought to the
// project's own (llava: LLaVA's JSON, data/datasets.h) before it is read, and back on export:
//
//   sharegpt  LLaMA-Factory's sharegpt layout with its dataset_info.json defaults:
//             {"conversations": [{"from": "human"|"gpt"|"system", "value": ...}, ...],
//              "system": "...", "images": ["a.jpg"], "videos": ["clip.mp4"]}
//             (turns may also be {"role": "user"|"assistant"|"system", "content"}, and the list
//             "messages", as LLaMA-Factory's mllm_demo.json has them); <image> / <video> tags in
//             the text. Preference records (its "ranking" datasets): the conversation up to the
//             question, "chosen" and "rejected" as {"from": "gpt", "value"} (or strings).
//   messages  the OpenAI-style layout of ms-swift and HF TRL:
//             {"messages": [{"role": "system"|"user"|"assistant", "content": ...}],
//              "images": [...], "videos": [...]}; content a string (with <image> tags, ms-swift)
//             or TRL's list of {"type": "image"} / {"type": "text", "text"} parts. Preference
//             records: TRL's {"prompt": [...], "chosen": [...], "rejected": [...]} (or without
//             "prompt": whole conversations sharing all but their last message), or ms-swift's
//             {"messages": [... the chosen reply last], "rejected_response": "..."}.
//
// Roles other than system/user/assistant (tool calls, observations) are refused with their name.
// A video's tag is <video> in both layouts and <image> in the project's (one tag per clip).
// No LibTorch here.
#pragma once

#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace mllm {

// A sharegpt dataset's column and tag names, as LLaMA-Factory's dataset_info.json gives them
// ("columns": messages, system, images, videos, chosen, rejected; "tags": role_tag, content_tag,
// user_tag, assistant_tag, system_tag); the defaults are its own.
struct SharegptNames {
  std::string messages = "conversations", system = "system", images = "images", videos = "videos",
              chosen = "chosen", rejected = "rejected";
  std::string role_tag = "from", content_tag = "value", user_tag = "human", assistant_tag = "gpt",
              system_tag = "system";
  bool from_dataset_info = false;  // read from a dataset_info.json entry
};

// The names for `data_file` from the dataset_info.json beside it (the entry whose "file_name" is
// the file's name), else the defaults. A malformed dataset_info.json is an Error naming it.
SharegptNames sharegpt_names(const std::filesystem::path& data_file);

// The layouts `mllm data convert` reads and writes: llava, sharegpt, messages.
const std::vector<std::string>& record_layouts();

// The layout a data.*.format reads ("sharegpt_jsonl" -> "sharegpt"; llava_json and
// preference_json -> "llava").
std::string layout_of_format(const std::string& format);

// A record of `layout` as the project's llava layout: "conversations" of {"from", "value"}
// (human / gpt / a leading system turn), "image" (a path or a list), "video", "id"; a preference
// record has the conversation up to the question and "chosen" / "rejected" reply strings.
// Throws Error with a short reason (the caller names the file and record).
nlohmann::json to_llava_record(const std::string& layout, const nlohmann::json& rec,
                               bool preference, const SharegptNames& names = {});

// A llava-layout record (conversation or preference) as `layout`.
nlohmann::json from_llava_record(const std::string& layout, const nlohmann::json& rec,
                                 bool preference);

// Text of a message's content: a string, or TRL's list of {"type": "image"|"text"} parts (each
// image part becomes `image_tag` + "\n").
std::string content_text(const nlohmann::json& content, const std::string& image_tag);

}  // namespace mllm
