"""DEV TOOL (not part of the package, not run by the tests): score the VQA normalisation edge cases
with the reference evaluators themselves and write tests/golden/vqa_normalization.json.

The reference code is run, not re-implemented. Get it with git clone:
  GT-Vision-Lab/VQA       PythonEvaluationTools/vqaEvaluation/vqaEval.py at a013f00 (current) and at
                          a4f1afd (the copy before "Fixed processing answers bug")
  salesforce/LAVIS        lavis/common/vqa_tools/vqa_eval.py (the legacy copy, Python 3)
  haotian-liu/LLaVA       llava/eval/m4c_evaluator.py at c121f04 (TextVQAAccuracyEvaluator, EvalAI processor)
and pass the four files:

  python tests/golden/generate_vqa_normalization.py --current VQA/.../vqaEval.py --before-fix VQA-old/.../vqaEval.py \
      --lavis LAVIS/vqa_eval.py --m4c LLaVA/llava/eval/m4c_evaluator.py --out tests/golden/vqa_normalization.json

GT-Vision-Lab's vqaEval.py is Python 2; the only Python-2-only syntax in it is two `print "..."`
statements, which are turned into calls before it runs (its answers are unicode strings under
Python 2's json too, so the string handling is the same for the ASCII cases below).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import types

# (name, model answer, ten human answers)
CASES = [
    ("number word, humans identical", "two", ["two"] * 10),
    ("number word vs digits, humans identical", "two", ["2"] * 10),
    ("number word vs mixed humans", "two", ["2"] * 2 + ["two"] * 8),
    ("capitalised number word", "Two", ["2"] * 5 + ["two"] * 5),
    ("none means 0", "none", ["0"] * 3 + ["none"] * 7),
    ("ten", "ten", ["10"] * 10),
    ("contraction, unspaced humans", "don't know", ["dont know"] * 2 + ["no"] * 8),
    ("contraction map on the model side", "dont", ["don't"] * 10),
    ("contraction both spellings", "isnt", ["isn't"] * 6 + ["isnt"] * 4),
    ("capitalised contraction key", "Im", ["I'm"] * 5 + ["im"] * 5),
    ("slash, humans split", "a/c", ["a/c"] * 5 + ["ac"] * 5),
    ("slash between words", "black/white", ["black and white"] * 4 + ["black/white"] * 6),
    ("fraction", "1/2", ["1/2"] * 7 + ["half"] * 3),
    ("article alone, humans identical", "a", ["a"] * 10),
    ("article alone, humans differ", "the", ["the"] * 5 + ["a"] * 5),
    ("leading article", "the dog", ["dog"] * 3 + ["cat"] * 7),
    ("article inside", "an apple", ["apple"] * 6 + ["an apple"] * 4),
    ("parentheses", "(red)", ["red"] * 3 + ["blue"] * 7),
    ("parenthesised remark", "red (dark)", ["red dark"] * 5 + ["red"] * 5),
    ("hyphen", "Hot-dog.", ["hot dog"] * 4 + ["hot-dog"] * 6),
    ("digit,digit comma", "1,000", ["1,000"] * 3 + ["1000"] * 7),
    ("digit,digit comma, humans identical", "1,000", ["1,000"] * 10),
    ("millions", "1,000,000", ["1000000"] * 5 + ["million"] * 5),
    ("comma then space", "3, 4", ["3 4"] * 5 + ["34"] * 5),
    ("period inside a number", "3.5", ["3.5"] * 6 + ["3"] * 4),
    ("period inside a number, trailing period", "3.5.", ["3.5"] * 10),
    ("abbreviation periods", "u.s.a.", ["usa"] * 5 + ["u.s.a."] * 5),
    ("title with period", "Mr. Smith", ["mr smith"] * 5 + ["smith"] * 5),
    ("all identical, punctuated", "Yes!", ["Yes!"] * 10),
    ("all identical, capitalised humans", "yes", ["Yes"] * 10),
    ("all identical, padded model answer", " yes ", ["yes"] * 10),
    ("trailing period", "yes.", ["yes"] * 9 + ["yes."]),
    ("trailing exclamation, humans differ", "no!", ["no"] * 8 + ["nope"] * 2),
    ("question mark", "yes?", ["yes"] * 10),
    ("comma list", "red, white", ["red white"] * 5 + ["red and white"] * 5),
    ("possessive", "man's", ["mans"] * 5 + ["man's"] * 5),
    ("newline in the model answer", "yes\n", ["yes"] * 10),
    ("tab inside the model answer", "hot\tdog", ["hot dog"] * 10),
    ("newline in one human answer", "yes", ["yes\n"] + ["yes"] * 9),
    ("tab in human answers, humans differ", "hot dog", ["hot\tdog"] * 5 + ["hotdog"] * 5),
    ("one of ten humans agrees", "red", ["red"] + ["blue"] * 9),
    ("upper case, humans differ", "RED", ["red"] * 6 + ["Red"] * 4),
]


def _load_py2_module(path: str, name: str):
    source = open(path).read()
    source = re.sub(r'^(\s*)print (".*")\s*$', r"\1print(\2)", source, flags=re.M)
    module = types.ModuleType(name)
    exec(compile(source, path, "exec"), module.__dict__)
    return module


class _QA:
    """The two things VQAEval reads of its VQA objects: `.qa` and `getQuesIds()`."""

    def __init__(self, qa):
        self.qa = qa

    def getQuesIds(self):
        return list(self.qa)


def _vqa_eval_scores(vqa_eval_cls) -> list[float]:
    gts, res = {}, {}
    for qid, (_, prediction, humans) in enumerate(CASES):
        gts[qid] = {"question_id": qid, "question_type": "t", "answer_type": "a",
                    "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(humans)]}
        res[qid] = {"question_id": qid, "answer": prediction}
    evaluator = vqa_eval_cls(_QA(gts), _QA(res), n=2)
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
    return [evaluator.evalQA[qid] for qid in range(len(CASES))]


def _evalai_scores(m4c) -> list[float]:
    evaluator = m4c.TextVQAAccuracyEvaluator()
    scores = []
    for _, prediction, humans in CASES:
        with contextlib.redirect_stderr(io.StringIO()):
            accuracy = evaluator.eval_pred_list([{"pred_answer": prediction, "gt_answers": humans}])
        scores.append(round(100 * accuracy, 2))
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--current", required=True)
    parser.add_argument("--before-fix", required=True)
    parser.add_argument("--lavis", required=True)
    parser.add_argument("--m4c", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    official = _vqa_eval_scores(_load_py2_module(args.current, "vqaEval_current").VQAEval)
    before_fix = _vqa_eval_scores(_load_py2_module(args.before_fix, "vqaEval_before_fix").VQAEval)
    lavis = _vqa_eval_scores(_load_py2_module(args.lavis, "lavis_vqa_eval").VQAEval)
    if before_fix != lavis:
        raise SystemExit("LAVIS's copy and vqaEval.py before a013f00 disagree; check which one 'legacy' should follow")
    evalai = _evalai_scores(_load_py2_module(args.m4c, "m4c_evaluator"))
    cases = [
        {"name": name, "prediction": prediction, "human_answers": humans,
         "official": o, "legacy": l, "evalai": e}
        for (name, prediction, humans), o, l, e in zip(CASES, official, before_fix, evalai)
    ]
    with open(args.out, "w") as f:
        json.dump({
            "about": "Per-question VQA accuracy (percent, rounded to 2 places as the evaluators report it) computed by "
                     "running the reference evaluators; written by tests/golden/generate_vqa_normalization.py.",
            "references": {
                "official": "GT-Vision-Lab/VQA PythonEvaluationTools/vqaEvaluation/vqaEval.py @ a013f00",
                "legacy": "GT-Vision-Lab/VQA vqaEval.py @ a4f1afd (identical scores from salesforce/LAVIS "
                          "lavis/common/vqa_tools/vqa_eval.py)",
                "evalai": "haotian-liu/LLaVA llava/eval/m4c_evaluator.py @ c121f04, TextVQAAccuracyEvaluator",
            },
            "cases": cases,
        }, f, indent=1, ensure_ascii=False)
        f.write("\n")
    differ = sum(1 for c in cases if len({c["official"], c["legacy"], c["evalai"]}) > 1)
    print(f"wrote {args.out}: {len(cases)} cases, {differ} where the three evaluators disagree")


if __name__ == "__main__":
    main()
