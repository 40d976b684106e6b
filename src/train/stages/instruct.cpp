// Stage 2, instruction tuning: multi-turn conversations, the next-token loss on the assistant
// turns only (the template marks them; data/chat_template.h).
#include "train/stage.h"

namespace mllm {

Stage instruct_stage() {
  Stage s;
  s.name = "instruct";
  s.summary = "next-token loss on the assistant turns of conversations";
  s.data = StageData::conversations;
  s.packs = true;
  s.formats = {"llava_json",     "llava_jsonl", "sharegpt",
               "sharegpt_jsonl", "messages",    "messages_jsonl"};
  s.objective = [](const TrainConfig&, MultimodalModel) { return make_lm_objective(); };
  return s;
}

}  // namespace mllm
