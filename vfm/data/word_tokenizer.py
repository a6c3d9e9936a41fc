"""A word-level tokenizer trained on a small corpus, saved as a Hugging Face tokenizer folder (no download).

The generated caption sets have a vocabulary of a few dozen words; a sub-word tokenizer of 32,000 pieces would
make a tiny language model's embedding and output layers most of its parameters. The folder this writes loads
with `AutoTokenizer.from_pretrained` like any other: LLaMA's conventions (`<s>` prepended, `</s>` as the end of
a generated caption, `<pad>` for padding, `<unk>` for words outside the corpus), lower-cased, punctuation split.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")


def train_word_tokenizer(texts: Iterable[str], folder: str | Path) -> Path:
    """Fit a word vocabulary on `texts` and save the tokenizer under `folder`; returns the folder."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tokenizer.train_from_iterator(list(texts), trainers.WordLevelTrainer(special_tokens=list(SPECIAL_TOKENS)))
    bos = tokenizer.token_to_id("<s>")
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    tokenizer.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # joins words with spaces, tidies punctuation
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")
    folder = Path(folder)
    fast.save_pretrained(str(folder))
    return folder
