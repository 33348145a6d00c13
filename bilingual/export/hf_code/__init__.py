"""The PyTorch JinaBERT shipped inside every export (``configuration_bert.py``, ``modeling_bert.py``).

These files import only torch and transformers: they are copied verbatim into export directories and loaded
by ``transformers`` with ``trust_remote_code=True``. They are importable here too, for tests.
"""
