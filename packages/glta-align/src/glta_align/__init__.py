"""glta-align: graph embeddings as soft tokens in a frozen LLM, aligned in two stages.

Stage 2 (:func:`train_item_text`) trains the item projector and the GLLM head on
item-description reordering; stage 3 (:func:`train_user_item`) trains the user projector
and the head to emit a user's items at k output slots. :class:`GLTARecommender` loads a run
directory and ranks the catalogue.
"""

from glta_align.config import AlignConfigError, ItemTextConfig, UserItemConfig
from glta_align.item_text import ItemTextResult, train_item_text
from glta_align.llm import FrozenLLM, LLMError, LoraSettings, load_llm, load_tokenizer, tiny_llm
from glta_align.profiles import generate_profiles
from glta_align.projector import NodeProjector
from glta_align.recommender import GLTARecommender
from glta_align.splice import SoftPromptRunner, SoftSequence
from glta_align.user_item import UserItemResult, train_user_item

__all__ = [
    "AlignConfigError",
    "FrozenLLM",
    "GLTARecommender",
    "ItemTextConfig",
    "ItemTextResult",
    "LLMError",
    "LoraSettings",
    "NodeProjector",
    "SoftPromptRunner",
    "SoftSequence",
    "UserItemConfig",
    "UserItemResult",
    "generate_profiles",
    "load_llm",
    "load_tokenizer",
    "tiny_llm",
    "train_item_text",
    "train_user_item",
]

__version__ = "0.1.0"
