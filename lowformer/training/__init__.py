"""Training LowFormer (and timm) models with the paper's recipe: `train(TrainConfig(...))`."""
from lowformer.training.checkpoint import (CHECKPOINT_FORMAT, export_state_dict, load_checkpoint_file,
                                           remove_stale_temporaries, save_checkpoint)
from lowformer.training.recipe import RECIPE_KEYS, Recipe, parse_recipe_value, recipe_for
from lowformer.training.trainer import TrainConfig, train

__all__ = ["CHECKPOINT_FORMAT", "export_state_dict", "load_checkpoint_file", "remove_stale_temporaries",
           "save_checkpoint", "RECIPE_KEYS", "Recipe", "parse_recipe_value", "recipe_for", "TrainConfig", "train"]
