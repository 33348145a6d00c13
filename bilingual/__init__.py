"""bilingual: long-context bilingual text-embedding models (JinaBERT) in JAX/Flax."""

from bilingual.config import ConfigError, EncoderConfig, get_config, PRESETS
from bilingual.modeling import EncoderOutput, JinaBert, JinaBertForMaskedLM, mean_pool

__all__ = ["ConfigError", "EncoderConfig", "EncoderOutput", "JinaBert", "JinaBertForMaskedLM",
           "PRESETS", "get_config", "mean_pool"]
