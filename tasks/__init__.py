"""Data for training: seqio vocabulary, sources, preprocessors, task registration, mixtures and batching.

``vocabulary`` (seqio vocabulary over the byte-level BPE tokenizer), ``row_parser`` (which cells feed which
feature), ``records`` (record-addressable rows: indexed text files, ArrayRecord), ``sources`` (validated
TSV/JSONL/text/ArrayRecord and BEIR sources), ``batch_jobs`` (the index order and the per-index work of the
input workers), ``preprocessors`` (tf.data tokenisation per task type), ``mlm`` (packing and whole-word
masking), ``registry`` (registering tasks, gin entry points), ``mixtures`` (single-task-per-batch mixtures),
``run_data`` (``register_data``: the gin entry point for a run's data),
``batching`` (``make_batch_iterator``: the trainer's entry point), ``demo`` (the bundled demo tasks) and
``build_demo_data`` (rebuilds ``data/demo/train``). ``finetune_data`` (labelled probe tasks for the
``finetune`` stage: plain numpy, no seqio) and ``build_finetune_data`` (rebuilds ``data/finetune``).
"""
