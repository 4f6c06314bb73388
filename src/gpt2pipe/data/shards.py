"""Old name of llmc_format (shard I/O) and tokenize (the encoding pool), kept so imports from branches
merged alongside keep working; import from those modules instead."""

from gpt2pipe.data.llmc_format import (HEADER_BYTES, MAGIC, MANIFEST, VERSION, ShardSet,  # noqa: F401
                                       ShardWriter, TokenFile, read_shard, write_shard)
from gpt2pipe.data.tokenize import encode_parquet, shards_from_token_files, tokenize_to_shards  # noqa: F401
