"""bilingual: long-context bilingual text-embedding models (JinaBERT) in JAX/Flax."""

from bilingual.config import ConfigError, EncoderConfig, get_config, PRESETS
from bilingual.modeling import EncoderOutput, JinaBert, JinaBertForMaskedLM, mean_pool


def __getattr__(name):
    # The Encoder API pulls in tokenizers/transformers; import it only when asked for.
    if name == "Encoder":
        from bilingual.encoder_api import Encoder
        return Encoder
    raise AttributeError(f"module 'bilingual' has no attribute {name!r}")


__all__ = ["ConfigError", "Encoder", "EncoderConfig", "EncoderOutput", "JinaBert", "JinaBertForMaskedLM",
           "PRESETS", "get_config", "mean_pool"]
