// The metrics of metrics.h. Each follows the published file named in its comment; the code is ours.
#include "eval/metrics.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <fstream>
#include <set>

#include "core/error.h"
#include "core/strings.h"

namespace mllm::eval {

using Json = nlohmann::json;

namespace {

std::vector<std::string> split_ws(const std::string& s) {
  std::vector<std::string> out;
  std::string cur;
  for (char c : s) {
    if (std::isspace(static_cast<unsigned char>(c))) {
      if (!cur.empty()) out.push_back(cur), cur.clear();
    } else {
      cur.push_back(c);
    }
  }
  if (!cur.empty()) out.push_back(cur);
  return out;
}

std::string lower(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

bool is_digit(char c) {
  return c >= '0' && c <= '9';
}

}  // namespace

// ---- PTB tokenization ---------------------------------------------------------------------------

namespace {

// Stanford PTBLexer's rules that matter for captions and short answers (CoreNLP
// edu/stanford/nlp/process/PTBLexer.flex, PTBTokenizer defaults): punctuation becomes its own
// token, except a period inside a number ("3.5") or an abbreviation ("u.s.", "mr."), a comma
// inside a number ("1,000") and a hyphen inside a word ("well-known"); "--" and "..." are tokens;
// clitics split off ("dog's" -> "dog 's", "isn't" -> "is n't", "can't" -> "ca n't", "'re 've 'll
// 'd 'm"); brackets become -LRB- -RRB- -LCB- -RCB- -LSB- -RSB-; double quotes `` and ''. With
// -lowerCase every token is lower-cased, the bracket names too (PTBTokenizer.tokReader), so
// "-lrb-" is not in coco's upper-case PUNCTUATIONS and stays, as it does in pycocoevalcap.
const std::set<std::string>& abbreviations() {
  static const std::set<std::string> a = {"mr.",  "mrs.", "ms.",  "dr.",  "prof.", "st.",  "jr.",
                                          "sr.",  "vs.",  "etc.", "inc.", "ltd.",  "co.",  "corp.",
                                          "jan.", "feb.", "mar.", "apr.", "aug.",  "sep.", "sept.",
                                          "oct.", "nov.", "dec.", "mt.",  "ft.",   "no."};
  return a;
}

void split_clitics(const std::string& w, std::vector<std::string>& out) {
  // n't first: "isn't" -> "is" "n't"; "can't" -> "ca" "n't"; "won't" -> "wo" "n't".
  if (w.size() > 3 && w.compare(w.size() - 3, 3, "n't") == 0) {
    out.push_back(w.substr(0, w.size() - 3));
    out.push_back("n't");
    return;
  }
  for (const char* c : {"'s", "'re", "'ve", "'ll", "'d", "'m"}) {
    const size_t n = std::char_traits<char>::length(c);
    if (w.size() > n && w.compare(w.size() - n, n, c) == 0) {
      out.push_back(w.substr(0, w.size() - n));
      out.push_back(c);
      return;
    }
  }
  out.push_back(w);
}

void tokenize_word(const std::string& w, std::vector<std::string>& out) {
  std::string cur;
  auto flush = [&] {
    if (!cur.empty()) split_clitics(cur, out), cur.clear();
  };
  for (size_t i = 0; i < w.size(); ++i) {
    const char c = w[i];
    const char next = i + 1 < w.size() ? w[i + 1] : '\0';
    const char prev = i > 0 ? w[i - 1] : '\0';
    if (c == '.') {
      if (w.compare(i, 3, "...") == 0) {
        flush();
        out.push_back("...");
        i += 2;
        continue;
      }
      if (is_digit(next) && (cur.empty() || is_digit(prev))) {  // 3.5, .5
        cur.push_back(c);
        continue;
      }
      // An abbreviation: single letters with periods (u.s.) or a known one (mr.).
      const std::string with = cur + ".";
      const bool letters_with_periods =
          !cur.empty() && std::isalpha(static_cast<unsigned char>(cur.back())) &&
          (cur.size() == 1 || (cur.size() >= 2 && cur[cur.size() - 2] == '.')) &&
          (next == '\0' ? cur.find('.') != std::string::npos
                        : std::isalpha(static_cast<unsigned char>(next)));
      if (abbreviations().count(with) || letters_with_periods) {
        cur.push_back(c);
        continue;
      }
      flush();
      out.push_back(".");
      continue;
    }
    if (c == ',' && is_digit(prev) && is_digit(next) && !cur.empty()) {
      cur.push_back(c);
      continue;
    }
    if (c == '-') {
      if (next == '-') {
        flush();
        size_t j = i;
        while (j < w.size() && w[j] == '-') ++j;
        out.push_back("--");
        i = j - 1;
        continue;
      }
      if (!cur.empty() && std::isalnum(static_cast<unsigned char>(next))) {
        cur.push_back(c);
        continue;
      }
      flush();
      out.push_back("-");
      continue;
    }
    if (c == '\'') {
      // A clitic or n't stays with the word (split later); otherwise a quote.
      const bool clitic = !cur.empty() && std::isalpha(static_cast<unsigned char>(next));
      if (clitic) {
        cur.push_back(c);
        continue;
      }
      if (!cur.empty() && cur.back() == 'n' && next == 't') {
        cur.push_back(c);
        continue;
      }
      flush();
      if (next == '\'') {
        out.push_back("''");
        ++i;
      } else {
        out.push_back(prev == '\0' ? "`" : "'");
      }
      continue;
    }
    const char* special = nullptr;
    switch (c) {
      case '(':
        special = "-lrb-";
        break;
      case ')':
        special = "-rrb-";
        break;
      case '{':
        special = "-lcb-";
        break;
      case '}':
        special = "-rcb-";
        break;
      case '[':
        special = "-lsb-";
        break;
      case ']':
        special = "-rsb-";
        break;
      case '"':
        special = prev == '\0' ? "``" : "''";
        break;
      default:
        break;
    }
    if (special) {
      flush();
      out.push_back(special);
      continue;
    }
    if (c == ',' || c == ';' || c == ':' || c == '?' || c == '!' || c == '`') {
      flush();
      // Runs of ! or ? are one token.
      std::string p(1, c);
      while ((c == '!' || c == '?') && i + 1 < w.size() && (w[i + 1] == '!' || w[i + 1] == '?'))
        p.push_back(w[++i]);
      out.push_back(p);
      continue;
    }
    cur.push_back(c);
  }
  flush();
}

// pycocoevalcap/tokenizer/ptbtokenizer.py: PUNCTUATIONS.
const std::set<std::string>& coco_punctuations() {
  static const std::set<std::string> p = {"''",    "'",     "``", "`",   "-LRB-", "-RRB-",
                                          "-LCB-", "-RCB-", ".",  "?",   "!",     ",",
                                          ":",     "-",     "--", "...", ";"};
  return p;
}

}  // namespace

std::string ptb_tokenize(const std::string& text) {
  std::vector<std::string> tokens;
  for (const auto& w : split_ws(lower(text))) tokenize_word(w, tokens);
  std::vector<std::string> kept;
  for (auto& t : tokens)
    if (!coco_punctuations().count(t)) kept.push_back(t);
  return join(kept, " ");
}

// ---- Caption metrics ----------------------------------------------------------------------------

namespace {

using Ngrams = std::map<std::vector<std::string>, int>;

// n-gram counts for n = 1..4 (precook in bleu_scorer.py and cider_scorer.py).
Ngrams ngram_counts(const std::vector<std::string>& words, int n = 4) {
  Ngrams counts;
  for (int k = 1; k <= n; ++k)
    for (size_t i = 0; i + static_cast<size_t>(k) <= words.size(); ++i)
      ++counts[std::vector<std::string>(words.begin() + static_cast<long>(i),
                                        words.begin() + static_cast<long>(i) + k)];
  return counts;
}

void check_sizes(const std::vector<std::vector<std::string>>& refs,
                 const std::vector<std::string>& cands) {
  if (refs.size() != cands.size())
    throw Error("caption metrics: " + std::to_string(cands.size()) + " candidates for " +
                std::to_string(refs.size()) + " reference sets");
  for (size_t i = 0; i < refs.size(); ++i)
    if (refs[i].empty())
      throw Error("caption metrics: item " + std::to_string(i) + " has no reference");
}

}  // namespace

double cider_d(const std::vector<std::vector<std::string>>& refs,
               const std::vector<std::string>& cands, std::vector<double>* per_item) {
  // pycocoevalcap/cider/cider_scorer.py (CIDEr-D): tf-idf n-gram vectors with document
  // frequencies from the references, ref_len = log(#items); per reference, the candidate's
  // weights clipped by the reference's, cosine, times exp(-delta^2 / (2 sigma^2)) with delta the
  // difference of the bigram counts; mean over n, mean over references, x10.
  check_sizes(refs, cands);
  constexpr int kN = 4;
  constexpr double kSigma = 6.0;
  std::vector<std::vector<Ngrams>> ref_counts(refs.size());
  std::map<std::vector<std::string>, double> df;
  for (size_t i = 0; i < refs.size(); ++i) {
    std::set<std::vector<std::string>> seen;
    for (const auto& r : refs[i]) {
      ref_counts[i].push_back(ngram_counts(split_ws(r), kN));
      for (const auto& [g, c] : ref_counts[i].back()) seen.insert(g);
    }
    for (const auto& g : seen) df[g] += 1;
  }
  const double ref_len = std::log(static_cast<double>(refs.size()));
  struct Vec {
    std::array<std::map<std::vector<std::string>, double>, kN> w;
    std::array<double, kN> norm{};
    double length = 0;
  };
  auto to_vec = [&](const Ngrams& counts) {
    Vec v;
    for (const auto& [g, tf] : counts) {
      const auto it = df.find(g);
      const double d = std::log(std::max(1.0, it == df.end() ? 0.0 : it->second));
      const size_t n = g.size() - 1;
      const double x = static_cast<double>(tf) * (ref_len - d);
      v.w[n][g] = x;
      v.norm[n] += x * x;
      if (n == 1) v.length += tf;
    }
    for (auto& x : v.norm) x = std::sqrt(x);
    return v;
  };
  std::vector<double> scores;
  for (size_t i = 0; i < refs.size(); ++i) {
    const Vec hyp = to_vec(ngram_counts(split_ws(cands[i]), kN));
    std::array<double, kN> sum{};
    for (const auto& rc : ref_counts[i]) {
      const Vec ref = to_vec(rc);
      const double delta = hyp.length - ref.length;
      for (int n = 0; n < kN; ++n) {
        double val = 0;
        for (const auto& [g, x] : hyp.w[n]) {
          const auto it = ref.w[n].find(g);
          const double r = it == ref.w[n].end() ? 0.0 : it->second;
          val += std::min(x, r) * r;
        }
        if (hyp.norm[n] != 0 && ref.norm[n] != 0) val /= hyp.norm[n] * ref.norm[n];
        val *= std::exp(-(delta * delta) / (2 * kSigma * kSigma));
        sum[n] += val;
      }
    }
    double mean = 0;
    for (double x : sum) mean += x;
    mean /= kN;
    scores.push_back(mean / static_cast<double>(refs[i].size()) * 10.0);
  }
  double total = 0;
  for (double s : scores) total += s;
  if (per_item) *per_item = scores;
  return scores.empty() ? 0.0 : total / static_cast<double>(scores.size());
}

std::array<double, 4> bleu(const std::vector<std::vector<std::string>>& refs,
                           const std::vector<std::string>& cands) {
  // pycocoevalcap/bleu/bleu_scorer.py, compute_score(option="closest"): clipped n-gram matches
  // and guesses summed over the corpus, the closest reference length per item (ties: the shorter)
  // summed too; BLEU-k = (prod_{j<=k} (correct_j + 1e-15) / (guess_j + 1e-9))^(1/k), times the
  // brevity penalty exp(1 - ref/test) when test < ref.
  check_sizes(refs, cands);
  constexpr double kTiny = 1e-15, kSmall = 1e-9;
  std::array<double, 4> correct{}, guess{};
  double testlen = 0, reflen = 0;
  for (size_t i = 0; i < refs.size(); ++i) {
    std::map<std::vector<std::string>, int> max_ref;
    std::vector<size_t> lens;
    for (const auto& r : refs[i]) {
      const auto words = split_ws(r);
      lens.push_back(words.size());
      for (const auto& [g, c] : ngram_counts(words)) max_ref[g] = std::max(max_ref[g], c);
    }
    const auto words = split_ws(cands[i]);
    const size_t t = words.size();
    size_t best = lens[0];
    for (size_t l : lens) {
      const auto d = [&](size_t x) { return x > t ? x - t : t - x; };
      if (d(l) < d(best) || (d(l) == d(best) && l < best)) best = l;
    }
    testlen += static_cast<double>(t);
    reflen += static_cast<double>(best);
    for (int k = 0; k < 4; ++k)
      guess[k] += static_cast<double>(t > static_cast<size_t>(k) ? t - k : 0);
    for (const auto& [g, c] : ngram_counts(words)) {
      const auto it = max_ref.find(g);
      correct[g.size() - 1] += std::min(c, it == max_ref.end() ? 0 : it->second);
    }
  }
  std::array<double, 4> out{};
  double product = 1.0;
  for (int k = 0; k < 4; ++k) {
    product *= (correct[k] + kTiny) / (guess[k] + kSmall);
    out[k] = std::pow(product, 1.0 / (k + 1));
  }
  const double ratio = (testlen + kTiny) / (reflen + kSmall);
  if (ratio < 1)
    for (auto& b : out) b *= std::exp(1 - 1 / ratio);
  return out;
}

namespace {

// Tokens as rouge.py splits them: on single spaces (an empty text is one empty token).
std::vector<std::string> split_space(const std::string& s) {
  std::vector<std::string> out;
  size_t start = 0;
  for (;;) {
    const size_t at = s.find(' ', start);
    out.push_back(s.substr(start, at == std::string::npos ? std::string::npos : at - start));
    if (at == std::string::npos) return out;
    start = at + 1;
  }
}

size_t lcs(const std::vector<std::string>& a, const std::vector<std::string>& b) {
  std::vector<size_t> prev(b.size() + 1, 0), cur(b.size() + 1, 0);
  for (size_t i = 1; i <= a.size(); ++i) {
    for (size_t j = 1; j <= b.size(); ++j)
      cur[j] = a[i - 1] == b[j - 1] ? prev[j - 1] + 1 : std::max(prev[j], cur[j - 1]);
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

}  // namespace

double rouge_l(const std::vector<std::vector<std::string>>& refs,
               const std::vector<std::string>& cands) {
  // pycocoevalcap/rouge/rouge.py: LCS-based F with beta 1.2, precision and recall each the
  // maximum over the references; the corpus score is the mean.
  check_sizes(refs, cands);
  constexpr double kBeta = 1.2;
  double total = 0;
  for (size_t i = 0; i < refs.size(); ++i) {
    const auto c = split_space(cands[i]);
    double p = 0, r = 0;
    for (const auto& ref : refs[i]) {
      const auto t = split_space(ref);
      const double l = static_cast<double>(lcs(t, c));
      p = std::max(p, l / static_cast<double>(c.size()));
      r = std::max(r, l / static_cast<double>(t.size()));
    }
    total += p != 0 && r != 0 ? (1 + kBeta * kBeta) * p * r / (r + kBeta * kBeta * p) : 0.0;
  }
  return refs.empty() ? 0.0 : total / static_cast<double>(refs.size());
}

// ---- VQA ----------------------------------------------------------------------------------------

namespace {

// VQA/PythonEvaluationTools/vqaEvaluation/vqaEval.py: self.contractions (data).
const std::map<std::string, std::string>& contractions() {
  static const std::map<std::string, std::string> m = {
#include "eval/vqa_contractions.inc"
  };
  return m;
}

bool has_digit_comma_digit(const std::string& s) {
  for (size_t i = 1; i + 1 < s.size(); ++i)
    if (s[i] == ',' && is_digit(s[i - 1]) && is_digit(s[i + 1])) return true;
  return false;
}

std::string process_punctuation(const std::string& in) {
  // processPunctuation: each of the punctuation marks is deleted when it touches a space in the
  // input (or the input has a digit,digit comma), else replaced by a space; then periods not
  // followed by a digit are deleted (re.sub's 4th argument there is count=re.UNICODE=32: at
  // most 32 of them).
  static const char* const punct[] = {";",  "/", "[", "]", "\"", "{", "}", "(", ")", "=", "+",
                                      "\\", "_", "-", ">", "<",  "@", "`", ",", "?", "!"};
  std::string out = in;
  const bool comma_strip = has_digit_comma_digit(in);
  for (const char* p : punct) {
    const std::string ps(p);
    const bool touches = in.find(ps + " ") != std::string::npos ||
                         in.find(" " + ps) != std::string::npos || comma_strip;
    std::string next;
    for (char c : out) {
      if (c == ps[0])
        next += touches ? "" : " ";
      else
        next.push_back(c);
    }
    out = next;
  }
  std::string stripped;
  int removed = 0;
  for (size_t i = 0; i < out.size(); ++i) {
    if (out[i] == '.' && removed < 32 && !(i + 1 < out.size() && is_digit(out[i + 1]))) {
      ++removed;
      continue;
    }
    stripped.push_back(out[i]);
  }
  return stripped;
}

std::string process_digit_article(const std::string& in) {
  // processDigitArticle: lower-case, number words to digits (manualMap), articles dropped,
  // contractions restored.
  static const std::map<std::string, std::string> numbers = {
      {"none", "0"}, {"zero", "0"}, {"one", "1"},   {"two", "2"},   {"three", "3"}, {"four", "4"},
      {"five", "5"}, {"six", "6"},  {"seven", "7"}, {"eight", "8"}, {"nine", "9"},  {"ten", "10"}};
  std::vector<std::string> words;
  for (auto w : split_ws(lower(in))) {
    if (auto it = numbers.find(w); it != numbers.end()) w = it->second;
    if (w == "a" || w == "an" || w == "the") continue;
    words.push_back(w);
  }
  for (auto& w : words)
    if (auto it = contractions().find(w); it != contractions().end()) w = it->second;
  return join(words, " ");
}

std::string clean_ws(std::string s) {
  for (auto& c : s)
    if (c == '\n' || c == '\t') c = ' ';
  return trim(s);
}

}  // namespace

std::string vqa_normalize(const std::string& answer) {
  return process_digit_article(process_punctuation(clean_ws(answer)));
}

double vqa_accuracy(const std::string& prediction, const std::vector<std::string>& answers) {
  // vqaEval.py evaluate(): answers and the prediction are normalised only when the answers are
  // not all the same; each answer's accuracy is min(1, matches among the others / 3); the mean.
  if (answers.empty()) return 0.0;
  std::vector<std::string> gts;
  for (const auto& a : answers) gts.push_back(clean_ws(a));
  std::string res = clean_ws(prediction);
  if (std::set<std::string>(gts.begin(), gts.end()).size() > 1) {
    for (auto& a : gts) a = vqa_normalize(a);
    res = vqa_normalize(res);
  }
  double total = 0;
  for (size_t i = 0; i < gts.size(); ++i) {
    int matches = 0;
    for (size_t j = 0; j < gts.size(); ++j)
      if (j != i && gts[j] == res) ++matches;
    total += std::min(1.0, matches / 3.0);
  }
  return total / static_cast<double>(gts.size());
}

// ---- Multiple choice, yes/no --------------------------------------------------------------------

std::optional<char> extract_choice_letter(const std::string& reply) {
  // llava/eval/eval_science_qa.py: the reply is one option letter; or starts with "X. "; or has
  // exactly one "The answer is X." (any character after X). Letters A-E there; here any letter,
  // the short forms case-insensitive, and a reply of just "x." or "x ." also counts
  // (ShapesWorld's).
  const std::string t = clean_ws(reply);
  auto letter = [](char c) { return std::isalpha(static_cast<unsigned char>(c)) != 0; };
  auto up = [](char c) { return static_cast<char>(std::toupper(static_cast<unsigned char>(c))); };
  if (t.size() == 1 && letter(t[0])) return up(t[0]);
  // "x." or "x ." (a WordLevel tokenizer's decode puts spaces between tokens).
  if (!t.empty() && letter(t[0])) {
    const size_t rest = t.find_first_not_of(' ', 1);
    if (rest != std::string::npos && t.compare(rest, std::string::npos, ".") == 0) return up(t[0]);
  }
  if (t.size() >= 3 && letter(t[0]) && t[1] == '.' && t[2] == ' ') return up(t[0]);
  // The sentence form as published: case-sensitive, an upper-case letter and any one character.
  const std::string key = "The answer is ";
  std::optional<char> found;
  int count = 0;
  for (size_t at = t.find(key); at != std::string::npos; at = t.find(key, at + 1)) {
    const size_t i = at + key.size();
    if (i + 1 < t.size() && t[i] >= 'A' && t[i] <= 'Z' && t[i + 1] != '\n') {
      found = t[i];
      ++count;
    }
  }
  return count == 1 ? found : std::nullopt;
}

bool pope_says_yes(const std::string& reply) {
  // POPE evaluate.py: the text before the first '.', commas removed, split on ' '; "No", "no"
  // or "not" among the words means no.
  std::string t = reply.substr(0, reply.find('.'));
  t.erase(std::remove(t.begin(), t.end(), ','), t.end());
  for (const auto& w : split_space(t))
    if (w == "No" || w == "no" || w == "not") return false;
  return true;
}

std::string mme_parse(const std::string& reply) {
  // MME eval_tool/calculation.py parse_pred_ans (after lower-casing).
  const std::string t = lower(reply);
  if (t == "yes" || t == "no") return t;
  const std::string head = t.substr(0, 4);
  if (head.find("yes") != std::string::npos) return "yes";
  if (head.find("no") != std::string::npos) return "no";
  return "other";
}

// ---- score() ------------------------------------------------------------------------------------

const std::vector<std::string>& metric_names() {
  static const std::vector<std::string> names = {"cider_d", "bleu", "rouge_l", "vqa",
                                                 "exact",   "mc",   "pope",    "mme"};
  return names;
}

namespace {

// Scores of one set of items (all, or one category).
Json score_items(const std::string& metric, const std::vector<const Reference*>& refs,
                 const std::vector<std::string>& texts) {
  const size_t n = refs.size();
  Json out = {{"n", n}};
  if (metric == "cider_d" || metric == "bleu" || metric == "rouge_l") {
    std::vector<std::vector<std::string>> r;
    std::vector<std::string> c;
    for (size_t i = 0; i < n; ++i) {
      std::vector<std::string> tok;
      for (const auto& a : refs[i]->answers) tok.push_back(ptb_tokenize(a));
      r.push_back(tok);
      c.push_back(ptb_tokenize(texts[i]));
    }
    if (metric == "cider_d") {
      out["cider_d"] = cider_d(r, c);
    } else if (metric == "rouge_l") {
      out["rouge_l"] = rouge_l(r, c);
    } else {
      const auto b = bleu(r, c);
      for (int k = 0; k < 4; ++k) out["bleu_" + std::to_string(k + 1)] = b[static_cast<size_t>(k)];
    }
    return out;
  }
  if (metric == "vqa" || metric == "exact") {
    double total = 0;
    for (size_t i = 0; i < n; ++i) {
      if (metric == "vqa") {
        total += vqa_accuracy(texts[i], refs[i]->answers);
      } else {
        const std::string p = vqa_normalize(texts[i]);
        bool hit = false;
        for (const auto& a : refs[i]->answers) hit = hit || vqa_normalize(a) == p;
        total += hit;
      }
    }
    out["accuracy"] = n ? total / static_cast<double>(n) : 0.0;
    return out;
  }
  if (metric == "mc") {
    int right = 0, unparsed = 0;
    for (size_t i = 0; i < n; ++i) {
      const auto got = extract_choice_letter(texts[i]);
      const auto want =
          refs[i]->answers.empty() ? std::nullopt : extract_choice_letter(refs[i]->answers[0]);
      if (!want)
        throw Error("mc: the reference of id \"" + refs[i]->id + "\" is not a choice letter");
      if (!got) ++unparsed;
      right += got && got == want;
    }
    out["accuracy"] = n ? right / static_cast<double>(n) : 0.0;
    out["n_unparsed"] = unparsed;
    return out;
  }
  auto label_of = [&](const Reference& r) {
    const std::string a = r.answers.empty() ? "" : lower(clean_ws(r.answers[0]));
    if (a != "yes" && a != "no")
      throw Error(metric + ": the reference of id \"" + r.id + "\" must be yes or no (got \"" +
                  (r.answers.empty() ? "" : r.answers[0]) + "\")");
    return a == "yes";
  };
  if (metric == "pope") {
    // POPE evaluate.py, yes the positive class. Precision/recall/F1 are 0 where undefined.
    double tp = 0, fp = 0, tn = 0, fn = 0;
    for (size_t i = 0; i < n; ++i) {
      const bool label = label_of(*refs[i]), yes = pope_says_yes(texts[i]);
      (yes ? (label ? tp : fp) : (label ? fn : tn)) += 1;
    }
    const double precision = tp + fp > 0 ? tp / (tp + fp) : 0.0;
    const double recall = tp + fn > 0 ? tp / (tp + fn) : 0.0;
    out["accuracy"] = n ? (tp + tn) / static_cast<double>(n) : 0.0;
    out["precision"] = precision;
    out["recall"] = recall;
    out["f1"] = precision + recall > 0 ? 2 * precision * recall / (precision + recall) : 0.0;
    out["yes_ratio"] = n ? (tp + fp) / static_cast<double>(n) : 0.0;
    out["hallucination_rate"] = fp + tn > 0 ? fp / (fp + tn) : 0.0;
    return out;
  }
  // mme: calculation.py per task: acc over questions ("other" is wrong), acc+ over images (every
  // question of the image right), score = 100 (acc + acc+).
  double right = 0;
  std::map<std::string, std::pair<int, int>> per_image;  // group -> (right, questions)
  for (size_t i = 0; i < n; ++i) {
    const bool ok = mme_parse(texts[i]) == (label_of(*refs[i]) ? "yes" : "no");
    right += ok;
    auto& g = per_image[refs[i]->group.empty() ? refs[i]->id : refs[i]->group];
    g.first += ok;
    g.second += 1;
  }
  double images_right = 0;
  for (const auto& [g, c] : per_image) images_right += c.first == c.second;
  const double acc = n ? right / static_cast<double>(n) : 0.0;
  const double acc_plus =
      per_image.empty() ? 0.0 : images_right / static_cast<double>(per_image.size());
  out["acc"] = acc;
  out["acc_plus"] = acc_plus;
  out["score"] = 100 * (acc + acc_plus);
  return out;
}

}  // namespace

Json score(const std::string& metric, const std::vector<Prediction>& predictions,
           const std::vector<Reference>& references) {
  const auto& names = metric_names();
  if (std::find(names.begin(), names.end(), metric) == names.end()) {
    std::string list;
    for (const auto& m : names) list += (list.empty() ? "" : ", ") + m;
    throw ConfigError("unknown metric '" + metric + "' (one of " + list + ")");
  }
  std::map<std::string, const Prediction*> by_id;
  for (const auto& p : predictions)
    if (!by_id.emplace(p.id, &p).second) throw Error("prediction id \"" + p.id + "\" is repeated");
  std::set<std::string> ref_ids;
  std::vector<const Reference*> refs;
  std::vector<std::string> texts;
  std::map<std::string, std::pair<std::vector<const Reference*>, std::vector<std::string>>> cats;
  for (const auto& r : references) {
    if (!ref_ids.insert(r.id).second) throw Error("reference id \"" + r.id + "\" is repeated");
    const auto it = by_id.find(r.id);
    if (it == by_id.end()) throw Error("no prediction for reference id \"" + r.id + "\"");
    if (r.answers.empty()) throw Error("reference id \"" + r.id + "\" has no answers");
    refs.push_back(&r);
    texts.push_back(it->second->text);
    if (!r.category.empty()) {
      cats[r.category].first.push_back(&r);
      cats[r.category].second.push_back(it->second->text);
    }
  }
  for (const auto& p : predictions)
    if (!ref_ids.count(p.id)) throw Error("no reference for prediction id \"" + p.id + "\"");
  if (refs.empty()) throw Error(metric + ": nothing to score");
  Json out = {{"metric", metric}};
  const Json all = score_items(metric, refs, texts);
  for (const auto& [k, v] : all.items()) out[k] = v;
  if (!cats.empty()) {
    Json by = Json::object();
    for (const auto& [c, items] : cats) by[c] = score_items(metric, items.first, items.second);
    if (metric == "mme") {  // MME's total: the sum of the task scores
      double total = 0;
      for (const auto& [c, j] : by.items()) total += j["score"].get<double>();
      out["total_score"] = total;
    }
    out["by_category"] = by;
  }
  return out;
}

// ---- Files --------------------------------------------------------------------------------------

namespace {

template <class F>
void for_each_line(const std::filesystem::path& file, F&& f) {
  std::ifstream in(file, std::ios::binary);
  if (!in) throw Error(file.string() + ": cannot read (does the file exist?)");
  std::string line;
  for (size_t n = 1; std::getline(in, line); ++n) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = file.string() + ":" + std::to_string(n);
    Json j;
    try {
      j = Json::parse(line);
    } catch (const Json::exception& e) {
      throw Error(where + ": malformed JSON: " + e.what());
    }
    if (!j.is_object()) throw Error(where + ": expected a JSON object");
    try {
      f(j);
    } catch (const Json::exception& e) {
      throw Error(where + ": " + e.what());
    } catch (const Error& e) {
      throw Error(where + ": " + e.what());
    }
  }
}

std::string id_string(const Json& j) {
  if (!j.contains("id")) throw Error("missing \"id\"");
  return j["id"].is_string() ? j["id"].get<std::string>() : j["id"].dump();
}

std::string optional_string(const Json& j, const char* a, const char* b) {
  for (const char* k : {a, b})
    if (j.contains(k) && !j[k].is_null()) {
      if (!j[k].is_string()) throw Error(std::string("\"") + k + "\" must be a string");
      return j[k].get<std::string>();
    }
  return "";
}

}  // namespace

std::vector<Prediction> read_predictions(const std::filesystem::path& jsonl) {
  std::vector<Prediction> out;
  for_each_line(jsonl, [&](const Json& j) {
    if (!j.contains("text") || !j["text"].is_string()) throw Error("needs \"text\" (a string)");
    out.push_back({id_string(j), j["text"].get<std::string>()});
  });
  return out;
}

std::vector<Reference> read_references(const std::filesystem::path& jsonl) {
  std::vector<Reference> out;
  for_each_line(jsonl, [&](const Json& j) {
    Reference r;
    r.id = id_string(j);
    if (j.contains("answers")) {
      if (!j["answers"].is_array() || j["answers"].empty())
        throw Error("\"answers\" must be a non-empty list of strings");
      for (const auto& a : j["answers"]) {
        if (!a.is_string()) throw Error("\"answers\" must be a non-empty list of strings");
        r.answers.push_back(a.get<std::string>());
      }
    } else if (j.contains("answer") && j["answer"].is_string()) {
      r.answers = {j["answer"].get<std::string>()};
    } else {
      throw Error("needs \"answers\" (a list) or \"answer\" (a string)");
    }
    r.group = optional_string(j, "group", "image");
    r.category = optional_string(j, "category", "type");
    out.push_back(std::move(r));
  });
  return out;
}

}  // namespace mllm::eval
