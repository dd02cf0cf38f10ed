"""feather_mini: visual-token pruning for LLaVA-style models, small enough to read."""
from .checkpoint import CheckpointError, SHIPPED_WEIGHTS, WEIGHTS_576, load_model, load_pretrained
from .model import Generation, KVCache, LlavaConfig, LlavaForConditionalGeneration, Prefill, TextConfig, VisionConfig
from .processing import Inputs, Processor
from .pruning import Schedule, Stage, StageInputs, register_criterion

__all__ = ["CheckpointError", "Generation", "Inputs", "KVCache", "LlavaConfig", "LlavaForConditionalGeneration",
           "Prefill", "Processor", "SHIPPED_WEIGHTS", "Schedule", "Stage", "StageInputs", "TextConfig", "VisionConfig",
           "WEIGHTS_576", "load_model", "load_pretrained", "register_criterion"]
