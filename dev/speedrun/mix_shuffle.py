"""Issue 17/16 GPU runs: techdocs + nltkprose shards pooled, documents shuffled (seed 1337), re-sharded.
    python dev/speedrun/mix_shuffle.py   ->  .llmc/data_mix (edit the folders below)  (val 1,048,576 tokens, train shards of 2M)"""
import numpy as np
from gpt2pipe import config
from gpt2pipe.data.llmc_format import ShardSet, read_shard, ShardWriter

EOT = 50256
docs = []
for root in [".llmc/data", ".llmc/data_prose"]:
    s = ShardSet.open(root)
    toks = np.concatenate([np.asarray(read_shard(p)) for p in s.val + s.train])
    starts = np.flatnonzero(toks == EOT)
    assert starts[0] == 0, root
    docs += np.split(toks, starts[1:])
rng = np.random.default_rng(1337)
order = rng.permutation(len(docs))
cfg = config.from_dict({"data": {"name": "mix", "source": "text", "paths": [], "shard_tokens": 2_000_000,
                                 "val_tokens": 1_048_576}}, "mix").data
with ShardWriter(cfg, ".llmc/data_mix") as w:
    for i in order:
        w.add(docs[i].astype(np.uint16))
print(len(docs), "documents", w.manifest["tokens"], "tokens", w.manifest["shard_tokens"])
