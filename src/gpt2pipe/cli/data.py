"""Data subcommands: corpus, tokenize, fineweb, encode, shard, hellaswag — text in, llm.c `.bin` files out."""

from __future__ import annotations

import argparse
from pathlib import Path

from gpt2pipe import Gpt2pipeError, layout
from gpt2pipe.cli.options import add_subcommand, load_config


def cmd_corpus(args: argparse.Namespace) -> None:
    from gpt2pipe.data.corpus import write_corpus

    cfg = load_config(args)
    out = args.out or layout.corpus_dir(cfg.raw)
    files = write_corpus(cfg.data, out)
    print(f"corpus: {len(files)} parquet file(s) in {out}")


def cmd_tokenize(args: argparse.Namespace) -> None:
    from gpt2pipe.data.corpus import read_corpus
    from gpt2pipe.data.tokenize import tokenize_to_shards

    cfg = load_config(args)
    corpus = args.corpus or layout.corpus_dir(cfg.raw)
    out = args.out or layout.shard_dir(cfg.raw)
    m = tokenize_to_shards(read_corpus(corpus), cfg.data, out)
    print(f"tokenize: {m['tokens']:,} tokens in {len(m['val'])} val + {len(m['train'])} train shard(s) in {out}")


def cmd_fineweb(args: argparse.Namespace) -> None:
    from gpt2pipe.data import fineweb

    cfg = load_config(args)
    listing_path = args.listing or layout.fineweb_dir(cfg.raw) / "files.json"
    if args.action == "list":
        listing = fineweb.list_files(cfg.data.hf_repo, cfg.data.hf_subset, cfg.data.hf_revision)
        listing.save(listing_path)
        size = sum(f.size for f in listing.files)
        print(f"fineweb: {len(listing.files)} files, {size / 1e9:.2f} GB, in {listing.repo} {listing.subset} "
              f"@ {listing.commit} -> {listing_path}")
        return
    listing = fineweb.Listing.load(listing_path)
    wanted = (cfg.data.hf_repo, cfg.data.hf_subset, cfg.data.hf_revision)
    if (listing.repo, listing.subset, listing.revision) != wanted:
        raise Gpt2pipeError(f"{listing_path} lists {listing.repo} {listing.subset}@{listing.revision}, the config "
                            f"asks for {wanted[0]} {wanted[1]}@{wanted[2]}: run `gpt2pipe fineweb list` again")
    names = [f.stem for f in listing.files] if args.all else args.file
    if not names:
        raise Gpt2pipeError("fineweb download: name files with --file, or pass --all")
    if args.out and len(names) > 1:
        raise Gpt2pipeError("fineweb download: --out takes one --file")
    for name in names:
        out = args.out or layout.fineweb_dir(cfg.raw) / "raw" / f"{listing.file(name).stem}.parquet"
        fineweb.download_file(listing, name, out)
        print(f"fineweb: {name} -> {out}")


def cmd_encode(args: argparse.Namespace) -> None:
    from gpt2pipe.data.tokenize import encode_parquet

    cfg = load_config(args)
    n = encode_parquet(args.input, args.out, cfg.data.workers, args.max_tokens)
    print(f"encode: {n:,} tokens from {args.input} -> {args.out}")


def cmd_shard(args: argparse.Namespace) -> None:
    from gpt2pipe.data.tokenize import shards_from_token_files

    cfg = load_config(args)
    out = args.out or layout.shard_dir(cfg.raw)
    m = shards_from_token_files(args.tokens, cfg.data, out)
    print(f"shard: {m['tokens']:,} tokens in {len(m['val'])} val + {len(m['train'])} train shard(s) in {out}")


def cmd_hellaswag(args: argparse.Namespace) -> None:
    from gpt2pipe.eval import hellaswag

    cfg = load_config(args)
    src = args.source or cfg.eval.hellaswag
    out = args.out or layout.hellaswag_bin(cfg.raw, src)
    if src == "demo":
        path = hellaswag.demo_jsonl()
    elif src == "full":
        path = hellaswag.fetch_full(out.with_suffix(".jsonl"))
    else:
        path = Path(src)
    examples = hellaswag.load(path)
    hellaswag.write_bin(out, examples)
    print(f"hellaswag: {len(examples)} examples from {path} -> {out}")


def register(sub) -> None:
    p = add_subcommand(sub, "corpus", "gather the corpus into parquet documents", cmd_corpus)
    p.add_argument("--out", type=Path, help="output folder (default: <results>/data/<data.name>/corpus)")

    p = add_subcommand(sub, "tokenize", "tokenize the corpus into llm.c shards (val shard first)", cmd_tokenize)
    p.add_argument("--corpus", type=Path, help="corpus folder (default: <results>/data/<data.name>/corpus)")
    p.add_argument("--out", type=Path, help="shard folder (default: <results>/data/<data.name>/shards)")

    p = add_subcommand(sub, "fineweb", "list a FineWeb subset's files on the hub, or download some of them",
                       cmd_fineweb)
    p.add_argument("action", choices=["list", "download"],
                   help="list: resolve data.hf_revision and write the file listing (sizes, sha256); "
                   "download: fetch listed files through the hub cache and verify them")
    p.add_argument("--listing", type=Path,
                   help="file listing (default: <results>/data/<data.name>/fineweb/files.json)")
    p.add_argument("--file", action="append", default=[], metavar="NAME",
                   help="a listed file by stem (000_00000) or path (repeatable)")
    p.add_argument("--all", action="store_true", help="every listed file, one after another")
    p.add_argument("--out", type=Path,
                   help="where to put the one --file (default: <data>/fineweb/raw/<stem>.parquet)")

    p = add_subcommand(sub, "encode", "tokenize one parquet file into one llm.c-format token file (streaming)",
                       cmd_encode)
    p.add_argument("--input", type=Path, required=True, help="parquet file with a 'text' column")
    p.add_argument("--out", type=Path, required=True, help="token file to write (.bin)")
    p.add_argument("--max-tokens", type=int, help="stop after this many tokens (default: the whole file; "
                   "`shard` applies data.max_tokens)")

    p = add_subcommand(sub, "shard", "concatenate token files, in order, into llm.c shards (val first)", cmd_shard)
    p.add_argument("tokens", nargs="+", type=Path, help="token files written by `gpt2pipe encode`")
    p.add_argument("--out", type=Path, help="shard folder (default: <results>/data/<data.name>/shards)")

    p = add_subcommand(sub, "hellaswag", "prepare HellaSwag as llm.c's eval .bin", cmd_hellaswag)
    p.add_argument("--source", help="demo, full or a .jsonl/.bin path (default: eval.hellaswag)")
    p.add_argument("--out", type=Path,
                   help="output .bin (default: <results>/data/hellaswag/hellaswag_<source>.bin)")
