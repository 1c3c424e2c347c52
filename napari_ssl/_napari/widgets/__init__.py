"""Dock widgets: Pretrain, Annotate & Train, Export (see napari.yaml)."""
