"""VQA answer normalisation and accuracy, as three reference evaluators compute them.

- "official": GT-Vision-Lab/VQA `vqaEval.py` as it is now (commit a013f00, "Fixed processing
  answers bug", 2021). Newlines/tabs become spaces on both sides; only when the ten human
  answers are not all identical are both sides normalised (punctuation, then number words,
  articles and contractions); otherwise raw stripped strings are compared.
- "legacy": the copy of `vqaEval.py` from before that fix, which many forks still carry
  (salesforce/LAVIS and so BLIP-2/InstructBLIP, Vision-CAIR/MiniGPT-4, QwenLM/Qwen-VL's eval_mm):
  the model's answer is always normalised, human answers only punctuation-stripped (and only
  when they differ), never stripped of whitespace.
- "evalai": the EvalAI answer processor (TextVQA's m4c evaluator in MMF and official LLaVA,
  the VQAv2 server side): both sides always lower-cased, commas/question marks dropped, then
  normalised; accuracy averages over leaving each human answer out by position.

Upstream quirks kept on purpose, because published numbers depend on them: a punctuation mark
next to a space (or any text with a digit,digit comma) is deleted, otherwise it becomes a space;
the period rule's lookbehind is malformed upstream (it is a lookahead for "<=digit"), so every
period not followed by a digit goes, and at most 32 of them (upstream passes `re.UNICODE` where
`sub` expects a count).
"""

from __future__ import annotations

import re

# "unspaced=spaced" pairs; keys with capitals can never match (answers are lower-cased first),
# as upstream.
_CONTRACTION_PAIRS = """
aint=ain't arent=aren't cant=can't couldve=could've couldnt=couldn't couldn'tve=couldn't've
couldnt've=couldn't've didnt=didn't doesnt=doesn't dont=don't hadnt=hadn't hadnt've=hadn't've
hadn'tve=hadn't've hasnt=hasn't havent=haven't hed=he'd hed've=he'd've he'dve=he'd've hes=he's
howd=how'd howll=how'll hows=how's Id've=I'd've I'dve=I'd've Im=I'm Ive=I've isnt=isn't itd=it'd
itd've=it'd've it'dve=it'd've itll=it'll let's=let's maam=ma'am mightnt=mightn't
mightnt've=mightn't've mightn'tve=mightn't've mightve=might've mustnt=mustn't mustve=must've
neednt=needn't notve=not've oclock=o'clock oughtnt=oughtn't ow's'at='ow's'at 'ows'at='ow's'at
'ow'sat='ow's'at shant=shan't shed've=she'd've she'dve=she'd've she's=she's shouldve=should've
shouldnt=shouldn't shouldnt've=shouldn't've shouldn'tve=shouldn't've somebody'd=somebodyd
somebodyd've=somebody'd've somebody'dve=somebody'd've somebodyll=somebody'll somebodys=somebody's
someoned=someone'd someoned've=someone'd've someone'dve=someone'd've someonell=someone'll
someones=someone's somethingd=something'd somethingd've=something'd've something'dve=something'd've
somethingll=something'll thats=that's thered=there'd thered've=there'd've there'dve=there'd've
therere=there're theres=there's theyd=they'd theyd've=they'd've they'dve=they'd've theyll=they'll
theyre=they're theyve=they've twas='twas wasnt=wasn't wed've=we'd've we'dve=we'd've weve=we've
werent=weren't whatll=what'll whatre=what're whats=what's whatve=what've whens=when's whered=where'd
wheres=where's whereve=where've whod=who'd whod've=who'd've who'dve=who'd've wholl=who'll whos=who's
whove=who've whyll=why'll whyre=why're whys=why's wont=won't wouldve=would've wouldnt=wouldn't
wouldnt've=wouldn't've wouldn'tve=wouldn't've yall=y'all yall'll=y'all'll y'allll=y'all'll
yall'd've=y'all'd've y'alld've=y'all'd've y'all'dve=y'all'd've youd=you'd youd've=you'd've
you'dve=you'd've youll=you'll youre=you're youve=you've
"""
CONTRACTIONS: dict[str, str] = dict(pair.split("=", 1) for pair in _CONTRACTION_PAIRS.split())
NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
ARTICLES = frozenset({"a", "an", "the"})
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(\,)(\d)")
_EVALAI_COMMA_STRIP = re.compile(r"(?<=\d)(\,)+(?=\d)")
_MAX_PERIODS_REMOVED = int(re.UNICODE)  # upstream's accidental `count` argument (32)

NORMALIZATIONS = ("official", "legacy", "evalai")


def process_punctuation(text: str, comma_rule: re.Pattern = _COMMA_STRIP) -> str:
    out = text
    digit_comma = comma_rule.search(text) is not None
    for mark in PUNCTUATION:
        # Decided on the ORIGINAL text, applied to the running result, as upstream.
        if mark + " " in text or " " + mark in text or digit_comma:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD_STRIP.sub("", out, _MAX_PERIODS_REMOVED)


def process_digit_article(text: str) -> str:
    words = [NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    words = [word for word in words if word not in ARTICLES]
    return " ".join(CONTRACTIONS.get(word, word) for word in words)


def _one_line(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def evalai_normalize(text: str) -> str:
    """The EvalAI answer processor (MMF's `EvalAIAnswerProcessor`), applied to model and human answers alike."""
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    return process_digit_article(process_punctuation(_one_line(text), _EVALAI_COMMA_STRIP))


def normalize_answer(text: str, normalization: str = "official") -> str:
    """An answer as `normalization`'s evaluator normalises it ("official" and "legacy" do so only
    for questions whose human answers differ; see `question_accuracy`)."""
    _check(normalization)
    if normalization == "evalai":
        return evalai_normalize(text)
    return process_digit_article(process_punctuation(_one_line(text)))


def _check(normalization: str) -> None:
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"unknown VQA normalization {normalization!r}; choose one of {', '.join(NORMALIZATIONS)}")


def question_accuracy(prediction: str, human_answers: list, normalization: str = "official") -> float:
    """VQA accuracy in [0, 1]: min(1, matches / 3) averaged over the leave-one-out subsets.

    `human_answers`: the annotation's answer records (`answer`, `answer_id`, ...) or plain strings.
    As the VQA evaluators do, "leaving one out" drops every record equal to it, so records must
    differ (by answer_id); "evalai" leaves out by position, as TextVQA's evaluator does.
    """
    _check(normalization)
    records = [dict(a) if isinstance(a, dict) else {"answer": a, "answer_id": i} for i, a in enumerate(human_answers)]
    if normalization == "evalai":
        answers = [evalai_normalize(r["answer"]) for r in records]
        predicted = evalai_normalize(prediction)
        scores = [min(1.0, sum(1 for j, a in enumerate(answers) if j != i and a == predicted) / 3)
                  for i in range(len(answers))]
        return sum(scores) / len(scores)

    if normalization == "official":
        for r in records:
            r["answer"] = _one_line(r["answer"])
        predicted = _one_line(prediction)
        if len({r["answer"] for r in records}) > 1:
            for r in records:
                r["answer"] = normalize_answer(r["answer"])
            predicted = normalize_answer(predicted)
    else:  # legacy
        predicted = normalize_answer(prediction)
        if len({r["answer"] for r in records}) > 1:
            for r in records:
                r["answer"] = process_punctuation(r["answer"])
    scores = []
    for left_out in records:
        matches = sum(1 for r in records if r != left_out and r["answer"] == predicted)
        scores.append(min(1.0, matches / 3))
    return sum(scores) / len(scores)
