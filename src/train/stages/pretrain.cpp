// Stage 1, alignment pretraining (LLaVA's feature alignment): image-caption pairs, the
// next-token loss on the caption; the recipe trains the connector only (train.trainable).
#include "train/stage.h"

namespace mllm {

Stage pretrain_stage() {
  Stage s;
  s.name = "pretrain";
  s.summary = "next-token loss on the captions of image-caption pairs";
  s.data = StageData::conversations;
  s.packs = true;
  s.formats = {"llava_json",     "llava_jsonl", "sharegpt",
               "sharegpt_jsonl", "messages",    "messages_jsonl"};
  s.objective = [](const TrainConfig&, MultimodalModel) { return make_lm_objective(); };
  return s;
}

}  // namespace mllm
