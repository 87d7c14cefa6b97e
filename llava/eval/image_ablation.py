"""Does the model look at the image? The same questions with real, blank and shuffled images, scored.

    python -m llava.eval.image_ablation --model-path checkpoints/llava-phi \
        --question-file playground/data/demo/eval_questions.jsonl \
        --image-folder playground/data/demo/images \
        --annotation-file playground/data/demo/eval_annotations.json --out-dir checkpoints/ablation

Loads the model once and runs `llava.eval.model_vqa` three times: with the questions' own images
(`real`), with a uniform image of the same size (`blank`) and with another question's image
(`shuffled`, a fixed derangement of the file's distinct images, through which each image of a
multi-image question is swapped too; videos are swapped among the file's videos). Each answers file
(answers-real.jsonl, answers-blank.jsonl, answers-shuffle.jsonl in --out-dir) is scored with the VQA
accuracy of `llava.eval.eval_okvqa`, and a table (per question `category` when the question file has
one) is printed beside the majority-answer baseline: each category's most common human answer in the
annotation file, given to every question, the accuracy of answering from the question type alone. A
model that reads the image loses accuracy without it; one whose blank-image accuracy stays within
--min-drop points of its real-image accuracy answers from the question alone, and the verdict says
so. The table is also written to --out-dir/ablation.json and ablation.txt.
"""

from __future__ import annotations

import argparse
import json
import os
from collections import Counter, defaultdict

from llava import errors
from llava.eval import eval_okvqa, model_vqa
from llava.eval.vqa_normalize import NORMALIZATIONS, question_accuracy

CONDITIONS = (("real", "none"), ("blank", "blank"), ("shuffled", "shuffle"))


def answers_path(out_dir: str, ablation: str) -> str:
    return os.path.join(out_dir, f"answers-{'real' if ablation == 'none' else ablation}.jsonl")


def question_categories(questions: list[dict]) -> dict[str, str] | None:
    """question id (as text) -> category, or None when no question has one."""
    if not any("category" in q for q in questions):
        return None
    return {str(q["question_id"]): str(q.get("category", "none")) for q in questions}


def by_category(per_question: dict, categories: dict[str, str] | None) -> dict[str, float]:
    """Mean accuracy (percent) per category; {} without categories."""
    if categories is None:
        return {}
    groups = defaultdict(list)
    for qid, accuracy in per_question.items():
        groups[categories[str(qid)]].append(accuracy)
    return {name: round(sum(v) / len(v), 2) for name, v in sorted(groups.items())}


def majority_baseline(annotations: list[dict], categories: dict[str, str] | None, normalization: str) -> dict:
    """The accuracy of answering every question with its group's most common human answer.

    Groups are the question file's categories, else the annotations' question_type. Taken from the
    evaluated annotations themselves, so it is the best a question-type-only prior can do here.
    """
    def group(ann):
        return categories[str(ann["question_id"])] if categories is not None else ann.get("question_type", "all")

    counts = defaultdict(Counter)
    for ann in annotations:
        counts[group(ann)].update(a["answer"] for a in ann["answers"])
    majority = {name: counter.most_common(1)[0][0] for name, counter in counts.items()}
    per_question = {ann["question_id"]: 100 * question_accuracy(majority[group(ann)], ann["answers"], normalization)
                    for ann in annotations}
    overall = round(sum(per_question.values()) / len(per_question), 2)
    return {"overall": overall, "per_category": by_category(per_question, categories), "answer": majority}


def verdict(real: float, blank: float, shuffled: float, min_drop: float) -> tuple[bool, str]:
    """(whether the model reads the image, a one-line verdict)."""
    drop = real - blank
    if drop < min_drop:
        return False, (f"WARNING: accuracy with blank images is within {min_drop:g} points of real images "
                       f"({blank:.2f} vs {real:.2f}; shuffled {shuffled:.2f}): the model answers from the question "
                       "alone. See docs/evaluation.md, 'Does the model look at the image?'")
    return True, (f"the model reads the image: blank images drop accuracy by {drop:.2f} points, "
                  f"shuffled ones by {real - shuffled:.2f}")


def format_table(result: dict) -> str:
    rows = ["overall", *result["conditions"]["real"]["per_category"]]
    header = f"  {'':<14}{'real':>8}{'blank':>8}{'shuffled':>10}{'majority':>10}"
    lines = [f"Image ablation: {result['questions']} questions, VQA accuracy ({result['normalization']} normalization)",
             header]
    for row in rows:
        def value(scores):
            return scores["overall"] if row == "overall" else scores["per_category"].get(row, float("nan"))

        c = result["conditions"]
        lines.append(f"  {row:<14}{value(c['real']):>8.2f}{value(c['blank']):>8.2f}{value(c['shuffled']):>10.2f}"
                     f"{value(result['majority_baseline']):>10.2f}")
    lines.append(result["verdict"])
    return "\n".join(lines)


def run_ablation(args) -> dict:
    questions = model_vqa.read_questions(args.question_file)
    problem = model_vqa.shuffle_problem(questions)  # fail before the model loads
    if problem:
        raise ValueError(f"--question-file {args.question_file}: the shuffled-image condition {problem}")
    annotations = eval_okvqa.load_annotations(args.annotation_file)
    question_ids = {eval_okvqa._key(q["question_id"]) for q in questions}
    categories = question_categories(questions)
    os.makedirs(args.out_dir, exist_ok=True)

    from llava.inference import InferenceEngine

    engine = InferenceEngine.from_pretrained(
        args.model_path, args.model_base, args.conv_mode, load_4bit=args.load_4bit, load_8bit=args.load_8bit
    )
    conditions, files = {}, {}
    for name, ablation in CONDITIONS:
        path = answers_path(args.out_dir, ablation)
        if os.path.exists(path):
            os.remove(path)  # answers of an earlier model must not be resumed into this table
        run_args = argparse.Namespace(**vars(args), answers_file=path, num_chunks=1, chunk_idx=0, image_ablation=ablation)
        model_vqa.eval_model(run_args, engine)
        scores = eval_okvqa.evaluate(annotations, eval_okvqa.load_results(path), question_ids,
                                     normalization=args.normalization)
        conditions[name] = {"overall": scores["overall"], "per_category": by_category(scores["per_question"], categories)}
        files[name] = path

    real, blank, shuffled = (conditions[name]["overall"] for name, _ in CONDITIONS)
    reads_image, line = verdict(real, blank, shuffled, args.min_drop)
    result = {
        "model_path": args.model_path,
        "questions": len(questions),
        "normalization": args.normalization,
        "conditions": conditions,
        "majority_baseline": majority_baseline(annotations, categories, args.normalization),
        "reads_image": reads_image,
        "min_drop": args.min_drop,
        "verdict": line,
        "answers_files": files,
    }
    table = format_table(result)
    print(table)
    with open(os.path.join(args.out_dir, "ablation.json"), "w") as f:
        json.dump(result, f, indent=2)
    with open(os.path.join(args.out_dir, "ablation.txt"), "w") as f:
        f.write(table + "\n")
    print(f"wrote {os.path.join(args.out_dir, 'ablation.json')}")
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    model_vqa.add_model_flags(parser)
    parser.add_argument("--annotation-file", "--gt", required=True, help="official VQA annotations JSON")
    parser.add_argument("--out-dir", required=True, help="answers per condition, ablation.json and ablation.txt go here")
    parser.add_argument("--normalization", choices=NORMALIZATIONS, default="official",
                        help="VQA answer normalisation (see llava.eval.eval_okvqa)")
    parser.add_argument("--min-drop", type=float, default=5.0,
                        help="blank images must cost at least this many accuracy points, else the verdict warns")
    return parser


def main(argv=None) -> dict:
    args = model_vqa.parse_cli(build_parser(), argv)
    with errors.exit_on_clear_error("image_ablation"):
        return run_ablation(args)


if __name__ == "__main__":
    errors.run(main)
