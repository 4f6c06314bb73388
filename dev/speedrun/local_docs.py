"""A corpus from this machine's own documentation, for the fp8 quality runs (issue 24) where FineWeb cannot be
reached and the earlier techdocs+prose mix (mix_shuffle.py) is not at hand: the English manual pages
(/usr/share/man/man*) with their troff markup thinned, then the files of /usr/share/doc (changelogs, READMEs,
guides), decompressed, each file one document. Left out: the Google Cloud SDK's ~16,600 generated `gcloud`
pages (one template filled in again and again), license texts (`copyright` files, the same few licences
thousands of times), binary files, PostScript, files over 1M characters (build logs, font tables) and any
document whose text was already taken (by content).
Sorted by path, so one machine image gives one corpus; what the image holds decides how many tokens there are.

    python dev/speedrun/local_docs.py [--out results/local_docs/local_docs.txt] [--max-mb 50]
    gpt2pipe corpus -c dev/speedrun/local_docs.yaml && gpt2pipe tokenize -c dev/speedrun/local_docs.yaml
    # -> results/data/local_docs/shards: DATA for dev/fp8_quality.sh
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import re
from collections.abc import Iterator
from pathlib import Path

SEPARATOR = "\n<|doc|>\n"  # dev/speedrun/local_docs.yaml's data.text_separator
MAX_DOCUMENT = 1_000_000  # characters; the larger files are build logs, PostScript and font tables
TROFF_ESCAPES = re.compile(r"\\f(\[[^]]*\]|\(..|.)|\\&|\\[|^]|\\\*\(..|\\\*.|\\\(..")
# requests whose arguments are text (headings, bold/italic runs; mdoc's name and description lines)
TEXT_REQUESTS = {"SH", "SS", "B", "I", "BI", "BR", "IB", "IR", "RB", "RI", "SM", "Nm", "Nd", "Sh", "Ss", "Fl", "Ar"}


def read_text(path: Path) -> str | None:
    """A file's text (gunzipped), None when it is not UTF-8 text."""
    try:
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        if b"\0" in data[:4096]:
            return None
        return data.decode("utf-8")
    except (OSError, EOFError, UnicodeDecodeError, gzip.BadGzipFile):
        return None


def man_page(text: str) -> str:
    """A manual page's text: the troff requests dropped (the macro set pod2man puts before thousands of pages
    among them) but for those whose arguments are text, font and string escapes removed, `\\-` as `-`."""
    lines, in_macro = [], False
    for line in text.splitlines():
        if in_macro or line.startswith((".de ", ".de\t", ".de1 ", ".am ")):  # a macro's body: troff code, not text
            in_macro = line.strip() != ".."
            continue
        if line[:1] in (".", "'"):
            request, _, rest = line[1:].strip().partition(" ")
            if request not in TEXT_REQUESTS or not rest:
                continue
            line = rest.replace('"', "")
        lines.append(TROFF_ESCAPES.sub("", line).replace("\\-", "-").replace("\\e", "\\"))
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines))


def documents() -> Iterator[tuple[Path, str]]:
    for path in sorted(Path("/usr/share/man").glob("man*/*")):
        if (path.is_file() and not path.is_symlink() and not path.name.startswith("gcloud")
                and (text := read_text(path))):
            yield path, man_page(text)
    for path in sorted(Path("/usr/share/doc").rglob("*")):
        if (path.is_file() and not path.is_symlink() and path.name != "copyright"
                and (text := read_text(path))):
            yield path, text


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("results/local_docs/local_docs.txt"))
    p.add_argument("--max-mb", type=float, default=50.0, help="stop after this much text (~3 bytes a token: 50 MB, ~17M tokens, 33 MB of shards fit a device call's 64 MiB carry)")
    a = p.parse_args()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    seen: set[bytes] = set()
    written = docs = 0
    with a.out.open("w", encoding="utf-8") as out:
        for _, text in documents():
            text = text.strip().replace(SEPARATOR.strip(), "")
            digest = hashlib.sha1(text.encode()).digest()
            if not 200 <= len(text) <= MAX_DOCUMENT or text.startswith("%!PS") or digest in seen:
                continue
            seen.add(digest)
            out.write(text + SEPARATOR)
            written += len(text.encode()) + len(SEPARATOR)
            docs += 1
            if written >= a.max_mb * 1e6:
                break
    print(f"{a.out}: {docs:,} documents, {written / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
