"""Data plane: DreamBooth recipes, data loading, model card and upload. Knows nothing about queues or hardware.

Run a task with ``python -m training --task TASK.json --workdir DIR`` (see ``training.cli``); add a recipe with
``training.recipes.register_recipe``.
"""
