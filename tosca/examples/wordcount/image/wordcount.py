"""Count the words of every text file under a path; write the most frequent ones as TSV.

usage: wordcount.py [--top N] INPUT OUTPUT

INPUT is a file or a directory (read recursively); OUTPUT gets ``word<TAB>count`` lines, most
frequent first (ties in alphabetical order), and a ``#`` header with the totals. Runs with the
standard library only, inside the image or on any Python 3.
"""

from __future__ import annotations

import argparse
import collections
import pathlib
import re
import sys

WORD = re.compile("[^\\W\\d_]+(?:['\u2019][^\\W\\d_]+)*")  # letters, with inner apostrophes


def files_under(path: pathlib.Path) -> list[pathlib.Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("input", type=pathlib.Path)
    parser.add_argument("output", type=pathlib.Path)
    args = parser.parse_args(argv)
    if not args.input.exists():
        sys.stderr.write(f"wordcount: no such input: {args.input}\n")
        return 2
    counts: collections.Counter[str] = collections.Counter()
    files = files_under(args.input)
    for path in files:
        with path.open(encoding="utf-8", errors="replace") as fh:
            for line in fh:
                counts.update(w.lower() for w in WORD.findall(line))
    top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[: max(args.top, 0)]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with args.output.open("w", encoding="utf-8") as out:
        out.write(f"# files={len(files)} words={sum(counts.values())} distinct={len(counts)}\n")
        for word, n in top:
            out.write(f"{word}\t{n}\n")
    sys.stdout.write(f"counted {sum(counts.values())} words in {len(files)} file(s); top {len(top)} in {args.output}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
