"""yoco_core: the compact YOCO / Transformer model core of the yoco toolkit."""
from .cache import KVBuffer, TransformerCache, YOCOCache
from .checkpoint import CheckpointError, load_model, model_from_state, register_loader, save_model
from .config import PRESETS, ModelConfig, get_config
from .generate import Generation, generate
from .model import YOCO, CausalLM, Transformer, build_model
from .tokenizer import ByteTokenizer, HFTokenizer, Tokenizer, tokenizer_for

from . import convert  # noqa: E402  (registers the hf: and unilm: loaders)

__version__ = "0.1.0"

__all__ = [
    "ModelConfig", "PRESETS", "get_config", "build_model", "load_model", "save_model", "model_from_state",
    "CheckpointError", "register_loader", "convert", "CausalLM", "YOCO", "Transformer", "YOCOCache",
    "TransformerCache", "KVBuffer", "Tokenizer", "ByteTokenizer", "HFTokenizer", "tokenizer_for",
    "generate", "Generation", "__version__",
]
