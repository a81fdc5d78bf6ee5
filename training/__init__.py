"""Data plane: DreamBooth recipes, data loading, model card and upload. Knows nothing about queues or hardware."""
