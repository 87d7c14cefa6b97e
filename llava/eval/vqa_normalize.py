"""Answer normalisation of the official VQA evaluator (GT-Vision-Lab/VQA, `vqaEval.py`), reproduced exactly.

Its quirks are kept on purpose, because published numbers depend on them:
- the model's answer is always normalised (punctuation, then number words / articles / contractions);
- human answers get only the punctuation step, and only when they are not all identical;
- a punctuation mark next to a space (or any text with a digit,digit comma) is deleted, otherwise
  it becomes a space; the period rule's lookbehind is malformed upstream (it is a lookahead for
  "<=digit"), so every period not followed by a digit goes, and at most 32 of them (upstream passes
  `re.UNICODE` where `sub` expects a count).
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
_MAX_PERIODS_REMOVED = int(re.UNICODE)  # upstream's accidental `count` argument (32)


def process_punctuation(text: str) -> str:
    out = text
    digit_comma = _COMMA_STRIP.search(text) is not None
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


def normalize_answer(text: str) -> str:
    """The model's answer as the evaluator compares it."""
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(text))


def question_accuracy(prediction: str, human_answers: list[dict]) -> float:
    """VQA accuracy in [0, 1]: min(1, matches / 3) averaged over the leave-one-out subsets.

    `human_answers` are the annotation's answer records (`answer`, `answer_id`, ...). As upstream,
    "leaving one out" drops every record equal to it, so records must differ (by answer_id).
    """
    predicted = normalize_answer(prediction)
    answers = [dict(a) for a in human_answers]
    if len({a["answer"] for a in answers}) > 1:
        for a in answers:
            a["answer"] = process_punctuation(a["answer"])
    scores = []
    for left_out in answers:
        others = [a for a in answers if a != left_out]
        matches = sum(1 for a in others if a["answer"] == predicted)
        scores.append(min(1.0, matches / 3))
    return sum(scores) / len(scores)
