// Reference encodings from Hugging Face's own tokenizers library (its Node binding, tokenizers@0.23.2,
// installed by scripts/fetch-tokenizers). Used by tests/data/test_tokenizer_parity.cpp.
//   node scripts/tokenizer_reference.mjs TOKENIZER_JSON CORPUS_JSON [--bench]
// CORPUS_JSON is a JSON array of strings. Prints [{"ids": [...], "decoded": "...",
// "decoded_skip": "..."}] (decoded with skip_special_tokens false / true). No special tokens are
// added (addSpecialTokens: false), as mllm's Tokenizer::encode does. With --bench, prints
// {"tokens": N, "seconds": S} for encoding the whole corpus instead.
import { createRequire } from "module";
import fs from "fs";
import path from "path";

const cache = process.env.MLLM_CACHE || path.join(process.env.HOME || "", ".cache", "mllm");
const require = createRequire(path.join(cache, "npm", "node_modules", "_"));
const { Tokenizer } = require("tokenizers");

const [tokPath, corpusPath, flag] = process.argv.slice(2);
if (!tokPath || !corpusPath) {
  console.error("usage: tokenizer_reference.mjs TOKENIZER_JSON CORPUS_JSON [--bench]");
  process.exit(2);
}
const tok = Tokenizer.fromFile(tokPath);
const corpus = JSON.parse(fs.readFileSync(corpusPath, "utf8"));
if (flag === "--bench") {
  const t0 = process.hrtime.bigint();
  let n = 0;
  for (const s of corpus) n += (await tok.encode(s, null, { addSpecialTokens: false })).getIds().length;
  const sec = Number(process.hrtime.bigint() - t0) / 1e9;
  console.log(JSON.stringify({ tokens: n, seconds: sec }));
} else {
  const out = [];
  for (const s of corpus) {
    const ids = (await tok.encode(s, null, { addSpecialTokens: false })).getIds();
    out.push({
      ids: Array.from(ids),
      decoded: await tok.decode(ids, false),
      decoded_skip: await tok.decode(ids, true),
    });
  }
  console.log(JSON.stringify(out));
}
