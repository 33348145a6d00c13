"""Hugging Face export and import of bilingual encoders (the public JinaBERT layout).

``hf_export.export_hf`` writes a directory that loads with ``transformers.AutoModel`` and
``sentence_transformers.SentenceTransformer``; ``hf_import.import_hf`` reads such a directory (ours or a
published JinaBERT one) back into Flax parameters. ``hf_code/`` holds the PyTorch implementation that is
copied beside the weights. ``hf_classifier.export_classifier`` / ``import_classifier`` do the same for a
fine-tuned ``bilingual.heads`` sequence classifier or regressor (``JinaBertForSequenceClassification``).
"""
