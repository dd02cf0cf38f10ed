"""feather_mini: visual-token pruning for LLaVA-style models, small enough to read."""
from .model import (CheckpointError, Generation, KVCache, LlavaConfig, LlavaForConditionalGeneration,
                    TextConfig, VisionConfig, load_model, load_pretrained)
from .processing import Inputs, Processor

__all__ = ["CheckpointError", "Generation", "Inputs", "KVCache", "LlavaConfig", "LlavaForConditionalGeneration",
           "Processor", "TextConfig", "VisionConfig", "load_model", "load_pretrained"]
