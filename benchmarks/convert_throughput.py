"""Throughput and peak memory of the Instruct converter on a synthetic mix665k-style file.

Generates a JSON array of Instruct-style records (multi-turn, ~15% text-only, some with the
<image> marker misplaced) of about --size-mb, runs `python -m llava.data.instruct` on it in a
child process, and prints records/s, MB/s and the child's peak RSS (resource.getrusage).

  python benchmarks/convert_throughput.py --size-mb 1024
  python benchmarks/convert_throughput.py --size-mb 200 -- --split-turns --sort-by-length asc
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = (
    "the a bus red white man woman dog cat table street sign image shows large small two three "
    "standing sitting near behind people car train window building sky tree green blue water"
).split()


def sentence(rng: random.Random, low: int, high: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high))).capitalize() + "."


def synthetic_record(rng: random.Random) -> dict:
    """An Instruct-style record without its id (the id is spliced in when writing)."""
    pairs = rng.choice((1, 1, 2, 3, 4, 6))
    turns = []
    for _ in range(pairs):
        turns.append({"from": "human", "value": sentence(rng, 5, 15).rstrip(".") + "?"})
        turns.append({"from": "gpt", "value": " ".join(sentence(rng, 4, 20) for _ in range(rng.randint(1, 8)))})
    record = {}
    if rng.random() < 0.85:
        record["image"] = f"coco/train2017/{rng.randrange(10**6):012d}.jpg"
        marker_first = rng.random() < 0.8
        turns[0]["value"] = f"<image>\n{turns[0]['value']}" if marker_first else f"{turns[0]['value']}\n<image>"
    record["conversations"] = turns
    return record


def generate(path: str, size_mb: float, seed: int, pool_size: int = 5000) -> int:
    """Write about size_mb of records, one per line; returns the count.

    Bodies come from a pool of pre-serialised random records (generating each one fresh would
    make this script slower than the converter it measures); every record gets its own id.
    """
    rng, target, written, count = random.Random(seed), size_mb * (1 << 20), 0, 0
    pool = [json.dumps(synthetic_record(rng))[1:] for _ in range(pool_size)]
    with open(path, "w", encoding="utf-8") as f:
        f.write("[")
        while written < target:
            text = ("\n" if count == 0 else ",\n") + f'{{"id": "{count:09d}", ' + pool[count % pool_size]
            f.write(text)
            written += len(text)
            count += 1
        f.write("\n]\n")
    return count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=float, default=1024, help="synthetic input size (default 1024 = 1 GB)")
    parser.add_argument("--workdir", help="where to put the files (default: a temporary folder, removed afterwards)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("converter_args", nargs="*", help="extra converter flags after --, e.g. -- --split-turns")
    args = parser.parse_args()

    workdir = args.workdir or tempfile.mkdtemp(prefix="convert-bench-")
    os.makedirs(workdir, exist_ok=True)
    source, output = os.path.join(workdir, "synthetic_instruct.json"), os.path.join(workdir, "converted.json")
    try:
        start = time.perf_counter()
        records = generate(source, args.size_mb, args.seed)
        size_mb = os.path.getsize(source) / (1 << 20)
        print(f"generated {records} records, {size_mb:.0f} MB in {time.perf_counter() - start:.0f} s")

        command = [
            sys.executable,
            "-m",
            "llava.data.instruct",
            "--input",
            source,
            "--output",
            output,
            *args.converter_args,
        ]
        env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
        start = time.perf_counter()
        subprocess.run(command, check=True, env=env, stderr=subprocess.DEVNULL)
        seconds = time.perf_counter() - start
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB on Linux
        print(f"converter: {' '.join(command[1:4])} ... {' '.join(args.converter_args)}")
        print(f"  input            {size_mb:.0f} MB, {records} records")
        print(f"  time             {seconds:.1f} s")
        print(f"  throughput       {records / seconds:,.0f} records/s, {size_mb / seconds:.1f} MB/s")
        print(f"  peak RSS         {peak_mb:.0f} MB ({peak_mb / size_mb:.2f}x the input)")
        print(f"  output           {os.path.getsize(output) / (1 << 20):.0f} MB")
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
