"""A small byte-level BPE tokenizer trained on the fly (nothing is downloaded), RoBERTa specials
``<s>=0 <pad>=1 </s>=2 <unk>=3 <mask>=4``, wrapped as a ``transformers`` fast tokenizer."""

import functools
import pathlib
import tempfile

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
DEMO = pathlib.Path(__file__).resolve().parent.parent / "data" / "demo" / "eval"

EXTRA_TEXTS = [
    "Ein Mädchen bürstet sich die Haare.", "A girl is brushing her hair.", "Una chica se cepilla el pelo.",
    "Der Hund läuft über die Wiese.", "The dog runs across the meadow.", "El perro corre por el prado.",
]


def _corpus() -> list[str]:
    texts = list(EXTRA_TEXTS)
    for path in sorted(DEMO.rglob("*.tsv")):
        for line in path.read_text(encoding="utf-8").splitlines()[1:]:
            texts.extend(cell for cell in line.split("\t") if len(cell) > 3)
    return texts


@functools.lru_cache(maxsize=None)
def build_tokenizer(vocab_size: int = 1000) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_corpus(), trainer)
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0), trim_offsets=False)
    assert [tok.token_to_id(t) for t in SPECIALS] == [0, 1, 2, 3, 4]
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>", mask_token="<mask>", cls_token="<s>", sep_token="</s>",
                                   model_max_length=8192)


@functools.lru_cache(maxsize=None)
def tokenizer_dir() -> pathlib.Path:
    directory = pathlib.Path(tempfile.mkdtemp(prefix="bilingual-test-tokenizer-"))
    build_tokenizer().save_pretrained(str(directory))
    return directory


def write_tiny_checkpoint(path: pathlib.Path, seed: int = 0):
    """An untrained ``tiny`` encoder saved at ``path`` as step 10 with the fixture tokenizer; its
    ``(config, params)``. For tests that load a checkpoint the way a user does (``Encoder.from_checkpoint``)."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from bilingual import JinaBert, get_config
    from bilingual.artifacts import save_model

    config = get_config("tiny", vocab_size=len(build_tokenizer()))
    params = nn.meta.unbox(JinaBert(config).init(jax.random.key(seed), jnp.zeros((1, 4), jnp.int32))["params"])
    save_model(path, 10, config, params, tokenizer=tokenizer_dir())
    return config, params
