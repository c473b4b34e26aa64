"""Each algorithm's options and card, one file per algorithm (named as its module in alignkit/algorithms/).

Config-only: nothing here imports torch, Lightning or transformers, so `alignkit validate`, `show`, `list`
and `--help` start in about a second; the algorithm's module is imported when a run starts.
"""
