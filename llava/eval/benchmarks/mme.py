"""MME: yes/no questions, two per image, in 10 perception and 4 cognition tasks.

Official files: `MME_Benchmark_release_version/<task>/`, either images and `<image stem>.txt`
side by side, or `images/` and `questions_answers_YN/`; each .txt holds `question<TAB>answer`
lines. The question's " Please answer yes or no." becomes official LLaVA's short-answer suffix
(as its `llava_mme.jsonl`). Scores are MME's own `eval_tool/calculation.py`: an answer is yes/no
when it is exactly that, else when its first four characters contain "yes" (then "no"), else
"other"; a task scores accuracy + accuracy+ (both questions of an image right), in percent; the
perception and cognition scores are the sums over their tasks.
"""

from __future__ import annotations

import os

from llava.eval.benchmarks.common import SHORT_ANSWER, Answers, with_suffix
from llava.eval.benchmarks.registry import Benchmark, register

PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork", "OCR")
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


def _image_for(image_dir: str, stem: str, txt: str) -> str:
    for ext in IMAGE_EXTENSIONS:
        if os.path.exists(os.path.join(image_dir, stem + ext)):
            return stem + ext
    raise FileNotFoundError(f"{txt}: no image {stem}.png/.jpg in {image_dir}")


def load_items(data_dir: str) -> list[dict]:
    """Every question: `question_id, task, image (relative to data_dir), question, answer`."""
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"--data-dir {data_dir} is not a directory (MME_Benchmark_release_version)")
    items = []
    for task in sorted(os.listdir(data_dir)):
        task_dir = os.path.join(data_dir, task)
        if not os.path.isdir(task_dir):
            continue
        if task not in PERCEPTION + COGNITION:
            raise ValueError(f"{task_dir}: not an MME task (expected one of {PERCEPTION + COGNITION})")
        nested = os.path.isdir(os.path.join(task_dir, "images"))
        image_dir = os.path.join(task_dir, "images") if nested else task_dir
        qa_dir = os.path.join(task_dir, "questions_answers_YN") if nested else task_dir
        for txt in sorted(f for f in os.listdir(qa_dir) if f.endswith(".txt")):
            path = os.path.join(qa_dir, txt)
            image = os.path.relpath(os.path.join(image_dir, _image_for(image_dir, txt[:-4], path)), data_dir)
            with open(path, encoding="utf-8") as f:
                lines = [line.rstrip("\n").rstrip("\r") for line in f if line.strip()]
            for k, line in enumerate(lines):
                fields = line.strip().split("\t")
                if len(fields) != 2 or fields[1].lower() not in ("yes", "no"):
                    raise ValueError(f"{path}:{k + 1} is not `question<TAB>yes|no`: {line!r}")
                items.append({"question_id": f"{image}#{k}", "task": task, "image": image, "question": fields[0], "answer": fields[1].lower()})
    if not items:
        raise FileNotFoundError(f"no MME task folders with questions in {data_dir}")
    return items


def llava_question(question: str) -> str:
    for tail in ("  Please answer yes or no.", " Please answer yes or no."):
        if question.endswith(tail):
            question = question[: -len(tail)]
            break
    return with_suffix(question, SHORT_ANSWER)


def parse_yes_no(text: str) -> str:
    text = text.lower()
    if text in ("yes", "no"):
        return text
    if "yes" in text[:4]:
        return "yes"
    return "no" if "no" in text[:4] else "other"


@register
class MME(Benchmark):
    name = "mme"
    title = "MME"
    folder = "MME"
    output = "local"
    normalization = "lower-cased; exactly yes/no, else `yes`/`no` within the first 4 characters (MME calculation.py)"

    def add_convert_arguments(self, parser):
        parser.add_argument("--data-dir", required=True, help="MME_Benchmark_release_version")

    def convert(self, args):
        return [
            {"question_id": it["question_id"], "image": it["image"], "text": llava_question(it["question"]), "category": it["task"]}
            for it in load_items(args.data_dir)
        ]

    def add_score_arguments(self, parser):
        parser.add_argument("--data-dir", required=True, help="MME_Benchmark_release_version (the answers)")

    def score(self, args, answers):
        items = load_items(args.data_dir)
        found = Answers(answers, [it["question_id"] for it in items], args.allow_missing)
        by_image: dict[tuple, list[bool]] = {}
        for it in items:
            by_image.setdefault((it["task"], it["image"]), []).append(parse_yes_no(found.text(it["question_id"])) == it["answer"])
        tasks = {}
        for task in PERCEPTION + COGNITION:
            images = [right for (t, _), right in by_image.items() if t == task]
            if not images:
                continue
            answered = [r for rights in images for r in rights]
            accuracy = 100.0 * sum(answered) / len(answered)
            accuracy_plus = 100.0 * sum(all(rights) for rights in images) / len(images)
            tasks[task] = {"score": accuracy + accuracy_plus, "accuracy": accuracy, "accuracy_plus": accuracy_plus}
        result = {
            "perception": sum(tasks[t]["score"] for t in PERCEPTION if t in tasks),
            "cognition": sum(tasks[t]["score"] for t in COGNITION if t in tasks),
            "tasks": tasks,
            "missing": found.missing,
        }
        absent = [t for t in PERCEPTION + COGNITION if t not in tasks]
        if absent:
            result["tasks_absent"] = absent  # a partial MME: the sums are not comparable to published ones
        return result
