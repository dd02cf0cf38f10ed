"""feather_mini: visual-token pruning for LLaVA-style models, small enough to read."""
from .model import (CheckpointError, Generation, KVCache, LlavaConfig, LlavaForConditionalGeneration, Prefill,
                    SHIPPED_WEIGHTS, TextConfig, VisionConfig, WEIGHTS_576, load_model, load_pretrained)
from .processing import Inputs, Processor
from .pruning import Schedule, Stage

__all__ = ["CheckpointError", "Generation", "Inputs", "KVCache", "LlavaConfig", "LlavaForConditionalGeneration",
           "Prefill", "Processor", "SHIPPED_WEIGHTS", "Schedule", "Stage", "TextConfig", "VisionConfig", "WEIGHTS_576",
           "load_model", "load_pretrained"]
