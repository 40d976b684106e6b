"""Reference vectors for mllm's metrics (tests/eval/test_metrics.cpp), made by the published code.

Runs, unmodified, the scorers of pycocoevalcap (github.com/salaniz/pycocoevalcap: bleu/bleu_scorer.py,
cider/cider_scorer.py, rouge/rouge.py), VQAv2's answer normalisation (github.com/GT-Vision-Lab/VQA:
PythonEvaluationTools/vqaEvaluation/vqaEval.py, a Python 2 file: its `print` statement lines are
dropped before exec, nothing else changes) and POPE's evaluate.py (github.com/RUCAIBox/POPE, a
script: its two input paths are set to files written here). Captions are given pre-tokenized, as
the scorers receive them after the (Java) PTB tokenizer. Run with Debian's Python (numpy):

    /usr/bin/python3 tests/reference/metrics_reference.py PYCOCOEVALCAP_DIR VQA_DIR POPE_DIR
    # writes tests/fixtures/metrics/vectors.json
"""
import contextlib
import io
import json
import os
import re
import sys
import tempfile

coco, vqa_dir, pope_dir = sys.argv[1:4]
sys.path.insert(0, os.path.dirname(os.path.abspath(coco)))
from pycocoevalcap.bleu.bleu_scorer import BleuScorer  # noqa: E402
from pycocoevalcap.cider.cider_scorer import CiderScorer  # noqa: E402
from pycocoevalcap.rouge.rouge import Rouge  # noqa: E402

# Caption corpora: (references per item, candidate per item), already tokenized.
CORPORA = [
    {"refs": [["a man riding a horse on a beach", "a person rides a brown horse",
               "man on horse near the sea"],
              ["two dogs playing with a red ball", "a pair of dogs chase a ball in the grass"],
              ["a plate of food with broccoli and rice", "a white plate holds rice and broccoli",
               "food on a plate"]],
     "cands": ["a man rides a horse on the beach", "two dogs play with a ball",
               "a plate with rice and broccoli"]},
    # Repeated n-grams (clipping), an empty candidate, a long candidate, a one-word one.
    {"refs": [["the the the cat sat on the mat"], ["a red star at the top left"],
              ["a small blue circle at the center and a large green square at the right"],
              ["yes"]],
     "cands": ["the the the the the the the", "", "a small blue circle at the center and a large "
               "green square at the right and a small red star at the top left and more words",
               "yes"]},
    # Closest reference length ties: lengths 3 and 5 around a 4-word candidate (the shorter wins).
    {"refs": [["a b c", "a b c d e"], ["x y z w v", "x y"]],
     "cands": ["a b c d", "x y z"]},
    # A single item: CIDEr's idf is log(1) = 0, so it scores 0.
    {"refs": [["a cat on a mat"]], "cands": ["a cat on a mat"]},
]


def caption_vectors(corpus):
    bleu = BleuScorer(n=4)
    cider = CiderScorer(n=4, sigma=6.0)
    for refs, cand in zip(corpus["refs"], corpus["cands"]):
        bleu += (cand, refs)
        cider += (cand, refs)
    with contextlib.redirect_stdout(io.StringIO()):
        b, _ = bleu.compute_score(option="closest", verbose=1)
    c, per = cider.compute_score()
    rouge = Rouge()
    r = [rouge.calc_score([cand], refs) for refs, cand in zip(corpus["refs"], corpus["cands"])]
    return {"bleu": list(b), "cider_d": float(c), "cider_d_items": [float(x) for x in per],
            "rouge_l": float(sum(r) / len(r))}


def load_vqa_eval():
    path = os.path.join(vqa_dir, "PythonEvaluationTools", "vqaEvaluation", "vqaEval.py")
    src = open(path).read()
    src = "\n".join(l for l in src.split("\n") if not re.match(r"\s*print ", l))
    ns = {}
    exec(compile(src, path, "exec"), ns)
    return ns["VQAEval"]


VQA_ANSWERS = ["Two", "2", "two dogs", "the red ball.", "a Red Ball", "yes!", "Yes", "no, it isn't",
               "isnt", "1,000", "3.5", "don't know", "hot-dog", "hot dog", "(left)", "left side",
               "ten", "none", "an apple", "it's red.", "c.", "what?", " spaced  out \t",
               "a/b", "x;y", "end.", "5.", "p. m."]

# VQA accuracy cases: (prediction, the human answers).
VQA_CASES = [
    ("two", ["2"] * 10),
    ("2", ["two", "2", "2", "two", "2", "2", "2", "2", "2", "2"]),
    ("red", ["red"] * 3 + ["dark red"] * 4 + ["maroon"] * 3),
    ("dark red", ["red"] * 3 + ["dark red"] * 4 + ["maroon"] * 3),
    ("maroon", ["red"] * 8 + ["maroon"] * 2),
    ("yes", ["yes"] * 10),
    ("Yes.", ["yes"] * 9 + ["no"]),
    ("Yes.", ["yes"] * 10),
    ("the dog", ["dog", "dog", "a dog", "dogs", "dog", "dog", "puppy", "dog", "dog", "dog"]),
    ("cat", ["dog"] * 10),
    ("left", ["left"] * 2 + ["right"] * 8),
]


def vqa_vectors():
    VQAEval = load_vqa_eval()
    # evaluate() works on VQA objects; stand-ins hold these questions.
    class QA:
        def __init__(self, qa):
            self.qa = qa

        def getQuesIds(self):
            return list(self.qa.keys())
    gts, res = {}, {}
    for i, (pred, answers) in enumerate(VQA_CASES):
        gts[i] = {"answers": [{"answer": a, "answer_id": k + 1} for k, a in enumerate(answers)],
                  "question_type": "t", "answer_type": "a"}
        res[i] = {"answer": pred}
    ev = VQAEval(QA(gts), QA(res), n=12)
    norm = [ev.processDigitArticle(ev.processPunctuation(a)) for a in VQA_ANSWERS]
    with contextlib.redirect_stdout(io.StringIO()):
        ev.evaluate()
    acc = [ev.evalQA[i] / 100.0 for i in range(len(VQA_CASES))]  # percent, rounded to 12 places
    return {"normalize": [{"in": a, "out": o} for a, o in zip(VQA_ANSWERS, norm)],
            "accuracy": [{"prediction": p, "answers": a, "accuracy": x}
                         for (p, a), x in zip(VQA_CASES, acc)]}


POPE_ANSWERS = ["Yes, there is a dog in the image.", "No, there is no dog.", "There is not a cat.",
                "yes", "no", "I think so. No doubt.", "Nope", "The answer is no", "no, but, yes",
                "NO", "Yes", "not sure", "There is a car. Not a bus.", "there's no"]
POPE_LABELS = ["yes", "no", "no", "yes", "yes", "yes", "no", "no", "no", "no", "yes", "yes", "no",
               "no"]


def pope_vectors():
    path = os.path.join(pope_dir, "evaluate.py")
    src = open(path).read()
    with tempfile.TemporaryDirectory() as d:
        ans, lab = os.path.join(d, "ans.jsonl"), os.path.join(d, "label.jsonl")
        with open(ans, "w") as f:
            for a in POPE_ANSWERS:
                f.write(json.dumps({"answer": a}) + "\n")
        with open(lab, "w") as f:
            for l in POPE_LABELS:
                f.write(json.dumps({"label": l}) + "\n")
        src = src.replace("ans_file = ''", "ans_file = %r" % ans, 1)
        src = src.replace("label_file = ''", "label_file = %r" % lab, 1)
        out = io.StringIO()
        ns = {}
        with contextlib.redirect_stdout(out):
            exec(compile(src, path, "exec"), ns)
    return {"answers": POPE_ANSWERS, "labels": POPE_LABELS,
            "parsed": [a["answer"] for a in ns["answers"]],
            "accuracy": ns["acc"], "precision": ns["precision"], "recall": ns["recall"],
            "f1": ns["f1"], "yes_ratio": ns["yes_ratio"]}


out = {"captions": [dict(c, **caption_vectors(c)) for c in CORPORA], "vqa": vqa_vectors(),
       "pope": pope_vectors()}
dst = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "metrics",
                   "vectors.json")
with open(dst, "w") as f:
    json.dump(out, f, indent=1)
    f.write("\n")
print("wrote", os.path.normpath(dst))
