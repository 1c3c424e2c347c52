"""napari-ssl: self-supervised pretraining and few-shot segmentation of CT/MR scans."""
__version__ = "0.1.0"
